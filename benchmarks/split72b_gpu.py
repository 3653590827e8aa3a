"""Qwen2-72B-Instruct in bf16 split across the GPUs of one machine: load, per-GPU memory against
``llmkit.memory.per_gpu_gib``, and greedy generation.

The weights are random (memory and speed do not depend on their values) and are created on the GPUs directly:
135 GiB of bf16 does not fit the device machine's disk, so there is no checkpoint to hand to ``from_pretrained``.
The split is the one ``from_pretrained(device_map="balanced")`` makes: accelerate's ``get_balanced_memory`` +
``infer_auto_device_map`` with the model's ``_no_split_modules``, then ``dispatch_model`` adds the hooks that move
activations from card to card.

Run on a machine with 2+ large GPUs (2x H200 141 GB):  NCCL_NVLS_ENABLE=0 python benchmarks/split72b_gpu.py
Writes ``$OUT/split72b_gpu.json`` (or benchmarks/results/ when OUT is unset).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import accelerate
import torch
from accelerate import dispatch_model, infer_auto_device_map
from accelerate.utils import get_balanced_memory, set_module_tensor_to_device
from transformers import AutoConfig, AutoModelForCausalLM, __version__ as transformers_version

from llmkit.memory import estimate, per_gpu_gib, shipped_config

GIB = 2**30


def device_of(name: str, device_map: dict) -> int | str:
    """The device the longest matching prefix of ``name`` is mapped to."""
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        prefix = ".".join(parts[:end])
        if prefix in device_map:
            return device_map[prefix]
    raise KeyError(name)


def materialize(model, device_map: dict, std: float = 0.02) -> None:
    """Give every meta parameter random bf16 values on its mapped device (norm weights 1), rebuild the rotary buffer."""
    torch.manual_seed(0)
    for name, param in list(model.named_parameters()):
        device = device_of(name, device_map)
        value = torch.empty(param.shape, dtype=torch.bfloat16, device=device)
        value.fill_(1.0) if name.endswith("norm.weight") else value.normal_(0, std)
        set_module_tensor_to_device(model, name, device, value=value)
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config, device=f"cuda:{device_of('model.rotary_emb', device_map)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen2-72B-Instruct")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reserve-gib", type=float, default=8.0, help="left free on each card for activations")
    args = parser.parse_args()
    n_gpus = torch.cuda.device_count()
    assert n_gpus >= 2, "this benchmark splits a model across 2+ GPUs"

    config = AutoConfig.for_model(**shipped_config(args.model))
    started = time.perf_counter()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    free = {i: torch.cuda.mem_get_info(i)[0] / GIB - args.reserve_gib for i in range(n_gpus)}
    no_split = model._no_split_modules
    balanced = get_balanced_memory(model, max_memory={i: f"{g:.0f}GiB" for i, g in free.items()},
                                   no_split_module_classes=no_split, dtype=torch.bfloat16)
    device_map = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split,
                                       dtype=torch.bfloat16)
    materialize(model, device_map)
    model = dispatch_model(model, device_map)
    model.eval()
    torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    loaded_gib = [torch.cuda.memory_allocated(i) / GIB for i in range(n_gpus)]

    layers = {i: sum(1 for k, v in device_map.items() if v == i and ".layers." in k) for i in range(n_gpus)}
    ids = torch.randint(0, config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    ids = ids.to(f"cuda:{device_of('model.embed_tokens', device_map)}")
    for i in range(n_gpus):
        torch.cuda.reset_peak_memory_stats(i)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        torch.cuda.synchronize()
        gen_s = time.perf_counter() - started
    peak_gib = [torch.cuda.max_memory_allocated(i) / GIB for i in range(n_gpus)]
    reserved_gib = [torch.cuda.max_memory_reserved(i) / GIB for i in range(n_gpus)]
    context = args.prompt_len + args.new_tokens
    est = estimate(args.model, context=context)
    est_split = per_gpu_gib(est, n_gpus)

    result = {
        "what": f"{args.model} bf16, random weights, split across {n_gpus} GPUs like device_map='balanced'",
        "machine": [torch.cuda.get_device_name(i) for i in range(n_gpus)],
        "versions": {"torch": torch.__version__, "transformers": transformers_version,
                     "accelerate": accelerate.__version__},
        "date": datetime.date.today().isoformat(),
        "env": {"NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE")},
        "load_s": round(load_s, 1),
        "layers_per_gpu": layers,
        "device_map_first_last": {k: device_map[k] for k in ("model.embed_tokens", "lm_head") if k in device_map},
        "weights_gib_per_gpu": [round(g, 2) for g in loaded_gib],
        "peak_allocated_gib_per_gpu": [round(g, 2) for g in peak_gib],
        "peak_reserved_gib_per_gpu": [round(g, 2) for g in reserved_gib],
        "llmkit_estimate": {"context": context, "total_gib": round(est["total_gib"], 2),
                            "per_gpu_gib": [round(g, 2) for g in est_split]},
        "estimate_over_measured_per_gpu": [round(e / p, 3) for e, p in zip(est_split, reserved_gib)],
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "generated_tokens": int(out.shape[1] - ids.shape[1]),
        "new_tokens_per_s_incl_prefill": round(args.new_tokens / gen_s, 2), "generate_s": round(gen_s, 2),
    }
    folder = Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "split72b_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
