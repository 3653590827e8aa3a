"""Download a model through the hubs' own clients and check it: ``download`` / ``download_report``.

``download`` goes through ``huggingface_hub`` / ``modelscope`` (their progress bars, mirrors through ``HF_ENDPOINT``,
their resumes) and ends with ``verify_model_dir``. Before any file is fetched it lists the repository: file names that
would land outside the target folder refuse the download, and pickle files (``*.bin``, ``*.pt``, ``*.pth``,
``*.pkl``, ``*.ckpt``: loading one can run code) are skipped unless ``allow_pickle=True``; a repository whose weights
are pickle-only is refused with a message saying how to allow it. A hub or mirror that answers an HTTP error or
nothing within ``ANSWER_TIMEOUT_S`` fails the attempt with its address and status; with ``HF_HUB_OFFLINE=1`` nothing
is fetched from Hugging Face and a copy already on disk is returned. huggingface_hub 2.4 resumes a dropped connection
within one run, but a run that was killed (a Slurm time limit, an OOM kill) starts its unfinished file again: it
writes to a file unique to each process. The partial files such a kill leaves behind are deleted before the next
download of that model, so they do not fill the disk. Tokens and passwords are never printed
(``llmkit.errors.mask_secrets``).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path

from llmkit.errors import BadInput, LlmkitError, mask_secrets
from llmkit.hub.locating import hf_cache_dir
from llmkit.hub.verifying import (PICKLE_PATTERNS, SKIPPED_WITHOUT_PICKLE, matches_any, unsafe_file_names,
                                  verify_model_dir)

CONNECT_TIMEOUT_S = 5  # a TCP connection to a hub, and huggingface_hub's per-file metadata request
ANSWER_TIMEOUT_S = 10  # the first API answer of a hub or mirror (huggingface_hub's own API calls wait forever)
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_ENDPOINT = "https://modelscope.cn"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # huggingface_hub honours both
TRUE_VALUES = {"1", "TRUE", "YES", "ON"}  # what huggingface_hub reads as set
SOURCE_ORDER = {"auto": ("hf", "modelscope"), "hf": ("hf",), "modelscope": ("modelscope",)}
STALE_PARTIAL_S = 120  # a running download writes at least every 10 MiB, or gives up well within this


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
    llmkit.hub.downloading.DownloadFailed: Org/Name has only pickle weights (model.bin); loading a pickle can run code, ...
    """
    if unsafe := unsafe_file_names(names):
        raise _unsafe_repo(model_id, unsafe)
    pickles = [name for name in names if matches_any(name, PICKLE_PATTERNS)]
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
