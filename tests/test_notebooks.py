"""Notebook conventions: committed without outputs, assert what they show, never interactive."""

import json
import re
from pathlib import Path

import nbformat
import pytest

from llmkit.deploy import llamacpp_kernel

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_environment.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_or_counts(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(code_cells(nb)) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_is_valid_nbformat_4_5(path):
    """Cell ids and code cells' outputs fields are required; nbformat warns today and will refuse without them."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    missing = [i for i, c in enumerate(cells) if "id" not in c or (c["cell_type"] == "code" and "outputs" not in c)]
    assert not missing, f"{path.name}: cells {missing} lack an id or outputs field; run nbformat's normalize() on it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_follows_course_conventions(path):
    nb = nbformat.read(path, as_version=4)
    assert re.match(r"\d\d_[a-z0-9_]+\.ipynb$", path.name)
    cells = code_cells(nb)
    if path.name.startswith("00_"):  # the machine check comes before any download: it loads no model
        assert not any("pick_model(" in c.source for c in cells), "00 must not pick (or download) a model"
    else:
        assert "llmkit.pick_model(" in cells[0].source, "first code cell picks the model"
    assert not any(re.search(r"\binput\(", c.source) for c in cells), "no interactive input() cells"
    assert sum("assert " in c.source for c in cells) >= len(cells) // 2, "important cells assert what they show"
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines() if line.startswith("## ")]
    assert headings and all(" / " in h for h in headings), "headings are bilingual: '## 中文 / English'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernel_is_the_one_setup_registers(path):
    """A learner who opens a notebook in JupyterLab gets the kernel setup.sh registers (the venv with llmkit)."""
    setup = (path.parent.parent / "setup.sh").read_text(encoding="utf-8")
    # the course's kernel; `bash setup.sh vllm` registers a second one, llmkit-vllm, for notebook 10's vLLM cells
    name, display = re.search(r'ipykernel install .*--name (llmkit) --display-name "([^"]+)"', setup).groups()
    if path.name == "09_llamacpp_gguf.ipynb":  # its own kernel loads llama.cpp before pyzmq (llmkit/deploy/llamacpp_kernel.py)
        assert "python -m llmkit.deploy.llamacpp_kernel install" in setup
        name, display = llamacpp_kernel.KERNEL_NAME, llamacpp_kernel.DISPLAY_NAME
    kernelspec = nbformat.read(path, as_version=4).metadata.kernelspec
    assert (kernelspec.name, kernelspec.display_name) == (name, display)


def test_a_kernel_that_dies_fails_its_cell_at_once_with_the_reason(tmp_path):
    """A crash in native code (the AMX segfault in llama.cpp) used to wait out the 900 s cell timeout."""
    import shutil
    import subprocess
    import sys
    import time

    shutil.copy(NOTEBOOKS[0].parent / "conftest.py", tmp_path / "conftest.py")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"),
                nbformat.v4.new_code_cell("print('never runs')")]
    nbformat.write(nb, tmp_path / "crash.ipynb")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "crash.ipynb"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and time.monotonic() - started < 120
    assert "the notebook's kernel died while running this cell (killed by SIGSEGV)" in done.stdout


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_ends_with_what_was_learned(path):
    last = nbformat.read(path, as_version=4).cells[-1]
    assert last.cell_type == "markdown" and "小结 / Summary" in last.source, f"{path.name} should end with its summary"


@pytest.mark.parametrize("path", NOTEBOOKS[:-1], ids=lambda p: p.name)
def test_each_notebook_ends_by_naming_the_next_one(path):
    following = NOTEBOOKS[NOTEBOOKS.index(path) + 1].name[:2]
    last_text = nbformat.read(path, as_version=4).cells[-1].source
    assert f"下一课 / Next：{following} " in last_text, f"{path.name} should point to notebook {following}"


def test_every_notebook_title_starts_with_its_number():
    for path in NOTEBOOKS:
        title = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0]
        assert title.startswith(f"# {path.name[:2]} "), (path.name, title)
