"""Run the course's notebooks in real mode on a big GPU emulating a learner's card; one JSON per card size.

The real model ids resolve to full-shape random-weight checkpoints (``llmkit rehearse``, written first), and
``LLMKIT_CARD_GB`` makes the GPU behave as a 24 / 40 / 80 GB card (``llmkit.card``). Each notebook is executed
top to bottom with nbclient (the engine nbval drives): a cell fails exactly when nbval would fail it (it raised).
Recorded per notebook: cells passed / failed (with the error) / skipped by the notebook (cells that print a line
starting with ``[skipped]``, with that line), peak GPU memory of the run's processes (the kernel and what it
starts; nvidia-smi every 0.25 s, with the per-process lines at the peak; ``over_card`` when the peak is over the
emulated card, which makes the run invalid for that size), disk written, wall time, and the Python stacks of a
process that died (``fault_stacks``, from ``fault_log/sitecustomize.py``); the executed notebooks are kept (``--keep``) for reading.

    python benchmarks/realmode_gpu.py --cards 24 80 --notebooks 00 02 05 --out $OUT
    python benchmarks/realmode_gpu.py --merge /work/.device/3     # back here: into benchmarks/results and the README
    python benchmarks/realmode_gpu.py --readme                    # the README's tables again (a notebook added or renamed)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from llmkit.environment.env import llmkit_commit
from llmkit.generation.gpu_watch import WATCH_ENV, PeakGpuMemory, environ_of

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARK = "[skipped]"
FAULT_HOOK = Path(__file__).resolve().parent / "fault_log"


def describe_process(pid: str) -> str:
    """A GPU process's command line and whether the card emulation reaches it, read from /proc: ``LLMKIT_CARD_GB``
    in its environment (llmkit applies the cap in a notebook's kernel; other processes need the ``card_hook`` on
    their ``PYTHONPATH`` too); says so when it cannot be read."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError as error:
        return f"not readable ({error.strerror})"
    environ = environ_of(pid)
    how = ("OFF" if b"LLMKIT_CARD_GB" not in environ
           else "on (card_hook)" if b"card_hook" in environ.get(b"PYTHONPATH", b"") else "on if llmkit loads the model")
    return f"{b' '.join(command[:4]).decode(errors='replace')[:160]}; card emulation {how}"


def cell_report(nb) -> dict:
    """Passed / failed / skipped-by-the-notebook code cells of an executed notebook, with messages."""
    passed, failures, skips = 0, [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        skipped = [line for line in text.splitlines() if line.startswith(SKIP_MARK)]
        if errors:
            failures.append({"cell": index, "error": f"{errors[0].ename}: {errors[0].evalue}"[:600]})
        elif skipped:
            skips.append({"cell": index, "message": skipped[0][:300]})
        elif cell.get("execution_count") is not None:
            passed += 1
    return {"passed": passed, "failed": len(failures), "skipped_by_notebook": len(skips),
            "failures": failures, "skips": skips}


def run_notebook(path: Path, card: int, keep: Path, timeout_s: int, notebook_timeout_s: int,
                 kernel: str | None = None) -> dict:
    env_before = dict(os.environ)
    tag = f"{path.stem}_{card}gb_{os.getpid()}"
    faults = keep / f"faults_{path.stem}_{card}gb"
    os.environ.update({"LLMKIT_STANDIN": "0", "LLMKIT_CARD_GB": str(card), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
                       WATCH_ENV: tag,  # the kernel and every process it starts: their GPU memory is counted
                       # a kernel that dies leaves its Python stacks in faults/<pid>.log (fault_log/sitecustomize.py)
                       "LLMKIT_FAULT_LOG_DIR": str(faults),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(FAULT_HOOK), os.environ.get("PYTHONPATH")]))})
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name=kernel or kernel_for(nb), allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    disk_before = shutil.disk_usage("/").used
    started = time.perf_counter()
    error = None
    with PeakGpuMemory(tag, describe=describe_process) as gpu, _time_limit(notebook_timeout_s):
        try:
            client.execute()
        except Exception as exc:  # a cell timeout, a dead kernel, the notebook's time limit: recorded
            error = f"{type(exc).__name__}: {exc}"[:600]
    wall = time.perf_counter() - started
    os.environ.clear()
    os.environ.update(env_before)
    nbformat.write(nb, keep / f"{path.stem}_{card}gb.ipynb")
    report = cell_report(nb)
    if error:
        report["failures"].append({"cell": None, "error": error})
        report["failed"] += 1
    return {**report, "peak_gpu_gib": gpu.peak_gib, "card_gb": card, "over_card": gpu.peak_gib > card,
            "peak_processes": gpu.peak_processes, **fault_stacks(faults),
            "disk_written_gib": round((shutil.disk_usage("/").used - disk_before) / 2**30, 2),
            "wall_s": round(wall, 1)}


