"""``preflight``: what a notebook needs on your card before you run it, from the course's own measurements.

For each card size: whether the notebook ran fully in real mode, which cells it skipped there (and why) or which
failed, the peak GPU memory and wall time measured (``benchmarks/realmode_gpu.py`` → ``realmode_<N>gb.json``,
full-shape checkpoints on an H200 or H100 emulating the card); and how much its models download, what the notebook
writes to disk, and what a first run adds to the time (the download). Where a notebook has not
been run at a card size it says so, with llmkit's memory estimate instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import BadInput
from llmkit.memory import estimate

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
CARDS = (24, 40, 80)
DOWNLOAD_MB_S = 50  # a download speed to put the first run's extra time in minutes; yours may be faster or slower


def preflight(notebook: str, models: list[str], cards: tuple[int, ...] = CARDS, results: Path = RESULTS) -> list[dict]:
    """One row per card size for ``notebook`` (e.g. "02_qwen2_7b_chat"), printed as a short table and returned.

    >>> rows = preflight("02_qwen2_7b_chat", ["Qwen/Qwen2-7B-Instruct"])  # doctest: +ELLIPSIS
    download: Qwen/Qwen2-7B-Instruct 15.2 GB ...
    >>> rows[0]["card_gb"], rows[0]["estimate_gib"] > 15
    (24, True)
    """
    if not models:
        raise BadInput("name the models the notebook loads, e.g. ['Qwen/Qwen2-7B-Instruct']")
    needs = {model: estimate(model) for model in models}
    print("download: " + ", ".join(f"{m} {e['weights_bytes'] / 1e9:.1f} GB" for m, e in needs.items())
          + " (once; llmkit.pick_model(..., download=True) shows the size first)")
    runs = {card: _measured(results / f"realmode_{card}gb.json", notebook) for card in cards}
    download_gb = sum(e["weights_bytes"] for e in needs.values()) / 1e9
    written = [run["disk_written_gib"] for run in runs.values() if run and run.get("disk_written_gib")]
    print(f"disk: {download_gb:.1f} GB of downloads" + (f" + {max(written)} GiB that the notebook writes" if written else "")
          + f"; time: as measured below once the models are on disk, and a first run adds the download (about "
          f"{download_gb * 1e3 / DOWNLOAD_MB_S / 60:.0f} min at {DOWNLOAD_MB_S} MB/s)")
    biggest = max(e["total_gib"] for e in needs.values())
    rows = []
    for card, run in runs.items():
        row = {"card_gb": card, "estimate_gib": round(biggest, 1), "fits_by_estimate": biggest <= card,
               "status": _status(run, card), "peak_gib": run and run["peak_gpu_gib"], "wall_s": run and run["wall_s"],
               "disk_written_gib": run and run.get("disk_written_gib")}
        rows.append(row)
        measured = f"peak {row['peak_gib']} GiB, {row['wall_s']} s" if run else f"estimate {row['estimate_gib']} GiB"
        print(f"{card:>3} GB card: {row['status']} ({measured})")
    return rows


def _measured(file: Path, notebook: str) -> dict | None:
    if not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8"))["notebooks"].get(notebook)


def _status(run: dict | None, card: int) -> str:
    if run is None:
        return "not measured at this size yet"
    if run["peak_gpu_gib"] > card:
        return f"not confirmed at this size: the measured run used {run['peak_gpu_gib']} GiB, more than the card has"
    if run["failed"]:
        return f"{run['failed']} cell(s) failed in the last measured run ({run.get('commit')}): " + "; ".join(
            f["error"].split("\n")[0][:80] for f in run["failures"])
    if run["skipped_by_notebook"]:
        return f"runs, {run['skipped_by_notebook']} cell(s) skipped: " + "; ".join(
            s["message"].removeprefix("[skipped] ").split(":")[0] for s in run["skips"])
    return "runs fully"
