"""``llmkit estimate ID|PATH``: GPU memory a model needs for inference (or, with ``--train``, for a LoRA / QLoRA
training step), and which cards it fits."""

from __future__ import annotations

from llmkit.cli.table import print_table
from llmkit.memory import QUANTS, estimate
from llmkit.finetune.train_memory import METHODS, estimate_training


def register(sub) -> None:
    parser = sub.add_parser("estimate", help="estimate the GPU memory a model needs (no download, no GPU)")
    parser.add_argument("model", help="model directory (with config.json) or a shipped id, e.g. Qwen/Qwen2-7B-Instruct")
    parser.add_argument("--quant", choices=QUANTS, help="weight storage (default: the checkpoint's own)")
    parser.add_argument("--context", type=int, default=4096,
                        help="tokens per sequence, prompt + generated (default 4096)")
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded (or trained) together (default 1)")
    parser.add_argument("--train", choices=METHODS, help="estimate a LoRA or QLoRA training step instead of inference")
    parser.add_argument("--seq-len", type=int, default=512, help="--train: tokens per training sequence (default 512)")
    parser.add_argument("--rank", type=int, default=8, help="--train: LoRA rank on every linear layer (default 8)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="--train: keep every activation (faster, much more memory)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    """Estimate for the parsed arguments; bad input raises BadInput (exit 2).

    >>> from llmkit.cli import build_parser
    >>> data, code = run(build_parser().parse_args(["estimate", "Qwen/Qwen2-7B-Instruct", "--json"]))
    >>> data["quant"], code
    ('bf16', 0)
    """
    if args.train:
        return estimate_training(args.model, args.train, rank=args.rank, seq_len=args.seq_len, batch=args.batch,
                                 gradient_checkpointing=not args.no_gradient_checkpointing), 0
    return estimate(args.model, quant=args.quant, context=args.context, batch=args.batch), 0


def render(data: dict) -> None:
    """Print the memory terms and the per-card verdicts as two tables.

    >>> render(estimate("Qwen/Qwen2-7B-Instruct"))  # doctest: +SKIP
    """
    if "method" in data:
        _render_training(data)
        return
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


def _render_training(data: dict) -> None:
    terms = [{"term": name.removesuffix("_gib").replace("_", " "), "GiB": f"{gib:.2f}"}
             for name, gib in data.items() if name.endswith("_gib") and name != "total_gib"]
    terms.append({"term": "total", "GiB": f"{data['total_gib']:.2f}"})
    checkpointing = "on" if data["gradient_checkpointing"] else "off"
    print_table(terms, ["term", "GiB"], title=f"{data['model']} | {data['method']} r={data['rank']} | batch "
                f"{data['batch']} x {data['seq_len']} tokens | gradient checkpointing {checkpointing}")
    rows = [{"card": f"{card} GiB", "verdict": v["verdict"], "headroom GiB": f"{v['headroom_gib']:.1f}"}
            for card, v in data["verdicts"].items()]
    print_table(rows, ["card", "verdict", "headroom GiB"], title="cards (one copy of the model per card)")
