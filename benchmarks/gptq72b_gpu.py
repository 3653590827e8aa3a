"""Full-shape, random-weight Qwen2-72B-Instruct-GPTQ-Int4 through ``llmkit.load`` on one GPU: peak memory
against ``llmkit.estimate`` (with a 4k context exercised) and batch-1 decode speed against the memory-bandwidth limit.

Memory and speed do not depend on the weights' values, so random weights measure what the real model would
(random fp16 values may overflow to inf/NaN through 80 layers; decode length is forced and checked).
The checkpoint is ``llmkit rehearse``'s: GPTQ v1 safetensors shards with the tensor names and shapes Qwen publishes
(``llmkit.standins.rehearsal``).

Steps (each a sub-command, so the Marlin JIT build can run beside the checkpoint writing):
    python benchmarks/gptq72b_gpu.py write --dir /tmp/q72     # ~41.6 GB on disk
    python benchmarks/gptq72b_gpu.py prebuild                 # JIT-compile gptqmodel's Marlin kernels (fp16 + bf16)
    python benchmarks/gptq72b_gpu.py bench --dir /tmp/q72     # writes $OUT/load_gptq72b.json
Faster decoding (CUDA graphs) is measured by benchmarks/decode_fast_gpu.py.
Needs optimum + gptqmodel (and pypcre): see benchmarks/GPU_NOTES.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from load_memory_gpu import copy_bandwidth_gbs, decode_tokens_per_s, measure_full_context  # noqa: E402  (reused, not copied)

MODEL_ID = "Qwen/Qwen2-72B-Instruct-GPTQ-Int4"


def write_random_gptq_checkpoint(out: Path, backend: str | None = "marlin") -> dict:
    """The rehearsal checkpoint of Qwen2-72B-Instruct-GPTQ-Int4 (``llmkit.standins.rehearsal.write_folder``) in ``out``.

    ``backend``: written into quantization_config. On an H100 gptqmodel 7.6's auto-selection picks MacheteLinear,
    whose JIT build downloads CUTLASS at first use (impossible offline); ``llmkit.load`` asks for Marlin itself, so
    callers that load through it pass None.
    """
    from llmkit.standins.rehearsal import write_folder

    if (out / "model.safetensors.index.json").exists():
        return {"reused": True}
    result = write_folder(MODEL_ID, out)
    if backend:  # a loading attribute of transformers' GPTQConfig, passed on to optimum/gptqmodel's kernel selection
        config = json.loads((out / "config.json").read_text())
        config["quantization_config"]["backend"] = backend
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return {"reused": False, "checkpoint_bytes": result["bytes"], "shards": len(result["files"]),
            "write_s": result["seconds"]}


def prebuild_marlin(name: str = "marlin") -> dict:
    """JIT-compile one of gptqmodel's Marlin extensions (cached under ~/.cache/gptqmodel) and time it.

    llmkit.load picks bf16 on GPUs that have it, GPTQ included: MarlinLinear then needs both builds (measured on
    the H100: post_init JIT-built ``marlin_fp16`` during loading although ``marlin_bf16`` was ready), so the
    default ``marlin`` builds both (one after the other: ~115 s + ~180 s with MAX_JOBS=16).
    """
    from gptqmodel import extension

    start = time.perf_counter()
    ok = extension.load(name)
    return {"extension": name, "loaded": ok, "build_s": round(time.perf_counter() - start, 1)}


def model_bytes(model) -> dict:
    """Bytes of all parameters and buffers (deduplicated by storage), by dtype, and the embedding table's share."""
    seen, by_dtype, total = set(), {}, 0
    for _name, t in list(model.named_parameters()) + list(model.named_buffers()):
        key = (t.untyped_storage().data_ptr(), t.data_ptr(), t.numel())
        if key in seen or t.device.type != "cuda":
            continue
        seen.add(key)
        b = t.numel() * t.element_size()
        total += b
        by_dtype[str(t.dtype)] = by_dtype.get(str(t.dtype), 0) + b
    embed = model.get_input_embeddings().weight
    return {"total_bytes": total, "by_dtype_bytes": by_dtype, "embed_tokens_bytes": embed.numel() * embed.element_size()}


