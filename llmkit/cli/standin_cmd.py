"""``llmkit standin KIND`` builds a stand-in if needed and prints its directory last; ``--list`` lists them."""

from __future__ import annotations

from llmkit.cli.table import print_table
from llmkit.errors import BadInput
from llmkit.standins import build_info, list_standins, standin_path


def register(sub) -> None:
    parser = sub.add_parser("standin", help="build / locate the tiny offline stand-in models")
    parser.add_argument("kind", nargs="?", help="stand-in kind, e.g. qwen2-chat or qwen2-gptq-int4")
    parser.add_argument("--list", action="store_true", help="list the stand-in kinds")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    if args.list:
        return {"standins": list_standins()}, 0
    if not args.kind:
        raise BadInput("name a stand-in kind (see: llmkit standin --list)")
    path = standin_path(args.kind)
    return {"kind": args.kind, "path": str(path), "build": build_info(args.kind)}, 0


def render(data: dict) -> None:
    if "standins" in data:
        rows = [{**s, "stands_for": ", ".join(s["stands_for"])} for s in data["standins"]]
        print_table(rows, ["kind", "built", "stands_for", "summary"], title="llmkit stand-ins")
        return
    print(f"built in {data['build']['build_seconds']} s: {data['build']}")
    print(data["path"])
