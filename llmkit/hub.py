"""Find a model already on disk (``locate``), download one (``download``) and check that a model folder is complete.

``locate`` looks, in order, at an explicit path, ``$LLMKIT_MODEL_DIR``, ``./models``, the Hugging Face cache, the
ModelScope cache and ``$SCOW_AI_MODEL_PATH``, and records every place it looked. In each place it knows the layouts
tutorials and hub clients produce: ``Name``, ``Org/Name``, ``models--Org--Name/snapshots/<rev>`` (a Hugging Face cache,
also when moved), ``models/Org/Name`` and ``models/Org--Name/snapshots/<rev>`` (ModelScope), matching names without
regard to case and also in ModelScope's escaped form ('.' written as '___'). When the model is in none of them,
``ModelNotFound`` suggests the closest names that are on disk ("did you mean Qwen/Qwen2-7B-Instruct?").

``verify_model_dir`` checks what ``from_pretrained`` needs without loading anything: config.json, tokenizer files,
every weight shard and each safetensors header; damaged or arbitrary files give a problem naming the file, never an
exception. ``download`` goes through the hubs' own clients (``huggingface_hub`` / ``modelscope``: their progress bars,
mirrors through ``HF_ENDPOINT``, their resumes) and ends with the same check. Before any file is fetched it lists
the repository: file names that would land outside the target folder refuse the download, and pickle files
(``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.ckpt``: loading one can run code) are skipped unless
``allow_pickle=True``; a repository whose weights are pickle-only is refused with a message saying how to allow it.
A hub or mirror that answers an HTTP error or nothing within ``ANSWER_TIMEOUT_S`` fails the attempt with its address
and status; with ``HF_HUB_OFFLINE=1`` nothing is fetched from Hugging Face and a copy already on disk is returned.
huggingface_hub 2.4 resumes a dropped connection within one run, but a run that was killed (a Slurm time limit, an
OOM kill) starts its unfinished file again: it writes to a file unique to each process. The partial files such a
kill leaves behind are deleted before the next download of that model, so they do not fill the disk.
Tokens and passwords are never printed (``llmkit.errors.mask_secrets``).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import json
import os
import re
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from llmkit.errors import BadInput, LlmkitError, mask_secrets

CONNECT_TIMEOUT_S = 5  # a TCP connection to a hub, and huggingface_hub's per-file metadata request
ANSWER_TIMEOUT_S = 10  # the first API answer of a hub or mirror (huggingface_hub's own API calls wait forever)
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_ENDPOINT = "https://modelscope.cn"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # huggingface_hub honours both
TRUE_VALUES = {"1", "TRUE", "YES", "ON"}  # what huggingface_hub reads as set
MODEL_ID = re.compile(r"(?:([\w.-]+)/)?([\w.-]+)")
TOKENIZER_FILES = "tokenizer.json (or tokenizer.model, vocab.json + merges.txt, *.tiktoken)"
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; the safetensors format caps its JSON header at 100 MB
SOURCE_ORDER = {"auto": ("hf", "modelscope"), "hf": ("hf",), "modelscope": ("modelscope",)}
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")  # Python pickles: loading one can run any code
SKIPPED_WITHOUT_PICKLE = (*PICKLE_PATTERNS, "*.bin.index.json")  # with the index that only lists .bin shards
SUGGESTION_CUTOFF = 0.8  # difflib similarity a name on disk needs to be offered as "did you mean"
STALE_PARTIAL_S = 120  # a running download writes at least every 10 MiB, or gives up well within this


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


class DownloadFailed(LlmkitError, RuntimeError):
    """A download did not give a complete model; ``attempts`` says what happened with each source.

    Secrets in the message (a token in a URL, a mirror password) are masked.

    >>> DownloadFailed("could not download", [{"source": "hf", "ok": False}]).attempts[0]["source"]
    'hf'
    """

    def __init__(self, message: str, attempts: list[dict]):
        super().__init__(mask_secrets(message))
        self.attempts = attempts


class OfflineMode(ConnectionError):
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set and no copy is on disk; ``setting`` names it.

    >>> OfflineMode("HF_HUB_OFFLINE=1", "is set").setting
    'HF_HUB_OFFLINE=1'
    """

    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting} {message}")
        self.setting = setting


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
    llmkit.hub.ModelNotFound: model '/no/such/folder' is not on this machine. Searched:
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


