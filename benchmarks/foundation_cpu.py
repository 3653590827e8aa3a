"""Measure the foundation's CPU costs and write benchmarks/results/foundation_cpu.json.

- each stand-in built from scratch and then fetched from the cache; HOME points to a new empty folder, so
  every cache is cold (the GPTQ build includes gptqmodel's one-time CPU kernel compilation, as in CI);
- ``llmkit doctor --json`` wall time (a new process, as a learner runs it).

Run: .venv/bin/python benchmarks/foundation_cpu.py
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "foundation_cpu.json"


def timed(func):
    start = time.perf_counter()
    value = func()
    return value, round(time.perf_counter() - start, 2)


def main() -> None:
    os.environ["HOME"] = tempfile.mkdtemp(prefix="llmkit-bench-home-")  # cold llmkit, torch-extension caches
    os.environ.setdefault("TQDM_DISABLE", "1")
    from llmkit import standins

    builds = {}
    for kind in standins.STANDINS:
        _, cold = timed(lambda: standins.standin_path(kind))
        _, cached = timed(lambda: standins.standin_path(kind))
        builds[kind] = {"cold_build_s": cold, "cached_lookup_s": cached, "report": standins.build_info(kind)}

    doctor_runs = []
    for _ in range(3):
        result, seconds = timed(lambda: subprocess.run([sys.executable, "-m", "llmkit.cli", "doctor", "--json"],
                                                       capture_output=True, text=True))
        doctor_runs.append(seconds)
    report = json.loads(result.stdout)
    RESULTS.write_text(json.dumps({
        "date": datetime.date.today().isoformat(),
        "machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {p: version(p) for p in ("torch", "transformers", "optimum", "gptqmodel")},
        "standins": builds,
        "doctor": {"wall_s_runs": doctor_runs, "exit_code": result.returncode, "rows": len(report["rows"])},
    }, indent=2, ensure_ascii=False))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
