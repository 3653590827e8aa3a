"""vLLM's start-up, as its own log reports it: weights loaded (GiB, s), torch.compile, CUDA graphs, the whole engine
init, the attention backend. From the log of `vllm serve`, `vllm bench throughput` or `LLM(...)` on the GPU machine:

    python benchmarks/vllm_startup.py /work/.device/14/vllm_probe.log --gpu "NVIDIA H100 80GB HBM3" \
        --versions vllm=0.26.0 torch=2.11.0+cu130 --commit f74dcc7 --date 2026-12-06 \
        --out benchmarks/results/vllm_startup_h100.json

docs/results.md quotes the file (tests/test_docs_numbers.py).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

PATTERNS = {  # vLLM 0.26's log lines (EngineCore process)
    "weights_gib": r"Model loading took ([\d.]+) GiB",
    "model_load_s": r"Model loading took [\d.]+ GiB and ([\d.]+) seconds",
    "torch_compile_s": r"torch\.compile took ([\d.]+) s in total",
    "cuda_graphs_s": r"Graph capturing finished in ([\d.]+) secs",
    "cuda_graphs_gib": r"Graph capturing finished in [\d.]+ secs, took ([\d.]+) GiB",
    "engine_init_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
    "kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "kv_cache_tokens": r"GPU KV cache size: ([\d,]+) tokens",
}


def startup(log: str) -> dict:
    """The start-up figures found in ``log`` (absent ones left out), rounded as vLLM printed them.

    >>> startup("Model loading took 14.29 GiB and 7.183515 seconds\\nUsing FlashAttention version 3")
    {'weights_gib': 14.29, 'model_load_s': 7.18, 'attention': 'FlashAttention version 3'}
    >>> startup("GPU KV cache size: 70,064 tokens")
    {'kv_cache_tokens': 70064}
    """
    found = {name: round(float(m.group(1).replace(",", "")), 2) for name, pattern in PATTERNS.items()
             if (m := re.search(pattern, log))}
    if "kv_cache_tokens" in found:
        found["kv_cache_tokens"] = int(found["kv_cache_tokens"])
    if attention := re.search(r"Using (FlashAttention version \d+)", log):
        found["attention"] = attention.group(1)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--gpu", required=True, help="the GPU's name (nvidia-smi), e.g. 'NVIDIA H100 80GB HBM3'")
    parser.add_argument("--versions", nargs="*", default=[], metavar="NAME=VERSION")
    parser.add_argument("--commit", required=True)
    parser.add_argument("--date", required=True, help="the day of the run, YYYY-MM-DD")
    parser.add_argument("--card-gb", type=int, help="the card size emulated with LLMKIT_CARD_GB, if one was")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    figures = startup(args.log.read_text(encoding="utf-8", errors="replace"))
    if not figures:
        parser.error(f"{args.log} has none of vLLM's start-up lines: is it the log of a vLLM engine?")
    result = {"date": args.date, "commit": args.commit, "gpu": args.gpu,
              **({"card_gb": args.card_gb} if args.card_gb else {}),
              "versions": dict(v.split("=", 1) for v in args.versions), "log": args.log.name, **figures}
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