def verify_model_dir(path: str | os.PathLike) -> dict:
    """Check a model folder without loading it: config.json, tokenizer, every weight shard, safetensors headers.

    Returns ``{"ok": bool, "problems": [...], "notes": [...]}``; each problem starts with the file it is about.
    ``.bin`` (pickle) weights are listed in the notes, never loaded. Damaged files never raise: they are problems.

    >>> verify_model_dir("/no/such/folder")["problems"]
    ['/no/such/folder: not a folder']
    """
    folder = Path(path)
    if not folder.is_dir():
        return {"ok": False, "problems": [f"{folder}: not a folder"], "notes": []}
    problems = [problem for problem in (_read_json(folder / "config.json")[1], _tokenizer_problem(folder)) if problem]
    weight_problems, notes = _check_weights(folder)
    problems += weight_problems
    named = {problem.split(":")[0] for problem in problems}
    problems += [problem for problem in _missing_from_hub_listing(folder) if problem.split(":")[0] not in named]
    return {"ok": not problems, "problems": problems, "notes": notes}


def _read_json(file: Path) -> tuple[dict | None, str | None]:
    """(the JSON object in file, None) or (None, a problem naming the file).

    >>> _read_json(Path("/no/such/config.json"))
    (None, 'config.json: missing')
    """
    if not file.is_file():
        return None, f"{file.name}: missing"
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        return None, f"{file.name}: cannot be read ({error.strerror or error})"
    except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, or nested too deep for the parser
        return None, f"{file.name}: not valid JSON ({type(error).__name__}: {str(error)[:200]})"
    return (content, None) if isinstance(content, dict) else (None, f"{file.name}: not a JSON object")


def _tokenizer_problem(folder: Path) -> str | None:
    if (folder / "tokenizer.json").is_file():
        return _read_json(folder / "tokenizer.json")[1]
    if (folder / "tokenizer.model").is_file() or any(folder.glob("*.tiktoken")):
        return None
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return None
    return f"{TOKENIZER_FILES}: missing"


def _check_weights(folder: Path) -> tuple[list[str], list[str]]:
    """(problems, notes) about the weights: index shards present, safetensors headers and sizes consistent."""
    indexes = [folder / name for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json")]
    problems = [problem for index in indexes if index.exists() for problem in _index_problems(folder, index)]
    safetensors = sorted(folder.glob("*.safetensors"))
    problems += [problem for problem in map(safetensors_problem, safetensors) if problem]
    problems += [problem for problem in _shard_series_problems(folder) if problem.split(":")[0] not in
                 {named.split(":")[0] for named in problems}]
    pickles = sorted(folder.glob("*.bin"))
    notes = [f"{', '.join(p.name for p in pickles)}: pickle weights, present but not loaded or checked"] if pickles else []
    if not (safetensors or pickles or any(file.exists() for file in indexes)):
        problems.append("model.safetensors: missing (no *.safetensors, no weight index, no *.bin)")
    return problems, notes


SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<number>\d{5})-of-(?P<count>\d{5})\.(?P<ext>safetensors|bin)$")


def _shard_series_problems(folder: Path) -> list[str]:
    """Shards that the shards' own names say exist (``model-00002-of-00004``) but are not here, and a missing index.

    This catches a download cut before its weight index arrived, when no index can name the missing shards.

    >>> _shard_series_problems(Path("/no/such/folder"))
    []
    """
    series = {(m["stem"], int(m["count"]), m["ext"]) for m in map(SHARD_NAME.match, os.listdir(folder)
                                                                    if folder.is_dir() else []) if m}
    problems = []
    for stem, count, ext in sorted(series):
        names = [f"{stem}-{number:05d}-of-{count:05d}.{ext}" for number in range(1, count + 1)]
        problems += [f"{name}: missing (one of {count} shards)" for name in names if not (folder / name).is_file()]
        index = f"{stem}.{ext}.index.json"
        if stem in ("model", "pytorch_model") and not (folder / index).exists():
            problems.append(f"{index}: missing (the weights are in {count} shards)")
    return problems