def fault_stacks(folder: Path, lines: int = 40) -> dict:
    """``{"fault_stacks": {pid: last lines}}`` of the processes that wrote a fatal fault's stacks into ``folder``
    (``fault_log/sitecustomize.py``), ``{}`` when none did."""
    logs = {log.stem: log.read_text(errors="replace").splitlines()[-lines:]
            for log in sorted(folder.glob("*.log")) if log.stat().st_size}
    return {"fault_stacks": logs} if logs else {}


def kernel_for(nb) -> str:
    """The notebook's own kernel where it is registered here (``python -m llmkit.deploy.llamacpp_kernel install`` for the
    llama.cpp notebook), else ``python3``: the GPU machine's Python has the course's packages but no "llmkit" kernel."""
    from jupyter_client.kernelspec import KernelSpecManager

    name = nb.metadata.get("kernelspec", {}).get("name", "python3")
    return name if name in KernelSpecManager().find_kernel_specs() else "python3"


class NotebookTimeLimit(Exception):
    """The notebook ran past ``--notebook-timeout``; the cells done so far are still reported."""


@contextlib.contextmanager
def _time_limit(seconds: int):
    """Raise NotebookTimeLimit in the main thread after ``seconds`` (SIGALRM), so a long notebook still reports."""
    def stop(signum, frame):
        raise NotebookTimeLimit(f"stopped after {seconds} s (--notebook-timeout)")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def machine() -> dict:
    """GPU, versions (read from package metadata: importing gptqmodel here would change HF_HOME for the
    notebooks' kernels, see ``llmkit.hub.pin_hf_home``), date and commit."""
    import torch

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "optimum", "gptqmodel", "peft", "accelerate", "llama-cpp-python"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"gpu": torch.cuda.get_device_name(0), "gpu_total_gib": round(torch.cuda.mem_get_info()[1] / 2**30, 1),
            "versions": versions}


def readme_table(results: Path = ROOT / "benchmarks" / "results", cards: tuple[int, ...] = (24, 40, 80)) -> str:
    """The README's course map in real mode, per notebook and card size, made from the result files
    (tests/test_docs_numbers.py compares the two)."""
    runs = {card: json.loads(f.read_text())["notebooks"] if (f := results / f"realmode_{card}gb.json").exists()
            else {} for card in cards}
    lines = ["| notebook | " + " | ".join(f"{card} GB card" for card in cards) + " |", "| --- |" + " --- |" * len(cards)]
    for name in sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        lines.append(f"| `{name}` | " + " | ".join(_course_map_cell(runs[card].get(name)) for card in cards) + " |")
    return "\n".join(lines)


TABLE_GPU = "NVIDIA H200"  # the README's heading names it; a run on another GPU says which in its cell


