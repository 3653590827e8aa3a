"""llmkit.generation.gpu_watch: the peak GPU memory of a tagged group of processes (nvidia-smi's lines faked here)."""

import os
import subprocess
import sys
import time

from llmkit.generation.gpu_watch import WATCH_ENV, PeakGpuMemory, tagged


def test_only_the_groups_processes_count_and_the_peak_is_kept():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=tagged("group-a"))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=tagged("group-b"))
    samples = iter([[f"{child.pid}, python, 1000", f"{other.pid}, python, 9000", "1, init, 5000"],
                    [f"{child.pid}, python, 3072", f"{other.pid}, python, 9000"],
                    [f"{child.pid}, python, 2000"]])
    last = [f"{child.pid}, python, 10"]
    try:
        time.sleep(0.2)  # the children's /proc/<pid>/environ is readable once they run
        with PeakGpuMemory("group-a", every_s=0.01, query=lambda: next(samples, last), describe=lambda pid: "seen") as gpu:
            time.sleep(0.3)
    finally:
        child.kill()
        other.kill()
    assert gpu.peak_gib == 3.0  # 3072 MiB: group-b's 9000 and init's 5000 are not the group's
    assert gpu.peak_processes == [f"{child.pid}, python, 3072 MiB; seen"]


def test_without_nvidia_smi_there_is_no_peak(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with PeakGpuMemory("anything", every_s=0.01) as gpu:
        time.sleep(0.05)
    assert gpu.peak_gib is None


def test_tagged_leaves_the_given_environment_alone():
    env = {"PATH": "/bin"}
    assert tagged("t", env) == {"PATH": "/bin", WATCH_ENV: "t"} and env == {"PATH": "/bin"}
    assert tagged("t")[WATCH_ENV] == "t" and WATCH_ENV not in os.environ