def _index_problems(folder: Path, index_file: Path) -> list[str]:
    """Problems of a weight index: unreadable, no weight_map, shard names that are not files here, missing shards."""
    index, problem = _read_json(index_file)
    weight_map = index.get("weight_map") if index else None
    if problem or not isinstance(weight_map, dict):
        return [problem or f"{index_file.name}: no weight_map"]
    shards = list(weight_map.values())
    if not all(isinstance(shard, str) and shard and not unsafe_file_names([shard]) for shard in shards):
        return [f"{index_file.name}: weight_map values must be file names inside the model folder"]
    return [f"{shard}: missing (listed in {index_file.name})" for shard in sorted(set(shards))
            if not (folder / shard).is_file()]


def safetensors_problem(file: Path) -> str | None:
    """None when the header (8-byte little-endian length + JSON) reads and the size matches its last data offset;
    else the problem, naming the file (a download or a save that was cut short).

    >>> safetensors_problem(Path("/dev/null"))
    'null: truncated or corrupted (0 bytes, header length 0)'
    """
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > min(size - 8, MAX_SAFETENSORS_HEADER):
                return f"{file.name}: truncated or corrupted ({size} bytes, header length {length})"
            header = handle.read(length)
    except OSError as error:  # e.g. a cache snapshot's link to a blob that was deleted
        return f"{file.name}: cannot be read ({error.strerror or error})"
    try:
        entries = json.loads(header)
        expected = 8 + length + max((entry["data_offsets"][1] for key, entry in entries.items()
                                     if key != "__metadata__"), default=0)
    except (ValueError, AttributeError, KeyError, IndexError, TypeError, RecursionError) as error:
        return f"{file.name}: unreadable header ({type(error).__name__}: {str(error)[:200]})"
    if size != expected:
        return f"{file.name}: {size} bytes but its header describes {expected} (truncated or corrupted)"
    return None


def _missing_from_hub_listing(folder: Path) -> list[str]:
    """Files the Hub listed for this revision but absent here, when folder is a Hugging Face cache snapshot.

    Pickle files are left out: ``download`` skips them unless asked for.
    """
    repo_folder = folder.parent.parent
    if folder.parent.name != "snapshots" or not repo_folder.name.startswith("models--"):
        return []
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    repo_id = repo_folder.name.removeprefix("models--").replace("--", "/")
    try:
        listing = get_cached_repo_tree(repo_id, revision=folder.name, cache_dir=repo_folder.parent)
    except (CachedRepoTreeNotFoundError, ValueError):  # no listing saved (older huggingface_hub), or an odd name
        return []
    return [f"{entry.path}: missing (the Hub lists it for revision {folder.name[:12]})" for entry in listing
            if not _matches(entry.path, SKIPPED_WITHOUT_PICKLE) and not (folder / entry.path).is_file()]