def _course_map_cell(run: dict | None) -> str:
    """One notebook at one card size: runs fully / runs with cells skipped by the notebook / cells failed."""
    if run is None:
        return "not run yet"
    measured = f"peak {run['peak_gpu_gib']} GiB, {run['wall_s']} s"
    if run.get("gpu", TABLE_GPU) != TABLE_GPU:
        measured += f" on an {run['gpu'].removeprefix('NVIDIA ')}"
    if run["peak_gpu_gib"] > run["card_gb"]:
        return f"not valid at this size: peak {run['peak_gpu_gib']} GiB is over the card ({run['failed']} cells failed)"
    if any("DeadKernelError" in failure["error"] for failure in run["failures"]):
        return f"the kernel died after {run['passed']} cells"
    if any(failure["error"].startswith("NotebookTimeLimit") for failure in run["failures"]):
        failed = run["failed"] - 1
        return (f"stopped by the time limit after {run['passed'] + failed} cells"
                + (f" ({failed} failed)" if failed else "") + f"; peak {run['peak_gpu_gib']} GiB so far")
    if run["failed"]:
        return f"{run['failed']} of {run['passed'] + run['failed'] + run['skipped_by_notebook']} cells failed"
    if run["skipped_by_notebook"]:
        cells = [str(skip["cell"]) for skip in run["skips"]]
        return f"runs; skipped by the notebook: cell{'s' * (len(cells) > 1)} {', '.join(cells)}; {measured}"
    return f"runs fully ({run['passed']} cells); {measured}"


def chinese_cell(cell: str) -> str:
    """One cell of the English real-mode table (as ``_course_map_cell`` writes it) in Chinese, every number kept.

    >>> chinese_cell("runs fully (9 cells); peak 0.51 GiB, 27.1 s")
    '全部通过（9 个单元格）；峰值 0.51 GiB，27.1 s'
    """
    measured = r"peak (?P<peak>[\d.]+) GiB, (?P<wall>[\d.]+) s(?: on an (?P<gpu>.+))?"

    def measured_zh(m: re.Match) -> str:
        return f"峰值 {m['peak']} GiB，{m['wall']} s" + (f"（在 {m['gpu']} 上）" if m["gpu"] else "")

    patterns = [
        (r"not run yet", lambda m: "尚未运行"),
        (r"runs fully \((?P<n>\d+) cells\); " + measured, lambda m: f"全部通过（{m['n']} 个单元格）；" + measured_zh(m)),
        (r"runs; skipped by the notebook: cells? (?P<cells>[\d, ]+); " + measured,
         lambda m: f"通过，笔记本跳过单元格 {m['cells']}；" + measured_zh(m)),
        (r"stopped by the time limit after (?P<n>\d+) cells(?: \((?P<f>\d+) failed\))?; peak (?P<peak>[\d.]+) GiB so far",
         lambda m: f"{m['n']} 个单元格后到达时间上限" + (f"（{m['f']} 个失败）" if m["f"] else "") + f"；此前峰值 {m['peak']} GiB"),
        (r"the kernel died after (?P<n>\d+) cells", lambda m: f"内核在 {m['n']} 个单元格后退出"),
        (r"(?P<f>\d+) of (?P<t>\d+) cells failed", lambda m: f"{m['t']} 个单元格中 {m['f']} 个失败"),
        (r"not valid at this size: peak (?P<peak>[\d.]+) GiB is over the card \((?P<f>\d+) cells failed\)",
         lambda m: f"在这个大小下无效：峰值 {m['peak']} GiB 超过了卡（{m['f']} 个单元格失败）"),
    ]
    for pattern, chinese in patterns:
        if found := re.fullmatch(pattern, cell):
            return chinese(found)
    raise ValueError(f"no Chinese for the real-mode cell {cell!r}: add its pattern to chinese_cell")


def readme_table_zh(english: str) -> str:
    """The README's Chinese real-mode table: ``english`` (``readme_table()``) with every cell in Chinese."""
    lines = english.splitlines()
    header = lines[0].replace("| notebook |", "| 笔记本 |").replace(" GB card |", " GB 卡 |")
    rows = []
    for line in lines[2:]:
        name, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append(f"| {name} | " + " | ".join(chinese_cell(cell) for cell in cells) + " |")
    return "\n".join([header, lines[1], *rows])


