"""llmkit's layer rules (written in ``llmkit/__init__.py``'s docstring), checked on every import in the package.

Each module belongs to a unit, each unit to a layer. A module may import its own unit and any lower layer, never a
higher layer or another unit of its own layer; no module uses another module's private (``_name``) names.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmkit"
LAYERS = [  # lowest first; numbered from 1 as in the package docstring
    {"base": ["errors", "safe_output", "import_fixes"]},
    {"core": ["card", "card_hook", "memory", "hub", "xverse", "loading", "chat", "quantization", "data", "pick",
              "standins"]},
    {"environment": ["environment"], "generation": ["generation"]},
    {"finetune": ["finetune"], "deploy": ["deploy"], "cluster": ["cluster"]},
    {"cli": ["cli"], "package": ["__init__"]},
]
UNIT_OF = {top: (layer, unit) for layer, units in enumerate(LAYERS, start=1) for unit, tops in units.items() for top in tops}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> tuple[int, str]:
    """(layer, unit) of a dotted llmkit module: decided by its first name below ``llmkit``."""
    parts = module.split(".")
    return UNIT_OF[parts[1] if len(parts) > 1 else "__init__"]


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def llmkit_imports(tree: ast.AST) -> list[tuple[int, str, str | None, str]]:
    """(line, imported llmkit module, name taken from it or None, local alias) for every import, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None, alias.asname or alias.name) for alias in node.names
                      if alias.name.split(".")[0] == "llmkit"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "llmkit":
            for alias in node.names:  # `from llmkit.x import y`, where y may itself be a module
                candidate = f"{node.module}.{alias.name}"
                found.append((node.lineno, candidate, None, alias.asname or alias.name) if is_module(candidate)
                             else (node.lineno, node.module, alias.name, alias.asname or alias.name))
    return found


def crossings(source: str, module: str) -> list[str]:
    """Imports of ``module``'s source that go up a layer or sideways into another unit of its layer."""
    own_layer, own_unit = unit(module)
    wrong = []
    for line, imported, _, _ in llmkit_imports(ast.parse(source)):
        layer, other = unit(imported)
        if layer > own_layer or (layer == own_layer and other != own_unit):
            wrong.append(f"line {line}: {own_unit} (layer {own_layer}) imports {imported} ({other}, layer {layer})")
    return wrong


def private_uses(source: str, module: str) -> list[str]:
    """Another module's private names that ``module``'s source imports or reaches through a module alias."""
    tree = ast.parse(source)
    imports = llmkit_imports(tree)
    private = [f"line {line}: {name} from {imported}" for line, imported, name, _ in imports
               if name and name.startswith("_") and not name.startswith("__") and imported != module]
    modules = {alias: imported for _, imported, name, alias in imports if name is None and imported != module}
    private += [f"line {node.lineno}: {node.value.id}.{node.attr}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")]
    return private


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_name_has_a_layer():
    tops = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in FILES}
    assert tops <= set(UNIT_OF), f"give these a layer in this test and the package docstring: {sorted(tops - set(UNIT_OF))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_or_stay_in_the_unit(path):
    assert not crossings(path.read_text(encoding="utf-8"), module_name(path))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_names_of_other_modules(path):
    assert not private_uses(path.read_text(encoding="utf-8"), module_name(path))


def test_the_rules_catch_a_crossing_and_a_private_name():
    """The checks can fail: a core module importing fine-tuning code, a sibling unit, and private names."""
    source = ("from llmkit.finetune.sft import tokenized_rows\n"
              "from llmkit.hub import _read_json\n"
              "def f():\n    from llmkit import memory\n    return memory._weight_parts\n")
    assert crossings(source, "llmkit.memory") == [
        "line 1: core (layer 2) imports llmkit.finetune.sft (finetune, layer 4)"]
    assert crossings("import llmkit.deploy.gguf\n", "llmkit.finetune.sft") == [
        "line 1: finetune (layer 4) imports llmkit.deploy.gguf (deploy, layer 4)"]
    assert crossings("from llmkit import errors\n", "llmkit.cli") == []
    assert private_uses(source, "llmkit.loading") == ["line 2: _read_json from llmkit.hub",
                                                       "line 5: memory._weight_parts"]