def unsafe_file_names(names: list[str]) -> list[str]:
    """The names that would be written outside a folder they are joined to: absolute, drive or '..' paths.

    >>> unsafe_file_names(["config.json", "sub/model.safetensors", "../escape.txt", "/abs/path.txt", "sub/../../x",
    ...                    "C:evil", "a\\\\..\\\\..\\\\b"])
    ['../escape.txt', '/abs/path.txt', 'sub/../../x', 'C:evil', 'a\\\\..\\\\..\\\\b']
    """
    return [name for name in names
            if name.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", name) or PureWindowsPath(name).drive]


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether name matches one of the glob patterns (as the hub clients match them).

    >>> _matches("sub/pytorch_model.bin", PICKLE_PATTERNS), _matches("model.safetensors", PICKLE_PATTERNS)
    (True, False)
    """
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def download(model_id: str, source: str = "auto", local_dir: str | os.PathLike | None = None,
             revision: str | None = None, allow_pickle: bool = False) -> Path:
    """Download a model and verify it; returns its folder. Raises ``DownloadFailed`` when it is not complete.

    See ``download_report`` for the sources, the destination, pickle files and the timeouts.

    >>> download("Qwen/Qwen2-0.5B-Instruct")  # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/models--Qwen--Qwen2-0.5B-Instruct/snapshots/...')
    """
    result = download_report(model_id, source=source, local_dir=local_dir, revision=revision, allow_pickle=allow_pickle)
    if not result["report"]["ok"]:
        problems = "; ".join(result["report"]["problems"])
        raise DownloadFailed(f"{model_id} was downloaded to {result['path']} but is incomplete: {problems}. "
                             "Run the same download again to fetch what is missing.", result["attempts"])
    return Path(result["path"])


def download_report(model_id: str, source: str = "auto", local_dir: str | os.PathLike | None = None,
                    revision: str | None = None, allow_pickle: bool = False) -> dict:
    """Download with the hub clients and verify; returns model, source, path, attempts and the verification report.

    ``source="auto"`` tries Hugging Face (``HF_ENDPOINT`` honoured, e.g. a mirror), then ModelScope
    (``MODELSCOPE_ENDPOINT``); every attempt is recorded with its error. Files go to ``local_dir``, else
    ``$LLMKIT_MODEL_DIR/Org/Name`` when that is set, else the hub's cache. Pickle files are skipped unless
    ``allow_pickle``. A hub that cannot be reached, answers an HTTP error, or gives no answer within
    ``ANSWER_TIMEOUT_S`` fails the attempt; with ``HF_HUB_OFFLINE`` set Hugging Face is only asked for what is
    already on disk. Raises ``DownloadFailed`` when every attempt failed, and at once (no other source tried) when
    the repository itself is refused: unsafe file names, or pickle-only weights without ``allow_pickle``.

    >>> download_report("Qwen/Qwen2-0.5B-Instruct")["attempts"]  # doctest: +SKIP
    [{'source': 'hf', 'ok': True, 'path': '...'}]
    """
    if source not in SOURCE_ORDER:
        raise BadInput(f"unknown source {source!r}; choose one of: {', '.join(SOURCE_ORDER)}")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model_id):
        raise BadInput(f"{model_id!r} is not a hub model id; use the form Org/Name, e.g. Qwen/Qwen2-7B-Instruct")
    if local_dir is None and os.environ.get("LLMKIT_MODEL_DIR"):
        local_dir = Path(os.environ["LLMKIT_MODEL_DIR"]).expanduser() / model_id
    attempts, failures = [], []
    for name in SOURCE_ORDER[source]:
        try:
            path = Path(SOURCES[name](model_id, local_dir=local_dir, revision=revision, allow_pickle=allow_pickle))
        except DownloadFailed as error:  # the repository itself is refused: another source would serve the same
            error.attempts = [*attempts, {"source": name, "ok": False, "error": str(error)}]
            raise
        except Exception as error:  # each client raises its own types; any of them means: record it, try the next
            attempts.append({"source": name, "ok": False, "error": _summary(error)})
            failures.append(error)
            continue
        attempts.append({"source": name, "ok": True, "path": str(path)})
        return {"model": model_id, "source": name, "path": str(path), "attempts": attempts,
                "report": verify_model_dir(path)}
    tried = "; ".join(f"{attempt['source']}: {attempt['error']}" for attempt in attempts)
    raise DownloadFailed(f"could not download {model_id!r} ({tried}). {_advice(model_id, failures, attempts)}",
                         attempts)


def _advice(model_id: str, failures: list[Exception], attempts: list[dict]) -> str:
    """What to do when every source failed: offline settings first, then mirrors and the other hub.

    >>> _advice("Org/Name", [], [{"source": "modelscope"}])
    'Check the network or proxy and MODELSCOPE_ENDPOINT, or download from Hugging Face with --source hf.'
    """
    offline = next((failure.setting for failure in failures if isinstance(failure, OfflineMode)), None)
    if offline:
        variable = offline.split("=")[0]
        return (f"Unset {variable} if this machine has internet; otherwise download on a machine that has (e.g. "
                f"SCOW's login node: llmkit download {model_id}), then copy the folder here or set LLMKIT_MODEL_DIR "
                "to the folder that holds it.")
    tried = {attempt["source"] for attempt in attempts}
    if "hf" not in tried:
        return "Check the network or proxy and MODELSCOPE_ENDPOINT, or download from Hugging Face with --source hf."
    if os.environ.get("HF_ENDPOINT"):
        mirror = "Try another mirror in HF_ENDPOINT, or unset HF_ENDPOINT to use https://huggingface.co"
    else:
        mirror = "Check the network or proxy, or set HF_ENDPOINT to a mirror such as https://hf-mirror.com"
    return mirror + ("." if "modelscope" in tried else ", or download from ModelScope with --source modelscope.")


def _download_hf(model_id: str, local_dir: str | os.PathLike | None, revision: str | None,
                 allow_pickle: bool = False) -> str:
    """Download with huggingface_hub after listing the repository and checking its file names; the listing and
    a first file's metadata must each come within ANSWER_TIMEOUT_S (huggingface_hub would wait minutes)."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, snapshot_download

    options = {"revision": revision, "cache_dir": hf_cache_dir(), "local_dir": local_dir,
               "ignore_patterns": None if allow_pickle else list(SKIPPED_WITHOUT_PICKLE)}
    if offline := _offline_setting(os.environ):
        try:
            return snapshot_download(model_id, local_files_only=True, **options)
        except Exception as error:  # huggingface_hub's "not on disk" errors vary; all of them mean: not here
            where = local_dir or "the Hugging Face cache"
            raise OfflineMode(offline, f"is set, so nothing is downloaded, and {model_id} is not complete in {where}"
                              ) from error
    endpoint = (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    partials = Path(local_dir) / ".cache" / "huggingface" / "download" if local_dir else None
    _remove_stale_partials(partials or hf_cache_dir() / f"models--{model_id.replace('/', '--')}" / "blobs")
    with _hub_errors_explained(model_id, endpoint):
        info = HfApi(endpoint=endpoint).model_info(model_id, revision=revision, timeout=ANSWER_TIMEOUT_S)
        names = [sibling.rfilename for sibling in info.siblings or []]
        _check_file_list(model_id, names, allow_pickle)
        if "config.json" in names:  # its file server answers too (a mirror's API can work while its files hang)
            url = hf_hub_url(model_id, "config.json", revision=info.sha, endpoint=endpoint)
            get_hf_file_metadata(url, timeout=ANSWER_TIMEOUT_S)
        return snapshot_download(model_id, endpoint=endpoint, etag_timeout=CONNECT_TIMEOUT_S, **options)


def _remove_stale_partials(folder: Path) -> list[Path]:
    """Delete the partial files (``*.incomplete``) under folder that nothing wrote to for ``STALE_PARTIAL_S``: left by
    a killed huggingface_hub download, which never resumes them. Returns the deleted files.

    >>> _remove_stale_partials(Path("/no/such/folder"))
    []
    """
    stale = [path for path in folder.rglob("*.incomplete") if _idle_s(path) > STALE_PARTIAL_S]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _idle_s(path: Path) -> float:
    """Seconds since path was last written; 0 when it is gone (a download that just finished moved it)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _download_modelscope(model_id: str, local_dir: str | os.PathLike | None, revision: str | None,
                         allow_pickle: bool = False) -> str:
    """Download with modelscope after listing the repository and checking its file names (modelscope does not)."""
    _check_reachable(os.environ.get("MODELSCOPE_ENDPOINT") or MODELSCOPE_DEFAULT_ENDPOINT)
    _check_file_list(model_id, _modelscope_files(model_id, revision), allow_pickle)
    from modelscope import snapshot_download

    return snapshot_download(model_id, revision=revision, local_dir=str(local_dir) if local_dir else None,
                             ignore_file_pattern=None if allow_pickle else list(SKIPPED_WITHOUT_PICKLE))


def _modelscope_files(model_id: str, revision: str | None) -> list[str]:
    """The file names of a ModelScope repository, from modelscope's own client."""
    from modelscope.hub.api import HubApi

    return [entry["Path"] for entry in HubApi().get_model_files(model_id, revision=revision, recursive=True)]


SOURCES = {"hf": _download_hf, "modelscope": _download_modelscope}


def _offline_setting(environ) -> str | None:
    """'HF_HUB_OFFLINE=1' (or the TRANSFORMERS_OFFLINE one) when a variable turns the Hugging Face Hub off, else None.

    >>> _offline_setting({"HF_HUB_OFFLINE": "true"}), _offline_setting({"HF_HUB_OFFLINE": "0"})
    ('HF_HUB_OFFLINE=true', None)
    """
    return next((f"{name}={environ[name]}" for name in OFFLINE_VARIABLES
                 if environ.get(name, "").strip().upper() in TRUE_VALUES), None)


def _check_file_list(model_id: str, names: list[str], allow_pickle: bool) -> None:
    """Refuse (DownloadFailed) a repository with unsafe file names, or with pickle-only weights unless allowed.

    >>> _check_file_list("Org/Name", ["config.json", "model.bin"], allow_pickle=False)
    Traceback (most recent call last):
    ...
    llmkit.hub.DownloadFailed: Org/Name has only pickle weights (model.bin); loading a pickle can run code, ...
    """
    if unsafe := unsafe_file_names(names):
        raise _unsafe_repo(model_id, unsafe)
    pickles = [name for name in names if _matches(name, PICKLE_PATTERNS)]
    if pickles and not allow_pickle and not any(name.endswith(".safetensors") for name in names):
        shown = ", ".join(pickles[:3]) + (f" and {len(pickles) - 3} more" if len(pickles) > 3 else "")
        raise DownloadFailed(f"{model_id} has only pickle weights ({shown}); loading a pickle can run code, so they "
                             "were not downloaded. If you trust this source, download again with --allow-pickle "
                             "(download(..., allow_pickle=True) in Python).", [])


def _unsafe_repo(model_id: str, names: list[str]) -> DownloadFailed:
    return DownloadFailed(f"refused to download {model_id}: its file list has names that would be written outside the "
                          f"download folder ({', '.join(map(repr, names))}); nothing was written outside it. Ask the "
                          "repository's owner to rename these files, or use another repository.", [])


@contextlib.contextmanager
def _hub_errors_explained(model_id: str, endpoint: str):
    """Turn huggingface_hub's timeouts, connection errors and HTTP errors (other than a missing repo, revision or
    file, which it explains itself) into a ConnectionError naming the endpoint and what it did, and its refusal of
    a file name (one the listing did not show) into llmkit's refusal."""
    import httpx2
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except ValueError as error:
        if bad := re.match(r"Invalid filename '(.*)': ", str(error)):
            raise _unsafe_repo(model_id, [bad[1]]) from error
        raise
    except httpx2.TimeoutException as error:
        raise ConnectionError(f"no answer from {endpoint} within {ANSWER_TIMEOUT_S} s") from error
    except httpx2.ConnectError as error:
        raise ConnectionError(f"cannot reach {endpoint} ({error})") from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        raise
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "error"
        token = " (a private or gated repository also needs HF_TOKEN with access to it)" if status in (401, 403) else ""
        raise ConnectionError(f"{endpoint} answered HTTP {status}{token}") from error


def _check_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ConnectionError at once when nothing answers at url's host and port (not checked behind a proxy)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    if (proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(parts.hostname or ""):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        reason = f"no answer within {timeout} s" if isinstance(error, TimeoutError) else error
        raise ConnectionError(f"cannot reach {url} ({reason})") from error


def _summary(error: BaseException) -> str:
    """One line: the error type and the start of its message, secrets masked before it is shortened.

    >>> _summary(RuntimeError("GET https://me:pw@mirror.example/x\\nsecond line\\nthird"))
    'RuntimeError: GET https://me:***@mirror.example/x second line'
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return mask_secrets(f"{type(error).__name__}: {' '.join(lines[:2])}")[:400]


def _download_commands(model: str) -> list[str]:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return []
    return [f"llmkit download {model}", f"hf download {model}", f"modelscope download --model {model}"]
