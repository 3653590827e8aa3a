"""Full-shape, random-weight Qwen2-7B-Instruct (bf16) through ``llmkit.load`` on a GPU:
peak memory against ``llmkit.estimate`` and batch-1 decode speed against the memory-bandwidth limit.

Memory and speed do not depend on the weights' values, so random weights measure what the real model would.
Writes ``$OUT/load_memory_gpu.json`` (or benchmarks/results/ when OUT is unset).

Run on a CUDA machine: python benchmarks/load_memory_gpu.py [--model Qwen/Qwen2-7B-Instruct] [--dir /tmp/q]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, __version__ as transformers_version

import llmkit
from llmkit.generation.bench_limit import copy_bandwidth_gb_s
from llmkit.memory import estimate, shipped_config
from llmkit.standins.qwen2_chat import qwen2_generation_config
from llmkit.standins.tokenizer import build_qwen2_tokenizer

GIB = 2**30


def copy_bandwidth_gbs(n_bytes: int = 4 * 2**30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (GB/s): ``llmkit bench``'s measure."""
    return copy_bandwidth_gb_s("cuda", n_bytes, repeats)


def write_random_checkpoint(model_id: str, out: Path) -> None:
    """Save a random-weight checkpoint with the model's published config, the Qwen2 tokenizer and generation config."""
    if (out / "config.json").exists():
        return
    config = AutoConfig.for_model(**shipped_config(model_id))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = qwen2_generation_config(build_qwen2_tokenizer())
    model.save_pretrained(out)
    build_qwen2_tokenizer().save_pretrained(out)
    del model
    torch.cuda.empty_cache()


def decode_tokens_per_s(model, tokenizer, new_tokens: int = 256, repeats: int = 3) -> dict:
    """Batch-1 greedy decode of exactly ``new_tokens`` tokens after a warm-up run; median of ``repeats``."""
    inputs = tokenizer(["Tell me about large language models."], return_tensors="pt").to(model.device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    warm_start = time.perf_counter()
    model.generate(**inputs, **kwargs)
    torch.cuda.synchronize()
    warm_up_s = time.perf_counter() - warm_start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(**inputs, **kwargs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return {"new_tokens": new_tokens, "warm_up_s": round(warm_up_s, 2), "runs_s": [round(t, 3) for t in times],
            "tokens_per_s": round(new_tokens / median, 1)}


def measure_full_context(model, context: int, total: int, free_before: int) -> dict:
    """Peak memory of a full-context prefill plus a 64-token decode: the situation the estimate describes.

    ``total`` and ``free_before`` are ``torch.cuda.mem_get_info()`` read before the model was loaded.
    """
    prompt = torch.randint(0, 150000, (1, context - 64), device=model.device)
    start = time.perf_counter()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, min_new_tokens=64, do_sample=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    free_after, _ = torch.cuda.mem_get_info()
    return {
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
        "device_used_gib_incl_cuda_context": round((total - free_after) / GIB, 2),
        "device_used_before_load_gib": round((total - free_before) / GIB, 2),
        "device_total_gib": round(total / GIB, 2),
        "prefill_and_decode_64_s": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="Qwen/Qwen2-7B-Instruct")
    parser.add_argument("--dir", default="/tmp/random-qwen2-7b")
    parser.add_argument("--context", type=int, default=4096)
    args = parser.parse_args()

    bandwidth = copy_bandwidth_gbs()
    path = Path(args.dir)
    write_random_checkpoint(args.model, path)
    torch.cuda.reset_peak_memory_stats()
    free_before, total = torch.cuda.mem_get_info()
    model, tokenizer = llmkit.load(str(path), context=args.context)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    measured = measure_full_context(model, args.context, total, free_before)
    predicted = estimate(str(path), context=args.context)
    decode = decode_tokens_per_s(model, tokenizer)
    limit = bandwidth * 1e9 / weight_bytes
    result = {
        "date": datetime.date.today().isoformat(), "model": args.model, "weights": "random (full shape)",
        "device": torch.cuda.get_device_name(), "versions": {"torch": torch.__version__, "transformers": transformers_version,
                                                             "llmkit": llmkit.__version__, "python": platform.python_version()},
        "context": args.context, "estimate": predicted, "measured": measured,
        # the allocator peak excludes the CUDA context (held outside PyTorch); the device figure includes it
        "estimate_vs_peak_allocated_pct": round(100 * (predicted["total_gib"] - predicted["overhead_terms"]["cuda_context_gib"]
                                                       - measured["peak_allocated_gib"]) / measured["peak_allocated_gib"], 1),
        "estimate_vs_device_used_pct": round(100 * (predicted["total_gib"] - measured["device_used_gib_incl_cuda_context"])
                                             / measured["device_used_gib_incl_cuda_context"], 1),
        "copy_bandwidth_gb_s": round(bandwidth, 1), "weight_gb": round(weight_bytes / 1e9, 2),
        "decode_batch1": {**decode, "bandwidth_limit_tokens_per_s": round(limit, 1),
                          "fraction_of_limit": round(decode["tokens_per_s"] / limit, 3)},
    }
    out = Path(os.environ.get("OUT", Path(__file__).parent / "results")) / "load_memory_gpu.json"  # kept as load_memory_gpu_<gpu>.json
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
