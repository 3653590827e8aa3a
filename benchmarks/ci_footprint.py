"""Time and disk of a full run of the README's test command, from a `.ci/run` log and the folders it filled.

Run `.ci/run` on a fresh clone with an empty HOME, then:

    python benchmarks/ci_footprint.py --log ci.log --checkout /tmp/ci-check --home /tmp/ci-home \
        --out benchmarks/results/ci_footprint_2core.json

The README's sentences on disk and time of a full run are made from this file (`readme_sentences`), and a test
keeps them equal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

from llmkit.environment.env import llmkit_commit

GB = 1e9


def stage_seconds(log: str) -> dict[str, int]:
    """Seconds per stage of the test command, from `.ci/run`'s "::: stage took N s: STAGE" lines, plus "all".

    >>> stage_seconds("::: stage took 362 s: bash setup.sh llama-cpp\\n::: all stages took 1593 s\\n")
    {'bash setup.sh llama-cpp': 362, 'all': 1593}
    """
    stages = {m.group(2): int(m.group(1)) for m in re.finditer(r"^::: stage took (\d+) s: (.+)$", log, re.MULTILINE)}
    if total := re.search(r"^::: all stages took (\d+) s$", log, re.MULTILINE):
        stages["all"] = int(total.group(1))
    return stages


def peak_disk_gb(log: str) -> float | None:
    """The most disk the run used beyond what was in use at its start, from `.ci/run`'s "::: disk:" line (the larger
    of the checkout's and /tmp's file systems; one number when they are the same); None in an older log.

    >>> peak_disk_gb("::: disk: at most 9.8 GB more in use here, 11.2 GB in /tmp, than at the start\\n")
    11.2
    """
    found = re.search(r"^::: disk: at most ([\d.]+) GB more in use here, ([\d.]+) GB in /tmp", log, re.MULTILINE)
    return max(float(found.group(1)), float(found.group(2))) if found else None


def folder_gb(path: Path) -> float:
    """Disk used by ``path`` (``du``), in GB (10^9 bytes), one decimal."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return round(int(out.split()[0]) / GB, 1)


def readme_sentences(result: dict) -> tuple[str, str]:
    """The README's sentences on disk and time (English, Chinese), from a result of this script.

    >>> en, zh = readme_sentences({"disk_gb": {"checkout_with_venv": 2.3, "llmkit_home": 6.0, "llamafactory_venv": 5.9,
    ...                                        "peak_beyond_start": 11.2},
    ...                            "minutes": {"all": 26.6, "setup": 6.0, "tests": 11.3, "notebooks": 9.3}})
    >>> en
    'Disk used by a full run (a fresh clone, an empty HOME): the checkout with its `.venv` 2.3 GB, and `~/.cache/llmkit` 6.0 GB, of which 5.9 GB is the LLaMA-Factory venv that notebook 08 creates (`LLMKIT_HOME` moves it); at its fullest, with temporary test files, 11.2 GB more than at its start. Time on a 2-core machine: about 27 minutes (setup 6, tests 11, notebooks 9).'
    >>> zh
    '完整运行一次占用的磁盘（全新克隆、空的 HOME）：仓库和 `.venv` 2.3 GB，`~/.cache/llmkit` 6.0 GB，其中 5.9 GB 是第 08 课创建的 LLaMA-Factory 虚拟环境（`LLMKIT_HOME` 可以把它移到别处）；连同测试的临时文件，最满时比开始时多用 11.2 GB。在 2 核机器上约 27 分钟（安装 6、测试 11、笔记本 9）。'
    """
    disk, m = result["disk_gb"], {k: round(v) for k, v in result["minutes"].items()}
    peak = disk.get("peak_beyond_start")
    en = (f"Disk used by a full run (a fresh clone, an empty HOME): the checkout with its `.venv` {disk['checkout_with_venv']} GB, "
          f"and `~/.cache/llmkit` {disk['llmkit_home']} GB, of which {disk['llamafactory_venv']} GB is the LLaMA-Factory venv "
          f"that notebook 08 creates (`LLMKIT_HOME` moves it)"
          + (f"; at its fullest, with temporary test files, {peak} GB more than at its start" if peak else "")
          + f". Time on a 2-core machine: about {m['all']} minutes "
          f"(setup {m['setup']}, tests {m['tests']}, notebooks {m['notebooks']}).")
    zh = (f"完整运行一次占用的磁盘（全新克隆、空的 HOME）：仓库和 `.venv` {disk['checkout_with_venv']} GB，`~/.cache/llmkit` "
          f"{disk['llmkit_home']} GB，其中 {disk['llamafactory_venv']} GB 是第 08 课创建的 LLaMA-Factory 虚拟环境（`LLMKIT_HOME` "
          f"可以把它移到别处）"
          + (f"；连同测试的临时文件，最满时比开始时多用 {peak} GB" if peak else "")
          + f"。在 2 核机器上约 {m['all']} 分钟（安装 {m['setup']}、测试 {m['tests']}、笔记本 {m['notebooks']}）。")
    return en, zh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True, help="the output of .ci/run")
    parser.add_argument("--checkout", type=Path, required=True, help="the clone .ci/run ran in")
    parser.add_argument("--home", type=Path, required=True, help="the HOME it ran with")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    log = args.log.read_text()
    stages = stage_seconds(log)
    by_kind = {"setup": next(s for k, s in stages.items() if k.startswith("bash setup.sh")),
               "tests": next(s for k, s in stages.items() if k.endswith("pytest tests")),
               "notebooks": next(s for k, s in stages.items() if "--nbval" in k), "all": stages["all"]}
    home = args.home / ".cache" / "llmkit"
    result = {"what": "the README's test command run by .ci/run on a fresh clone with an empty HOME",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": None},
              "date": datetime.date.today().isoformat(), "commit": llmkit_commit(args.checkout), "stage_seconds": stages,
              "minutes": {k: round(v / 60, 1) for k, v in by_kind.items()},
              "disk_gb": {"checkout_with_venv": folder_gb(args.checkout), "llmkit_home": folder_gb(home),
                          "llamafactory_venv": folder_gb(home / "venv-llamafactory")}}
    if (peak := peak_disk_gb(log)) is not None:  # .ci/run's sample of the file systems during the run
        result["disk_gb"]["peak_beyond_start"] = peak
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(*readme_sentences(result), sep="\n")


if __name__ == "__main__":
    main()
