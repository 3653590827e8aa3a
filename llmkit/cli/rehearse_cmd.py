"""``llmkit rehearse MODEL... [--place hf|modelscope|model-dir] [--remove]``: write (or delete) full-shape
random-weight checkpoints under the real model ids, where a learner's download would put them (``llmkit.standins.rehearsal``).
Combine with ``LLMKIT_CARD_GB=24`` (``llmkit.card``) to rehearse a smaller card on a big GPU."""

from __future__ import annotations

from llmkit.cli.table import print_table


def register(sub) -> None:
    parser = sub.add_parser("rehearse", help="write random-weight checkpoints under the real ids (needs a GPU)")
    parser.add_argument("models", nargs="+", metavar="MODEL", help="course model ids, e.g. Qwen/Qwen2-7B-Instruct")
    parser.add_argument("--place", default="hf", choices=["hf", "modelscope", "model-dir"],
                        help="where a download would put them: the Hugging Face cache (default), ModelScope's "
                             "cache, or $LLMKIT_MODEL_DIR/Org/Name")
    parser.add_argument("--remove", action="store_true", help="delete these rehearsal checkpoints (only those)")
    parser.add_argument("--overwrite", action="store_true", help="write again over an existing rehearsal checkpoint")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    from llmkit.standins import rehearsal

    if args.remove:
        rows = [{"model": m, "removed": rehearsal.remove(m, args.place)} for m in args.models]
    else:
        rows = [rehearsal.write(m, args.place, overwrite=args.overwrite) for m in args.models]
    return {"checkpoints": rows}, 0


def render(data: dict) -> None:
    columns = ["model", "removed"] if "removed" in data["checkpoints"][0] else ["model", "reused", "bytes", "seconds", "path"]
    print_table(data["checkpoints"], columns, title="llmkit rehearsal checkpoints (random weights)")
