"""Find a model already on disk: ``locate`` searches the places tutorials and hub clients put models.

It looks, in order, at an explicit path, ``$LLMKIT_MODEL_DIR``, ``./models``, the Hugging Face cache, the
ModelScope cache and ``$SCOW_AI_MODEL_PATH``, and records every place it looked. In each place it knows the layouts
tutorials and hub clients produce: ``Name``, ``Org/Name``, ``models--Org--Name/snapshots/<rev>`` (a Hugging Face cache,
also when moved), ``models/Org/Name`` and ``models/Org--Name/snapshots/<rev>`` (ModelScope), matching names without
regard to case and also in ModelScope's escaped form ('.' written as '___'). Each copy found is checked with
``llmkit.hub.verifying.verify_model_dir``. When the model is in none of them, ``ModelNotFound`` suggests the closest
names that are on disk ("did you mean Qwen/Qwen2-7B-Instruct?") and the commands that download it.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.hub.verifying import verify_model_dir

MODEL_ID = re.compile(r"(?:([\w.-]+)/)?([\w.-]+)")
SUGGESTION_CUTOFF = 0.8  # difflib similarity a name on disk needs to be offered as "did you mean"


class ModelNotFound(LookupError):
    """No copy of the model on this machine; the message lists the places searched, close names found on disk
    (``suggestions``) and how to download it. ``hint`` is the advice as one short line.

    >>> error = ModelNotFound("Org/Nmae", ["./models: /work/models"], ["Org/Name"])
    >>> error.commands[0], error.suggestions, isinstance(error, LookupError)
    ('llmkit download Org/Nmae', ['Org/Name'], True)
    >>> error.hint
    'did you mean Org/Name? If not, download it with: llmkit download Org/Nmae'

    With ``typo_of`` (a course model the name is a typo of) the download command is for that model, not the typo:

    >>> ModelNotFound("Qwen/Qwen2-7B-Instuct", [], typo_of="Qwen/Qwen2-7B-Instruct").hint
    'did you mean Qwen/Qwen2-7B-Instruct? download it with: llmkit download Qwen/Qwen2-7B-Instruct'
    """

    def __init__(self, model: str, searched: list[str], suggestions: list[str] | None = None,
                 typo_of: str | None = None):
        self.model, self.searched, self.typo_of = model, searched, typo_of
        self.suggestions = list(dict.fromkeys([typo_of] if typo_of else []) | dict.fromkeys(suggestions or []))
        self.commands = _download_commands(typo_of or model)
        places = "".join(f"\n  - {place}" for place in searched)
        did = f"; did you mean {' or '.join(self.suggestions)}?" if self.suggestions else "."
        how = "\nDownload it with one of: " + " | ".join(self.commands) if self.commands else ""
        super().__init__(f"model {model!r} is not on this machine{did} Searched:{places}{how}")

    @property
    def hint(self) -> str:
        """What to do, in one line: the close names on disk, then the download command (or: check the path)."""
        how = f"download it with: {self.commands[0]}" if self.commands else "check the path"
        if not self.suggestions:
            return how
        return f"did you mean {' or '.join(self.suggestions)}? {how if self.typo_of else 'If not, ' + how}"


@dataclass
class Located:
    """A model folder found on disk: its path, where it was found, its verification report and the places searched."""

    path: Path
    where: str
    report: dict
    searched: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready form.

        >>> Located(Path("/m"), "path", {"ok": True, "problems": [], "notes": []}).as_dict()["where"]
        'path'
        """
        return {"path": str(self.path), "where": self.where, **self.report, "searched": self.searched}


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read now: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ~/.cache/huggingface/hub.

    >>> isinstance(hf_cache_dir(), Path)
    True
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(os.environ.get("HF_HOME") or Path(cache_home) / "huggingface").expanduser() / "hub"


def pin_hf_home() -> None:
    """Set ``HF_HOME`` to where the Hugging Face cache is now, if it is unset, so that nothing imported later moves it.

    gptqmodel 7.6 imports ``tokenicer``, whose import sets ``HF_HOME=/tmp/tokenicer_hf_home`` (and ``HF_HUB_CACHE``)
    when they are unset: after the first GPTQ model is loaded, every later lookup in that Python process (a second
    model in the same notebook) would search, or download into, /tmp. ``import llmkit`` calls this first.

    >>> pin_hf_home(); os.environ["HF_HOME"] == str(hf_cache_dir().parent) or "HF_HUB_CACHE" in os.environ
    True
    """
    if not os.environ.get("HF_HOME") and not os.environ.get("HF_HUB_CACHE"):
        os.environ["HF_HOME"] = str(hf_cache_dir().parent)


def locate(model_id_or_path: str | os.PathLike) -> Located:
    """Find a model on disk and verify it; the first complete copy wins, else the first copy found.

    Raises ``ModelNotFound`` (a ``LookupError``) listing every place searched, close names found there and the
    download commands.

    >>> locate("/no/such/folder")
    Traceback (most recent call last):
    ...
    llmkit.hub.locating.ModelNotFound: model '/no/such/folder' is not on this machine. Searched:
      - path /no/such/folder
    >>> locate("Qwen/Qwen2-7B-Instruct").path  # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/models--Qwen--Qwen2-7B-Instruct/snapshots/...')
    """
    text = str(model_id_or_path)
    given = Path(text).expanduser()
    searched = [f"path {given}"]
    if given.is_dir():
        return Located(given.resolve(), "path", verify_model_dir(given), searched)
    match = MODEL_ID.fullmatch(text)
    if not match:
        raise ModelNotFound(text, searched)
    org, name = match.groups()
    first_found, roots = None, []
    for label, root in _search_places():
        searched.append(f"{label}: {root or 'not set'}")
        roots += [root] if root else []
        for path in _candidates(root, org, name) if root else []:
            found = Located(path, label, verify_model_dir(path), searched)
            if found.report["ok"]:
                return found
            first_found = first_found or found
    if first_found:
        return first_found
    from llmkit.memory import shipped_models

    on_disk = _close_matches(text, set().union(*map(_ids_on_disk, roots)))
    # nothing close on disk: a typo of a course model gets that model's download command, not the typo's
    course = [] if on_disk or text in shipped_models() else _close_matches(text, set(shipped_models()))
    raise ModelNotFound(text, searched, on_disk, typo_of=course[0] if course else None)


