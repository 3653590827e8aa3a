"""A tiny Hugging Face Hub on 127.0.0.1 serving one model repo, for tests and for notebook 01's offline demo
of ``HF_ENDPOINT`` (the variable that points huggingface_hub at a mirror).

It answers the calls huggingface_hub 2.4's ``snapshot_download`` makes:

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: model info, whose ``sha`` is the commit and
  whose ``siblings`` list the files;
* ``GET /api/models/{repo}/tree/{commit}?recursive=True``: the file listing (one page, no ``Link`` header);
* ``HEAD`` and ``GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag`` (git blob sha1; for LFS files
  also ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``), ``Content-Length``, and ``Range: bytes=N-`` answered
  with 206 + ``Content-Range`` so interrupted downloads can resume.

Failures to test against, each switched on by a method:

* ``cut(file, times)``: the next ``times`` GETs of a file stop at the file's middle and drop the connection;
* ``throttle(file, bytes_per_s, burst)``: a file is sent at that rate after its first ``burst`` bytes;
* ``answer_status(code)``: every request is answered with that HTTP status (a mirror that is down: 500, 502, 403);
* ``stall(only)``: requests (whose path contains ``only``) are accepted and never answered (a mirror that hangs).

Use it as a context manager; it also shuts itself down after ``lifetime_s`` if a test forgets.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin")
SEND_CHUNK = 64 * 1024  # bytes written at a time (and between throttle pauses)


class FakeHub:
    """Serve ``files`` as the ``main`` branch (commit ``COMMIT``) of ``repo_id``; records every request.

    >>> with FakeHub("Org/Tiny", {"config.json": b"{}"}) as hub:
    ...     hub.url.startswith("http://127.0.0.1:")
    True
    """

    @classmethod
    def from_folder(cls, repo_id: str, folder, lifetime_s: float = 600) -> "FakeHub":
        """Serve every file of a local model folder (e.g. a stand-in) as ``repo_id``.

        >>> FakeHub.from_folder("Org/Tiny", Path(__file__).parents[1] / "data").files["qa_pairs.json"][:1]
        b'['
        """
        root = Path(folder)
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return cls(repo_id, files, lifetime_s)

    def __init__(self, repo_id: str, files: dict[str, bytes], lifetime_s: float = 120):
        self.repo_id, self.files, self.commit = repo_id, files, COMMIT
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._cuts: dict[str, int] = {}
        self._throttles: dict[str, tuple[float, int]] = {}
        self.status: int | None = None  # answer every request with this HTTP status (answer_status)
        self.closing = threading.Event()  # set on exit; a stalled request waits for it
        self.stalled: str | None = None  # requests whose path contains this are never answered (stall)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._timer = threading.Timer(lifetime_s, self._server.shutdown)
        self._timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def cut(self, filename: str, times: int = 1) -> None:
        """Cut the next ``times`` GET responses of ``filename`` at the file's middle (0 stops cutting)."""
        with self._lock:
            self._cuts[filename] = times

    def throttle(self, filename: str, bytes_per_s: float | None, burst: int = 0) -> None:
        """Send ``filename`` at ``bytes_per_s`` once its first ``burst`` bytes are out (None: full speed again).

        >>> with FakeHub("Org/Tiny", {"a.bin": b"x"}) as hub:
        ...     hub.throttle("a.bin", 1024, burst=512); hub.rate("a.bin", 0), hub.rate("a.bin", 512)
        (None, 1024)
        """
        with self._lock:
            if bytes_per_s is None:
                self._throttles.pop(filename, None)
            else:
                self._throttles[filename] = (bytes_per_s, burst)

    def rate(self, filename: str, offset: int) -> float | None:
        """The rate to send ``filename`` at from byte ``offset`` (None: full speed)."""
        with self._lock:
            bytes_per_s, burst = self._throttles.get(filename, (None, 0))
        return bytes_per_s if bytes_per_s and offset >= burst else None

    def answer_status(self, status: int | None) -> None:
        """Answer every request with HTTP ``status`` and a JSON error body (None: serve normally again).

        >>> import urllib.request, urllib.error
        >>> with FakeHub("Org/Tiny", {}) as hub:
        ...     hub.answer_status(502)
        ...     try: urllib.request.urlopen(hub.url + "/api/models/Org/Tiny")
        ...     except urllib.error.HTTPError as error: error.code
        502
        """
        self.status = status

    def stall(self, only: str = "") -> None:
        """Accept requests and never answer them (until the hub shuts down), like a mirror that hangs; with ``only``,
        just the requests whose path contains it (e.g. "/resolve/": the listing works, the files hang).

        >>> with FakeHub("Org/Tiny", {}) as hub:
        ...     hub.stall("/resolve/"); hub.stalled
        '/resolve/'
        """
        self.stalled = only

    def take_cut(self, filename: str) -> bool:
        """Whether this GET of ``filename`` is to be cut (counts it down)."""
        with self._lock:
            if self._cuts.get(filename, 0) <= 0:
                return False
            self._cuts[filename] -= 1
            return True

    def gets(self, filename: str) -> list[str | None]:
        """The Range header of every GET of ``filename`` so far (None: the whole file)."""
        suffix = f"/{filename}"
        return [rng for method, path, rng in self.requests if method == "GET" and "/resolve/" in path
                and path.endswith(suffix)]

    def tree(self) -> list[dict]:
        """The ``/tree`` listing: path, size, git oid, and ``lfs`` (sha256) for weight files."""
        entries = []
        for name, data in sorted(self.files.items()):
            entry = {"type": "file", "path": name, "size": len(data), "oid": _git_sha1(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return entries


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def do_GET(self) -> None:
        self._route(send_body=True)

    def log_message(self, *args) -> None:
        """Quiet: the hub records requests in ``hub.requests`` instead."""

    def _route(self, send_body: bool) -> None:
        hub: FakeHub = self.server.hub
        path = unquote(urlsplit(self.path).path)
        hub.requests.append((self.command, path, self.headers.get("Range")))
        if hub.stalled is not None and hub.stalled in path:
            hub.closing.wait()
            self.close_connection = True
            return None
        if hub.status:
            return self._json({"error": f"HTTP {hub.status}"}, hub.status)
        repo = re.escape(hub.repo_id)
        revisions = ("main", hub.commit)
        if match := re.fullmatch(rf"/api/models/{repo}(?:/revision/([^/]+))?", path):
            if (match[1] or "main") not in revisions:
                return self._error("RevisionNotFound")
            siblings = [{"rfilename": name} for name in sorted(hub.files)]
            return self._json({"id": hub.repo_id, "sha": hub.commit, "private": False, "siblings": siblings})
        if match := re.fullmatch(rf"/api/models/{repo}/tree/([^/]+)", path):
            return self._json(hub.tree()) if match[1] in revisions else self._error("RevisionNotFound")
        if match := re.fullmatch(rf"/{repo}/resolve/([^/]+)/(.+)", path):
            if match[1] not in revisions:
                return self._error("RevisionNotFound")
            if match[2] not in hub.files:
                return self._error("EntryNotFound")
            return self._file(hub, match[2], send_body)
        return self._error("RepoNotFound")

    def _file(self, hub: FakeHub, name: str, send_body: bool) -> None:
        data = hub.files[name]
        size = len(data)
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match[1]) if match and self.command == "GET" else 0
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", hub.commit)
        self.send_header("ETag", f'"{_git_sha1(data)}"')
        if name.endswith(LFS_SUFFIXES):
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if not send_body:
            return
        stop = max(start, size // 2) if hub.take_cut(name) else size
        try:
            self._send(hub, name, data, start, stop)
        except OSError:  # the client went away (killed, or it gave up): nothing more to send
            self.close_connection = True
            return
        if stop < size:  # promised size - start bytes, sent fewer: drop the connection like a failing network
            self.close_connection = True

    def _send(self, hub: FakeHub, name: str, data: bytes, start: int, stop: int) -> None:
        """Write data[start:stop] in chunks, pausing after each where ``throttle`` asks for a rate."""
        for offset in range(start, stop, SEND_CHUNK):
            chunk = data[offset:min(offset + SEND_CHUNK, stop)]
            self.wfile.write(chunk)
            self.wfile.flush()
            if rate := hub.rate(name, offset):
                time.sleep(len(chunk) / rate)

    def _json(self, payload, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: str) -> None:
        body = json.dumps({"error": code}).encode()
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
