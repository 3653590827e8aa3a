"""Find a model already on disk (``locate``), download one (``download``) and check that a model folder is complete.

``locate`` looks, in order, at an explicit path, ``$LLMKIT_MODEL_DIR``, ``./models``, the Hugging Face cache, the
ModelScope cache and ``$SCOW_AI_MODEL_PATH``, and records every place it looked. In each place it knows the layouts
tutorials and hub clients produce: ``Name``, ``Org/Name``, ``models--Org--Name/snapshots/<rev>`` (a Hugging Face cache,
also when moved), ``models/Org/Name`` and ``models/Org--Name/snapshots/<rev>`` (ModelScope), matching names without
regard to case and also in ModelScope's escaped form ('.' written as '___').

``verify_model_dir`` checks what ``from_pretrained`` needs without loading anything: config.json, tokenizer files,
every weight shard and each safetensors header. ``download`` goes through the hubs' own clients
(``huggingface_hub`` / ``modelscope``: their progress bars, mirrors through ``HF_ENDPOINT``, their resumes) and ends
with the same check. Tokens are never printed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import BadInput, LlmkitError

CONNECT_TIMEOUT_S = 5
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_ENDPOINT = "https://modelscope.cn"
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")
MODEL_ID = re.compile(r"(?:([\w.-]+)/)?([\w.-]+)")
TOKENIZER_FILES = "tokenizer.json (or tokenizer.model, vocab.json + merges.txt, *.tiktoken)"
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; the safetensors format caps its JSON header at 100 MB
SOURCE_ORDER = {"auto": ("hf", "modelscope"), "hf": ("hf",), "modelscope": ("modelscope",)}


class ModelNotFound(LookupError):
    """No copy of the model on this machine; the message lists the places searched and how to download it.

    >>> error = ModelNotFound("Org/Name", ["./models: /work/models"])
    >>> error.commands[0], isinstance(error, LookupError)
    ('llmkit download Org/Name', True)
    """

    def __init__(self, model: str, searched: list[str]):
        self.model, self.searched = model, searched
        self.commands = _download_commands(model)
        places = "".join(f"\n  - {place}" for place in searched)
        how = "\nDownload it with one of: " + " | ".join(self.commands) if self.commands else ""
        super().__init__(f"model {model!r} is not on this machine. Searched:{places}{how}")


class DownloadFailed(LlmkitError, RuntimeError):
    """A download did not give a complete model; ``attempts`` says what happened with each source.

    >>> DownloadFailed("could not download", [{"source": "hf", "ok": False}]).attempts[0]["source"]
    'hf'
    """

    def __init__(self, message: str, attempts: list[dict]):
        super().__init__(message)
        self.attempts = attempts


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


def locate(model_id_or_path: str | os.PathLike) -> Located:
    """Find a model on disk and verify it; the first complete copy wins, else the first copy found.

    Raises ``ModelNotFound`` (a ``LookupError``) listing every place searched and the download commands.

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
    first_found = None
    for label, root in _search_places():
        searched.append(f"{label}: {root or 'not set'}")
        for path in _candidates(root, org, name) if root else []:
            found = Located(path, label, verify_model_dir(path), searched)
            if found.report["ok"]:
                return found
            first_found = first_found or found
    if first_found:
        return first_found
    raise ModelNotFound(text, searched)


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
    if folder is None or not folder.is_dir():
        return None
    wanted = {name.lower() for name in names}
    return next((path for path in sorted(folder.iterdir()) if path.name.lower() in wanted and path.is_dir()), None)


def _hf_snapshot(repo_folder: Path | None) -> Path | None:
    """The snapshot that refs/main points to (huggingface_hub's own cache lookup), else the newest complete one."""
    if repo_folder is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id = repo_folder.name.split("--", 1)[1].replace("--", "/")
    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=repo_folder.parent)
    return Path(config).parent if isinstance(config, str) else _newest_snapshot(repo_folder)


def _newest_snapshot(repo_folder: Path | None) -> Path | None:
    """The newest complete folder under repo_folder/snapshots, else the newest one."""
    snapshots = repo_folder / "snapshots" if repo_folder else None
    if snapshots is None or not snapshots.is_dir():
        return None
    newest = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((path for path in newest if verify_model_dir(path)["ok"]), newest[0] if newest else None)