def bench(path: Path, context: int) -> dict:
    from transformers import __version__ as transformers_version

    import llmkit
    from llmkit.memory import estimate

    bandwidth = copy_bandwidth_gbs()
    torch.cuda.reset_peak_memory_stats()
    free_before, total = torch.cuda.mem_get_info()
    t0 = time.perf_counter()
    model, tokenizer = llmkit.load(str(path), context=context)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    q_proj = model.model.layers[0].self_attn.q_proj
    kernel = {"q_proj_class": type(q_proj).__name__, "module": type(q_proj).__module__,
              "dtype": str(model.dtype), "devices": sorted({str(p.device) for p in model.parameters()})}
    print("kernel:", kernel, "load_s:", round(load_s, 1), flush=True)
    sizes = model_bytes(model)

    produced = []
    original_generate = model.generate

    def counting_generate(*args, **kwargs):  # record how many tokens each generate() really produced
        out = original_generate(*args, **kwargs)
        prompt = kwargs.get("input_ids", args[0] if args else None)
        produced.append(out.shape[1] - prompt.shape[1])
        return out

    model.generate = counting_generate

    measured = {**measure_full_context(model, context, total, free_before), "load_s": round(load_s, 1)}
    print("measured:", measured, flush=True)
    predicted = estimate(str(path), context=context)
    decode = decode_tokens_per_s(model, tokenizer)
    decode_counts = produced[1:]
    limit = bandwidth * 1e9 / sizes["total_bytes"]
    limit_no_embed = bandwidth * 1e9 / (sizes["total_bytes"] - sizes["embed_tokens_bytes"])
    import gptqmodel
    import optimum

    return {
        "date": datetime.date.today().isoformat(), "model": MODEL_ID, "weights": "random (full shape, GPTQ v1 int4, group 128)",
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "transformers": transformers_version, "optimum": optimum.__version__
                     if hasattr(optimum, "__version__") else "2.3.0", "gptqmodel": gptqmodel.__version__,
                     "llmkit": llmkit.__version__, "python": platform.python_version()},
        "context": context, "kernel": kernel,
        "quantization_config_backend": json.loads((path / "config.json").read_text())["quantization_config"].get("backend", "auto"), "estimate": predicted, "measured": measured,
        "tokens_produced_per_generate": {"prefill_4032_decode_64": produced[0], "decode_runs_256": decode_counts},
        "estimate_minus_cuda_context_gib": round(predicted["total_gib"] - predicted["overhead_terms"]["cuda_context_gib"], 2),
        "estimate_vs_peak_allocated_pct": round(100 * (predicted["total_gib"] - predicted["overhead_terms"]["cuda_context_gib"]
                                                       - measured["peak_allocated_gib"]) / measured["peak_allocated_gib"], 1),
        "estimate_vs_device_used_pct": round(100 * (predicted["total_gib"] - measured["device_used_gib_incl_cuda_context"])
                                             / measured["device_used_gib_incl_cuda_context"], 1),
        "headroom_after_4k_gib": round(measured["device_total_gib"] - measured["device_used_gib_incl_cuda_context"], 2),
        "copy_bandwidth_gb_s": round(bandwidth, 1),
        "bytes_per_token": {"how": "sum of numel*element_size of all CUDA parameters and buffers after loading (Marlin-repacked "
                                   "qweight, scales, zeros/g_idx/perm/workspace buffers, fp16 embeddings, norms, biases, lm_head), "
                                   "deduplicated by storage",
                            **sizes},
        "decode_batch1": {**decode, "bandwidth_limit_tokens_per_s": round(limit, 1),
                          "fraction_of_limit": round(decode["tokens_per_s"] / limit, 3),
                          "bandwidth_limit_excluding_embedding_table_tokens_per_s": round(limit_no_embed, 1),
                          "fraction_of_limit_excluding_embedding_table": round(decode["tokens_per_s"] / limit_no_embed, 3)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["write", "prebuild", "bench"])
    parser.add_argument("--ext", default="marlin", help="prebuild: gptqmodel extension name")
    parser.add_argument("--dir", default="/tmp/random-qwen2-72b-gptq")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--backend", default="marlin", help="gptqmodel backend written into config.json ('' = auto)")
    args = parser.parse_args()
    if args.step == "write":
        result = write_random_gptq_checkpoint(Path(args.dir), backend=args.backend or None)
        print(json.dumps(result), flush=True)
        return
    if args.step == "prebuild":
        print(json.dumps(prebuild_marlin(args.ext)), flush=True)
        return
    result = bench(Path(args.dir), args.context)
    out = Path(os.environ.get("OUT", Path(__file__).parent / "results")) / "load_gptq72b.json"  # kept as load_gptq72b_<gpu>.json
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
