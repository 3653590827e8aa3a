"""Compare ``llmkit.estimate`` with every published peak-memory measurement llmkit knows of
(``llmkit.memory.PUBLISHED_MEASUREMENTS``) and write benchmarks/results/estimate_vs_published.json.

Run: .venv/bin/python benchmarks/estimate_vs_published.py
"""

import datetime
import json
from pathlib import Path

from llmkit.memory import check_published

RESULTS = Path(__file__).parent / "results" / "estimate_vs_published.json"


def main() -> None:
    rows = check_published()
    worst = max(rows, key=lambda r: abs(r["error"]))
    RESULTS.write_text(json.dumps({
        "date": datetime.date.today().isoformat(),
        "compared": "estimate_gib (total minus the CUDA context, as torch.cuda.max_memory_allocated sees it) vs measured_gib",
        "rows": rows,
        "worst_error_pct": round(100 * worst["error"], 1),
        "all_within_10pct": all(r["within"] for r in rows),
    }, indent=2))
    print(f"{len(rows)} published measurements, worst error {100 * worst['error']:+.1f}% ({worst['model']}, prompt {worst['prompt']})")


if __name__ == "__main__":
    main()