def _search_places() -> list[tuple[str, Path | None]]:
    """(label, folder) for every place locate searches, in order; None where the variable is not set."""
    modelscope = Path(os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope").expanduser()
    return [
        ("$LLMKIT_MODEL_DIR", _env_path("LLMKIT_MODEL_DIR")),
        ("./models", Path("models").resolve()),
        ("Hugging Face cache", hf_cache_dir()),
        ("ModelScope cache", modelscope / "hub"),
        ("ModelScope cache", modelscope),
        ("$SCOW_AI_MODEL_PATH", _env_path("SCOW_AI_MODEL_PATH")),
    ]


def _env_path(variable: str) -> Path | None:
    return Path(os.environ[variable]).expanduser() if os.environ.get(variable) else None


def _candidates(root: Path, org: str | None, name: str) -> list[Path]:
    """Model folders for org/name under root, in the order of the layouts in the module docstring."""
    names = {name, name.replace(".", "___")}
    found = [_child(root, names)]
    if org:
        models = _child(root, {"models"})
        found += [
            _child(_child(root, {org}), names),
            _hf_snapshot(_child(root, {f"models--{org}--{n}" for n in names})),
            _child(_child(models, {org}), names),
            _newest_snapshot(_child(models, {f"{org}--{n}" for n in names})),
        ]
    return [path for path in found if path]


def _child(folder: Path | None, names: set[str]) -> Path | None:
    """The sub-folder of folder named one of names, ignoring case; None when there is none."""
    wanted = {name.lower() for name in names}
    return next((path for path in _subfolders(folder) if path.name.lower() in wanted), None)


def _subfolders(folder: Path | None) -> list[Path]:
    """The sub-folders of folder, sorted; none when it is missing or unreadable.

    >>> _subfolders(Path("/no/such/folder"))
    []
    """
    try:
        return sorted(path for path in folder.iterdir() if path.is_dir()) if folder else []
    except OSError:  # missing, not a folder, or no permission (a shared SCOW folder): nothing to look at
        return []


def _ids_on_disk(root: Path) -> set[str]:
    """Model ids in root's layouts: ``Name`` (a folder with config.json), ``Org/Name``, ``models--Org--Name`` and,
    under ``models/``, ModelScope's ``Org/Name`` and ``Org--Name``; '___' is read back as '.'.

    >>> _ids_on_disk(Path("/no/such/folder"))
    set()
    """
    ids = set()
    for folder in (root, root / "models"):
        for child in _subfolders(folder):
            if "--" in child.name:
                ids.add(child.name.removeprefix("models--").replace("--", "/", 1))
            elif (child / "config.json").is_file():
                ids.add(child.name)
            elif child != root / "models":  # that one is looked at as a place of its own
                ids.update(f"{child.name}/{grandchild.name}" for grandchild in _subfolders(child))
    return {model_id.replace("___", ".") for model_id in ids}


def _close_matches(model: str, ids: set[str]) -> list[str]:
    """The ids (at most 3) that look like a typo of model, ignoring case; an id without org also matches names.

    >>> _close_matches("Qwen/Qwen2-7B-Instuct", {"Qwen/Qwen2-7B-Instruct", "Org/Other"})
    ['Qwen/Qwen2-7B-Instruct']
    >>> _close_matches("Meta/Llama-3-8B", {"Qwen/Qwen2-7B-Instruct"})
    []
    """
    by_key: dict[str, str] = {}
    for model_id in sorted(ids):
        by_key.setdefault(model_id.lower(), model_id)
        if "/" not in model:
            by_key.setdefault(model_id.rsplit("/", 1)[-1].lower(), model_id)
    matches = difflib.get_close_matches(model.lower(), by_key, n=3, cutoff=SUGGESTION_CUTOFF)
    return list(dict.fromkeys(by_key[key] for key in matches))


def _hf_snapshot(repo_folder: Path | None) -> Path | None:
    """The snapshot that refs/main points to (huggingface_hub's own cache lookup), else the newest complete one."""
    if repo_folder is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id = repo_folder.name.split("--", 1)[1].replace("--", "/")
    try:
        config = try_to_load_from_cache(repo_id, "config.json", cache_dir=repo_folder.parent)
    except ValueError:  # a folder name huggingface_hub would not accept as a repo id (e.g. 'Org/.name')
        config = None
    return Path(config).parent if isinstance(config, str) else _newest_snapshot(repo_folder)


def _newest_snapshot(repo_folder: Path | None) -> Path | None:
    """The newest complete folder under repo_folder/snapshots, else the newest one."""
    snapshots = _subfolders(repo_folder / "snapshots") if repo_folder else []
    newest = sorted(snapshots, key=lambda p: p.stat().st_mtime, reverse=True)
    return next((path for path in newest if verify_model_dir(path)["ok"]), newest[0] if newest else None)


def _download_commands(model: str) -> list[str]:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return []
    return [f"llmkit download {model}", f"hf download {model}", f"modelscope download --model {model}"]
