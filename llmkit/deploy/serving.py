"""Run an OpenAI-compatible server (``transformers serve``, ``vllm serve``, ...) for the length of a ``with`` block.

The server is the project's own command line, started as a subprocess in its own process group with its output in
a log file. ``serve`` waits until the server answers HTTP, and always stops the whole group on the way out (also when
the block raises). When the server dies or never gets ready, ``ServerFailed`` says so with the last lines of its log.
POSIX only (Linux and macOS: SCOW nodes, rented GPU machines, CI).

>>> from llmkit.deploy import serving
>>> port = serving.free_port()
>>> command = [serving.cli_path("transformers"), "serve", "/models/Qwen2-7B-Instruct",
...            "--host", "127.0.0.1", "--port", str(port)]  # doctest: +SKIP
>>> with serving.serve(command, ready_path="/health") as server:  # doctest: +SKIP
...     client = openai.OpenAI(base_url=server.base_url, api_key="not-needed")
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import BadInput, LlmkitError, mask_secrets

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOG_TAIL_LINES = 30
# a Python exception's last line, possibly after a worker's prefix: "(EngineCore pid=7) RuntimeError: ..."
ERROR_LINE = re.compile(r"\b[A-Z]\w*(?:Error|Exception): ")


class ServerFailed(LlmkitError, RuntimeError):
    """The server exited before it was ready, or did not get ready in time; the message ends with its log tail.

    >>> issubclass(ServerFailed, RuntimeError)
    True
    """


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it).

    >>> 1024 <= free_port() <= 65535
    True
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def cli_path(name: str) -> str:
    """The console script ``name`` (``transformers``, ``vllm``) of this Python environment, else the one on PATH.

    A notebook kernel started from a virtual environment often lacks the environment's ``bin`` folder on PATH;
    the script next to ``sys.executable`` is the one that belongs to the packages this kernel imports.

    >>> Path(cli_path("transformers")).name
    'transformers'
    """
    beside = Path(sys.executable).with_name(name)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BadInput(f"command {name!r} is neither next to {sys.executable} nor on PATH: install the package "
                       f"that provides it in this environment, or give its full path")
    return found


def server_address(command: list[str]) -> tuple[str, int]:
    """The ``--host`` and ``--port`` a server command line names (``--host X`` or ``--host=X``).

    Both are required: servers differ in their defaults (``vllm serve`` listens on all interfaces), and ``serve``
    must know where to look for the server.

    >>> server_address(["vllm", "serve", "m", "--host", "127.0.0.1", "--port=8001"])
    ('127.0.0.1', 8001)
    """
    found = {}
    for i, arg in enumerate(command):
        for flag in ("--host", "--port"):
            if arg == flag and i + 1 < len(command):
                found[flag] = command[i + 1]
            elif arg.startswith(flag + "="):
                found[flag] = arg.split("=", 1)[1]
    missing = [flag for flag in ("--host", "--port") if flag not in found]
    if missing:
        raise BadInput(f"the server command names no {' and no '.join(missing)}: add e.g. "
                       f"'--host 127.0.0.1 --port {free_port()}' (127.0.0.1: reachable from this machine only)")
    if not found["--port"].isdigit():
        raise BadInput(f"--port {found['--port']!r} is not a port number")
    return found["--host"], int(found["--port"])


@dataclass
class Server:
    """A running server started by ``serve``: where it answers and what it logged.

    >>> server.base_url  # doctest: +SKIP
    'http://127.0.0.1:8000/v1'
    """

    command: list[str]
    host: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        """The server's root URL.

        >>> server.url  # doctest: +SKIP
        'http://127.0.0.1:8000'
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the OpenAI client takes as ``base_url``: the root URL plus ``/v1``.

        >>> openai.OpenAI(base_url=server.base_url, api_key="not-needed")  # doctest: +SKIP
        """
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        """Whether the server process is still alive.

        >>> server.running  # doctest: +SKIP
        True
        """
        return self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the server wrote (stdout and stderr together), tokens and passwords masked.

        >>> print(server.log_tail(3))  # doctest: +SKIP
        INFO:     Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)
        """
        with open(self.log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            text = log.read().decode("utf-8", errors="replace")
        return mask_secrets("\n".join(text.splitlines()[-lines:]))

    def first_error(self) -> str | None:
        """The first line of the log that ends a Python traceback (``SomeError: ...``), secrets masked: the root
        cause where the last lines only say that a worker failed (vLLM: "See root cause above").

        >>> server.first_error()  # doctest: +SKIP
        '(EngineCore pid=7232) RuntimeError: No CTK flavor installed: ...'
        """
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            found = next((line.strip() for line in log if ERROR_LINE.search(line)), None)
        return mask_secrets(found) if found else None


def _warn_about_exposure(host: str) -> None:
    if host not in LOOPBACK_HOSTS:
        warnings.warn(f"--host {host}: the server will accept connections from other machines, without an API key "
                      "unless the server has one; use --host 127.0.0.1 unless that is what you want", stacklevel=4)
    proxies = urllib.request.getproxies()
    proxy = proxies.get("http") or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass_environment(host):
        warnings.warn(f"a proxy is set ({proxy}) and {host} is not in no_proxy: HTTP clients "
                      f"that honour it (the openai client, curl) will send requests for {host} to the proxy. Run "
                      f"os.environ['NO_PROXY'] = '{host},localhost' (or export NO_PROXY) first", stacklevel=4)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _http_status(url: str) -> str | int:
    """The HTTP status of GET ``url`` (never through a proxy), or why there was none."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, urllib.error.URLError) as error:
        return f"no answer ({getattr(error, 'reason', error)})"


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; then kill what is left of the group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:  # worker processes the server started (vLLM's engine core) may outlive it
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def serve(command: list[str], ready_path: str = "/v1/models", timeout_s: float = 300.0, env: dict | None = None,
          log_path: str | Path | None = None, grace_s: float = 15.0) -> Iterator[Server]:
    """Start ``command`` (a server that names ``--host`` and ``--port``), wait until GET ``ready_path`` answers
    HTTP 200, yield a ``Server``, and stop the server's whole process group when the block ends, however it ends.

    ``ready_path``: ``/v1/models`` is the OpenAI API's own listing (vLLM, llama.cpp's server); ``transformers serve``
    lists the Hugging Face cache there instead of the model it serves, so wait on its ``/health``. ``env`` is added
    to this process's environment. A server still running when Python exits is stopped then. The log goes to
    ``log_path`` (default: a temporary file, removed when the block ends without an error). A host other than
    127.0.0.1/localhost, or a proxy that would catch requests for the host, is warned about, not refused. Raises
    ``ServerFailed`` if the server exits first or is not ready within ``timeout_s``, ``BadInput`` if the command
    names no host or port, or the port is already taken.

    >>> command = [cli_path("transformers"), "serve", "/models/Qwen2-7B-Instruct", "--host", "127.0.0.1",
    ...            "--port", str(free_port()), "--device", "cpu"]  # doctest: +SKIP
    >>> with serve(command, ready_path="/health") as server:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="not-needed")
    ...     client.chat.completions.create(model=command[2], messages=[{"role": "user", "content": "你好"}])
    """
    command = [str(part) for part in command]
    host, port = server_address(command)
    _warn_about_exposure(host)
    if _port_in_use(host, port):
        raise BadInput(f"something already listens on {host}:{port}; pick a free port with llmkit.deploy.serving.free_port()")
    if shutil.which(command[0]) is None:
        raise BadInput(f"cannot start {command[0]!r}: not an executable file nor a command on PATH")
    own_log = log_path is None
    if own_log:
        handle, log_path = tempfile.mkstemp(prefix="llmkit-server-", suffix=".log")
        os.close(handle)
    log_path = Path(log_path)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
    server = Server(command, host, port, process, log_path)
    stop = functools.partial(_stop, process, grace_s)
    atexit.register(stop)  # a block left open (a notebook cell that failed) still ends when Python exits
    ok = False
    try:
        _wait_until_ready(server, ready_path, timeout_s)
        yield server
        ok = True
    finally:
        stop()
        atexit.unregister(stop)
        if ok and own_log:
            log_path.unlink(missing_ok=True)


def _wait_until_ready(server: Server, ready_path: str, timeout_s: float) -> None:
    shown = mask_secrets(shlex.join(server.command))
    deadline = time.monotonic() + timeout_s
    status: str | int = "not asked yet"
    while time.monotonic() < deadline:
        if not server.running:
            raise ServerFailed(
                f"the server exited with code {server.process.returncode} before {server.url}{ready_path} answered.\n"
                f"Command: {shown}\nFirst error in its log: {server.first_error()}\n"
                f"Last lines of its log ({server.log_path}):\n{server.log_tail()}")
        status = _http_status(server.url + ready_path)
        if status == 200:
            return
        time.sleep(0.25)
    raise ServerFailed(
        f"the server did not answer GET {server.url}{ready_path} with HTTP 200 within {timeout_s:.0f} s (last: "
        f"{status}); it was stopped. If it is still loading a large model, raise timeout_s; if it answers on "
        f"another path, set ready_path.\nCommand: {shown}\nLast lines of its log ({server.log_path}):\n"
        f"{server.log_tail()}")


def stop_token_ids(tokenizer, generation_config=None, tokens: Iterable[str] = ()) -> list[int]:
    """The token ids that end a reply, read from the model's own files: ``generation_config.eos_token_id`` (an id
    or a list), the tokenizer's ``eos_token_id``, and the ids of the named special ``tokens`` (e.g. "<|im_end|>").

    Ids copied from another model's tutorial belong to another vocabulary; these come from this model's.
    Raises ``BadInput`` when a named token is not a single token of this vocabulary.

    >>> stop_token_ids(tokenizer, GenerationConfig.from_pretrained(path), ["<|im_end|>"])  # doctest: +SKIP
    [151643, 151645]
    """
    ids = set()
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for token in tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise BadInput(f"{token!r} is not a token of this tokenizer's vocabulary; its special tokens are "
                           f"{tokenizer.all_special_tokens}")
        ids.add(token_id)
    return sorted(ids)


def vllm_missing() -> str | None:
    """Why vLLM cannot run here (not installed, or no CUDA GPU), or None when it can.

    >>> vllm_missing() is None or "vLLM" in vllm_missing()
    True
    """
    import torch

    reasons = []
    if importlib.util.find_spec("vllm") is None:
        reasons.append("the vllm package is not installed in this environment (on a Linux machine with an NVIDIA "
                       "GPU: `bash setup.sh vllm`, then the Jupyter kernel 'Python (llmkit + vLLM)'; notebook 10)")
    if not torch.cuda.is_available():
        reasons.append(f"torch {torch.__version__} sees no CUDA GPU")
    return f"vLLM cannot run here: {'; '.join(reasons)}" if reasons else None
