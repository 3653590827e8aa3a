"""The peak GPU memory of a group of processes, as nvidia-smi counts it (CUDA context included), sampled in a thread.

A process belongs to the group when its environment has ``WATCH_ENV`` set to the group's tag; the processes it starts
inherit it, so start the group's first process with ``tagged(tag)``'s environment. ``llmkit bench`` measures
llama.cpp and vLLM this way (each runs in a process of its own, and vLLM starts an engine process as well, where the
benchmark's ``torch.cuda.max_memory_allocated`` sees nothing); ``benchmarks/realmode_gpu.py`` measures a notebook's
kernel with every server it starts.

>>> with PeakGpuMemory("demo", query=lambda: [f"{os.getpid()}, python, 2048"]) as gpu:
...     pass
>>> gpu.peak_gib  # this process is not tagged "demo": nothing counted
0.0
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

WATCH_ENV = "LLMKIT_GPU_WATCH"


def tagged(tag: str, env: dict | None = None) -> dict:
    """A copy of ``env`` (default: this process's environment) whose processes belong to group ``tag``.

    >>> tagged("bench-vllm", {"PATH": "/bin"})["LLMKIT_GPU_WATCH"]
    'bench-vllm'
    """
    return {**(os.environ if env is None else env), WATCH_ENV: tag}


def nvidia_smi_processes() -> list[str]:
    """nvidia-smi's compute processes as "pid, name, MiB" lines; [] where there is no nvidia-smi.

    >>> isinstance(nvidia_smi_processes(), list)
    True
    """
    if shutil.which("nvidia-smi") is None:
        return []
    return subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                           "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout.strip().splitlines()


class PeakGpuMemory:
    """Samples ``query()`` (nvidia-smi) every ``every_s`` while the ``with`` block runs and keeps the highest sum over
    the group's processes: ``peak_gib`` (None where there is no nvidia-smi to ask), and ``peak_processes``, the
    group's lines at the peak, each followed by ``describe(pid)`` when given."""

    def __init__(self, tag: str, every_s: float = 0.25, query=nvidia_smi_processes, describe=None):
        self.tag, self.every_s, self.query, self.describe = tag.encode(), every_s, query, describe
        self.available = query is not nvidia_smi_processes or shutil.which("nvidia-smi") is not None
        self.peak_mib, self.peak_processes = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            ours = [line for line in self.query() if environ_of(pid_of(line)).get(WATCH_ENV.encode()) == self.tag]
            used = sum(int(line.rsplit(",", 1)[1]) for line in ours)
            if used > self.peak_mib:
                self.peak_mib = used
                self.peak_processes = [f"{line} MiB" + (f"; {self.describe(pid_of(line))}" if self.describe else "")
                                       for line in ours]
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float | None:
        return round(self.peak_mib / 1024, 2) if self.available else None


def pid_of(smi_line: str) -> str:
    """The pid of one of ``nvidia_smi_processes``' lines.

    >>> pid_of("4242, python3, 15000")
    '4242'
    """
    return smi_line.split(",")[0].strip()


def environ_of(pid: str) -> dict:
    """A process's environment read from /proc, as bytes (empty when it cannot be read).

    >>> environ_of("no-such-pid")
    {}
    """
    try:
        return dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    except OSError:
        return {}
