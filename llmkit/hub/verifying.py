"""Check a model folder without loading it: what ``from_pretrained`` needs is there and undamaged.

``verify_model_dir`` checks config.json, tokenizer files, every weight shard (those an index lists, and those the
shards' own names ``model-00001-of-00004`` imply) and each safetensors header; damaged or arbitrary files give a
problem naming the file, never an exception. In a Hugging Face cache snapshot, files the Hub listed for that revision
but missing here are problems too. Pickle files (``*.bin``, ``*.pt``, ...: loading one can run code) are noted, never
loaded.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path, PureWindowsPath

TOKENIZER_FILES = "tokenizer.json (or tokenizer.model, vocab.json + merges.txt, *.tiktoken)"
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; the safetensors format caps its JSON header at 100 MB
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")  # Python pickles: loading one can run any code
SKIPPED_WITHOUT_PICKLE = (*PICKLE_PATTERNS, "*.bin.index.json")  # with the index that only lists .bin shards


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
    problems += _about_other_files(_missing_from_hub_listing(folder), problems)
    return {"ok": not problems, "problems": problems, "notes": notes}


def _about_other_files(more: list[str], problems: list[str]) -> list[str]:
    """The problems in ``more`` about files that ``problems`` does not name already (one line per file).

    >>> _about_other_files(["a.json: missing", "b.json: missing"], ["a.json: not valid JSON"])
    ['b.json: missing']
    """
    named = {problem.split(":")[0] for problem in problems}
    return [problem for problem in more if problem.split(":")[0] not in named]


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
    problems += _about_other_files(_shard_series_problems(folder), problems)
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
            if not matches_any(entry.path, SKIPPED_WITHOUT_PICKLE) and not (folder / entry.path).is_file()]


def unsafe_file_names(names: list[str]) -> list[str]:
    """The names that would be written outside a folder they are joined to: absolute, drive or '..' paths.

    >>> unsafe_file_names(["config.json", "sub/model.safetensors", "../escape.txt", "/abs/path.txt", "sub/../../x",
    ...                    "C:evil", "a\\\\..\\\\..\\\\b"])
    ['../escape.txt', '/abs/path.txt', 'sub/../../x', 'C:evil', 'a\\\\..\\\\..\\\\b']
    """
    return [name for name in names
            if name.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", name) or PureWindowsPath(name).drive]


def matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether name matches one of the glob patterns (as the hub clients match them).

    >>> matches_any("sub/pytorch_model.bin", PICKLE_PATTERNS), matches_any("model.safetensors", PICKLE_PATTERNS)
    (True, False)
    """
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)
