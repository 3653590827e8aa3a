"""``llmkit estimate ID|PATH``: GPU memory a model needs for inference, and which cards it fits."""

from __future__ import annotations

from llmkit.cli.table import print_table
from llmkit.memory import QUANTS, estimate


def register(sub) -> None:
    parser = sub.add_parser("estimate", help="estimate the GPU memory a model needs (no download, no GPU)")
    parser.add_argument("model", help="model directory (with config.json) or a shipped id, e.g. Qwen/Qwen2-7B-Instruct")
    parser.add_argument("--quant", choices=QUANTS, help="weight storage (default: the checkpoint's own)")
    parser.add_argument("--context", type=int, default=4096,
                        help="tokens per sequence, prompt + generated (default 4096)")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    """Estimate for the parsed arguments; bad input raises BadInput (exit 2).

    >>> from llmkit.cli import build_parser
    >>> data, code = run(build_parser().parse_args(["estimate", "Qwen/Qwen2-7B-Instruct", "--json"]))
    >>> data["quant"], code
    ('bf16', 0)
    """
    return estimate(args.model, quant=args.quant, context=args.context, batch=args.batch), 0


def render(data: dict) -> None:
    """Print the memory terms and the per-card verdicts as two tables.

    >>> render(estimate("Qwen/Qwen2-7B-Instruct"))  # doctest: +SKIP
    """
    terms = [{"term": "weights", "GiB": f"{data['weights_gib']:.2f}"},
             {"term": "KV cache", "GiB": f"{data['kv_cache_gib']:.2f}"},
             *({"term": f"  {name.removesuffix('_gib').replace('_', ' ')}", "GiB": f"{gib:.2f}"}
               for name, gib in data["overhead_terms"].items() if gib),
             {"term": "overhead", "GiB": f"{data['overhead_gib']:.2f}"},
             {"term": "total", "GiB": f"{data['total_gib']:.2f}"}]
    print_table(terms, ["term", "GiB"], title=f"{data['model']} | {data['quant']} | context {data['context']} | "
                                              f"batch {data['batch']}")
    rows = []
    for card, v in data["verdicts"].items():
        split = "" if v["cards_needed"] == 1 else (f"{v['cards_needed']} cards with device_map splitting"
                                                   if v["cards_needed"] else "no split fits")
        rows.append({"card": f"{card} GiB", "verdict": v["verdict"], "headroom GiB": f"{v['headroom_gib']:.1f}",
                     "split": split})
    print_table(rows, ["card", "verdict", "headroom GiB", "split"], title="cards")
    print("overhead = CUDA context + workspaces + max(prefill activations, logits); see llmkit/memory.py")
