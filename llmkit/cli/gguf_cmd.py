"""``llmkit gguf MODEL FILE``: convert a model to GGUF with llama.cpp's converter, optionally quantized."""

from __future__ import annotations

import time
from pathlib import Path

from llmkit.deploy.gguf import CONVERT_TYPES, QUANT_TYPES
from llmkit.safe_output import refuse_existing


def register(sub) -> None:
    parser = sub.add_parser("gguf", help="convert a Hugging Face model to a GGUF file for llama.cpp")
    parser.add_argument("model", help="model id or path (stand-in mode: its stand-in)")
    parser.add_argument("out", type=Path, help="GGUF file to write (refused if it exists, unless --overwrite)")
    types = sorted({*CONVERT_TYPES, *QUANT_TYPES})
    parser.add_argument("--type", default="f16", choices=types, help="f16 (default) … q4_k_m, q5_k_m: "
                                                                     "k-quants are made from an f16 conversion")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    """Convert (and quantize); exit code 1 when llama.cpp's tools failed.

    >>> from llmkit.cli import build_parser
    >>> run(build_parser().parse_args(["gguf", "qwen2-chat", "/tmp/q.gguf"]))  # doctest: +SKIP
    """
    from llmkit.deploy import gguf
    from llmkit.hub import locate
    from llmkit.pick import pick_model

    refuse_existing(args.out, args.overwrite, flag="--overwrite")  # before minutes of conversion, in CLI words
    model_dir = locate(pick_model(args.model)).path
    data = {"model": args.model, "gguf": str(args.out), "type": args.type}
    start = time.perf_counter()
    try:
        if args.type in CONVERT_TYPES:
            gguf.convert(model_dir, args.out, args.type, overwrite=args.overwrite)
        else:
            f16 = args.out.with_name(f".{args.out.name}.f16")
            try:
                gguf.convert(model_dir, f16, "f16", overwrite=True)
                gguf.quantize(f16, args.out, args.type, overwrite=args.overwrite)
            finally:
                f16.unlink(missing_ok=True)
    except RuntimeError as error:
        return {**data, "error": str(error)}, 1
    size = args.out.stat().st_size
    return {**data, "size_mib": round(size / 2**20, 1), "seconds": round(time.perf_counter() - start, 1)}, 0


def render(data: dict) -> None:
    if "error" in data:
        print(f"llmkit gguf: {data['error']}")
        return
    print(f"wrote {data['gguf']} ({data['type']}, {data['size_mib']} MiB) in {data['seconds']} s")
