"""``llmkit doctor``: environment report; exit 1 when a row FAILs."""

from __future__ import annotations

from llmkit.cli.table import print_table
from llmkit.environment.doctor import doctor, exit_code


def register(sub) -> None:
    parser = sub.add_parser("doctor", help="check GPU, driver, CUDA, torch and the course packages")
    parser.add_argument("--json", action="store_true", help="print facts and rows as JSON")
    parser.add_argument("--require-gpu", action="store_true", help="FAIL (not WARN) when no GPU is visible")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    report = doctor(require_gpu=args.require_gpu)
    return report, exit_code(report)


def render(report: dict) -> None:
    print_table(report["rows"], ["check", "value", "status", "fix"], title="llmkit doctor")