def merge(fetched: Path, results: Path = ROOT / "benchmarks" / "results", readme: Path = ROOT / "README.md") -> list[str]:
    """Merge the per-notebook entries of a GPU call's result files (``fetched``: the folder its ``$OUT`` came back to)
    into ``results``' files, then rewrite the README's real-mode table from them; returns what was merged.

    >>> merge(Path("/work/.device/3"))  # doctest: +SKIP
    ['24 GB: 09_llamacpp_gguf']
    """
    merged = []
    for source in sorted(fetched.glob("realmode_*gb.json")):
        theirs = json.loads(source.read_text())
        target = results / source.name
        ours = json.loads(target.read_text()) if target.exists() else {"card_gb": theirs["card_gb"], "notebooks": {}}
        ours["notebooks"].update(theirs["notebooks"])
        ours["machine"] = theirs["machine"]
        target.write_text(json.dumps(ours, indent=2, ensure_ascii=False))
        merged += [f"{theirs['card_gb']} GB: {name}" for name in theirs["notebooks"]]
    write_readme_tables(readme, results)
    return merged


def write_readme_tables(readme: Path = ROOT / "README.md", results: Path = ROOT / "benchmarks" / "results") -> None:
    """Rewrite the README's real-mode tables, English and Chinese, from the result files."""
    english = readme_table(results)
    text = readme.read_text(encoding="utf-8")
    for marker, table in (("realmode-table", english), ("realmode-table-zh", readme_table_zh(english))):
        start, end = f"<!-- {marker} -->\n", f"\n<!-- /{marker} -->"
        if start in text:
            before, rest = text.split(start)
            text = before + start + table + end + rest.split(end, 1)[1]
    readme.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merge", type=Path, metavar="FOLDER", help="instead of running: merge the result files a GPU "
                        "call brought back into benchmarks/results and rewrite the README's tables")
    parser.add_argument("--readme", action="store_true", help="instead of running: rewrite the README's tables from "
                        "benchmarks/results (after a notebook was added or renamed)")
    parser.add_argument("--cards", nargs="+", type=int, default=[24, 80])
    parser.add_argument("--notebooks", nargs="+", help="notebook numbers, e.g. 00 02 05")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--keep", type=Path, default=Path("/tmp/realmode_notebooks"), help="executed notebooks")
    parser.add_argument("--cell-timeout", type=int, default=400)
    parser.add_argument("--notebook-timeout", type=int, default=540, help="stop a notebook after this many seconds")
    parser.add_argument("--deadline-s", type=float, default=540, help="start no notebook after this many seconds")
    parser.add_argument("--kernel", help="run the notebooks in this Jupyter kernel instead of their own (e.g. 10 in "
                                         "a kernel whose Python has vLLM, as a learner picks 'Python (llmkit + vLLM)')")
    args = parser.parse_args()
    if args.merge:
        print("\n".join(merge(args.merge)) or f"no realmode_*gb.json in {args.merge}")
        return
    if args.readme:
        write_readme_tables()
        return
    if not args.notebooks:
        parser.error("name the notebooks to run (--notebooks 00 02 ...) or a folder to --merge")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.keep.mkdir(parents=True, exist_ok=True)
    info = machine()
    for card in args.cards:
        result_file = args.out / f"realmode_{card}gb.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else {"card_gb": card, "notebooks": {}}
        result.update(machine=info)
        for number in args.notebooks:
            if time.perf_counter() - started > args.deadline_s:
                print(f"deadline: {number} at {card} GB not started", flush=True)
                continue
            path = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
            print(f"--- {path.name} at {card} GB", flush=True)
            report = run_notebook(path, card, args.keep, args.cell_timeout, args.notebook_timeout, args.kernel)
            result["notebooks"][path.stem] = {**report, "gpu": info["gpu"], "date": datetime.date.today().isoformat(),
                                              "commit": llmkit_commit(), **({"kernel": args.kernel} if args.kernel else {})}
            print(json.dumps({k: v for k, v in report.items() if k != "skips"}, ensure_ascii=False), flush=True)
            result_file.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