def verify_model_dir(path: str | os.PathLike) -> dict:
    """Check a model folder without loading it: config.json, tokenizer, every weight shard, safetensors headers.

    Returns ``{"ok": bool, "problems": [...], "notes": [...]}``; each problem starts with the file it is about.
    ``.bin`` (pickle) weights are listed in the notes, never loaded.

    >>> verify_model_dir("/no/such/folder")["problems"]
    ['/no/such/folder: not a folder']
    """
    folder = Path(path)
    if not folder.is_dir():
        return {"ok": False, "problems": [f"{folder}: not a folder"], "notes": []}
    config, config_problem = _read_json(folder / "config.json")
    if config_problem is None and not isinstance(config, dict):
        config_problem = "config.json: not a JSON object"
    problems = [problem for problem in (config_problem, _tokenizer_problem(folder)) if problem]
    weight_problems, notes = _check_weights(folder)
    problems += weight_problems
    named = {problem.split(":")[0] for problem in problems}
    problems += [problem for problem in _missing_from_hub_listing(folder) if problem.split(":")[0] not in named]
    return {"ok": not problems, "problems": problems, "notes": notes}


def _read_json(file: Path) -> tuple[object, str | None]:
    """(parsed content, None) or (None, a problem naming the file)."""
    if not file.is_file():
        return None, f"{file.name}: missing"
    try:
        return json.loads(file.read_text(encoding="utf-8")), None
    except ValueError as error:
        return None, f"{file.name}: not valid JSON ({error})"


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
    problems = []
    indexes = [folder / name for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json")]
    for index_file in (file for file in indexes if file.exists()):
        index, problem = _read_json(index_file)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if problem or not isinstance(weight_map, dict):
            problems.append(problem or f"{index_file.name}: no weight_map")
            continue
        problems += [f"{shard}: missing (listed in {index_file.name})"
                     for shard in sorted(set(weight_map.values())) if not (folder / shard).is_file()]
    safetensors = sorted(folder.glob("*.safetensors"))
    problems += [problem for problem in map(_safetensors_problem, safetensors) if problem]
    pickles = sorted(folder.glob("*.bin"))
    notes = [f"{', '.join(p.name for p in pickles)}: pickle weights, present but not loaded or checked"] if pickles else []
    if not (safetensors or pickles or any(file.exists() for file in indexes)):
        problems.append("model.safetensors: missing (no *.safetensors, no weight index, no *.bin)")
    return problems, notes


def _safetensors_problem(file: Path) -> str | None:
    """None when the header (8-byte little-endian length + JSON) reads and the size matches its last data offset."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or length > min(size - 8, MAX_SAFETENSORS_HEADER):
            return f"{file.name}: truncated or corrupted ({size} bytes, header length {length})"
        try:
            header = json.loads(handle.read(length))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, AttributeError, KeyError, IndexError, TypeError) as error:
            return f"{file.name}: unreadable header ({type(error).__name__}: {error})"
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"{file.name}: {size} bytes but its header describes {expected} (truncated or corrupted)"
    return None


def _missing_from_hub_listing(folder: Path) -> list[str]:
    """Files the Hub listed for this revision but absent here, when folder is a Hugging Face cache snapshot."""
    repo_folder = folder.parent.parent
    if folder.parent.name != "snapshots" or not repo_folder.name.startswith("models--"):
        return []
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    repo_id = repo_folder.name.removeprefix("models--").replace("--", "/")
    try:
        listing = get_cached_repo_tree(repo_id, revision=folder.name, cache_dir=repo_folder.parent)
    except CachedRepoTreeNotFoundError:  # no listing was saved (older huggingface_hub): nothing to compare with
        return []
    return [f"{entry.path}: missing (the Hub lists it for revision {folder.name[:12]})"
            for entry in listing if not (folder / entry.path).is_file()]


def download(model_id: str, source: str = "auto", local_dir: str | os.PathLike | None = None,
             revision: str | None = None) -> Path:
    """Download a model and verify it; returns its folder. Raises ``DownloadFailed`` when it is not complete.

    See ``download_report`` for the sources, the destination and the timeouts.

    >>> download("Qwen/Qwen2-0.5B-Instruct")  # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/models--Qwen--Qwen2-0.5B-Instruct/snapshots/...')
    """
    result = download_report(model_id, source=source, local_dir=local_dir, revision=revision)
    if not result["report"]["ok"]:
        problems = "; ".join(result["report"]["problems"])
        raise DownloadFailed(f"{model_id} was downloaded to {result['path']} but is incomplete: {problems}",
                             result["attempts"])
    return Path(result["path"])


def download_report(model_id: str, source: str = "auto", local_dir: str | os.PathLike | None = None,
                    revision: str | None = None) -> dict:
    """Download with the hub clients and verify; returns model, source, path, attempts and the verification report.

    ``source="auto"`` tries Hugging Face (``HF_ENDPOINT`` honoured, e.g. a mirror), then ModelScope
    (``MODELSCOPE_ENDPOINT``); every attempt is recorded with its error. Files go to ``local_dir``, else
    ``$LLMKIT_MODEL_DIR/Org/Name`` when that is set, else the hub's cache. An endpoint that does not answer within
    ``CONNECT_TIMEOUT_S`` fails the attempt at once. Raises ``DownloadFailed`` when every attempt failed.

    >>> download_report("Qwen/Qwen2-0.5B-Instruct")["attempts"]  # doctest: +SKIP
    [{'source': 'hf', 'ok': True, 'path': '...'}]
    """
    if source not in SOURCE_ORDER:
        raise BadInput(f"unknown source {source!r}; choose one of: {', '.join(SOURCE_ORDER)}")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model_id):
        raise BadInput(f"{model_id!r} is not a hub model id; use the form Org/Name, e.g. Qwen/Qwen2-7B-Instruct")
    if local_dir is None and os.environ.get("LLMKIT_MODEL_DIR"):
        local_dir = Path(os.environ["LLMKIT_MODEL_DIR"]).expanduser() / model_id
    attempts = []
    for name in SOURCE_ORDER[source]:
        try:
            path = Path(SOURCES[name](model_id, local_dir=local_dir, revision=revision))
        except Exception as error:  # each client raises its own types; any of them means: record it, try the next
            attempts.append({"source": name, "ok": False, "error": _summary(error)})
            continue
        attempts.append({"source": name, "ok": True, "path": str(path)})
        return {"model": model_id, "source": name, "path": str(path), "attempts": attempts,
                "report": verify_model_dir(path)}
    tried = "; ".join(f"{attempt['source']}: {attempt['error']}" for attempt in attempts)
    raise DownloadFailed(f"could not download {model_id!r} ({tried}). Check the network or proxy, or set HF_ENDPOINT "
                         "to a mirror such as https://hf-mirror.com.", attempts)


def _download_hf(model_id: str, local_dir: str | os.PathLike | None, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    endpoint = (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    _check_reachable(endpoint)
    return snapshot_download(model_id, revision=revision, cache_dir=hf_cache_dir(), local_dir=local_dir,
                             endpoint=endpoint, etag_timeout=CONNECT_TIMEOUT_S)


def _download_modelscope(model_id: str, local_dir: str | os.PathLike | None, revision: str | None) -> str:
    _check_reachable(os.environ.get("MODELSCOPE_ENDPOINT") or MODELSCOPE_DEFAULT_ENDPOINT)
    from modelscope import snapshot_download

    return snapshot_download(model_id, revision=revision, local_dir=str(local_dir) if local_dir else None)


SOURCES = {"hf": _download_hf, "modelscope": _download_modelscope}


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
    """One line: the error type and the start of its message, with any token value masked."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {' '.join(lines[:2])}"[:400]
    for variable in TOKEN_VARIABLES:
        if os.environ.get(variable):
            text = text.replace(os.environ[variable], "***")
    return text


def _download_commands(model: str) -> list[str]:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return []
    return [f"llmkit download {model}", f"hf download {model}", f"modelscope download --model {model}"]
