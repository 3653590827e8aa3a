"""LoRA and QLoRA training steps on a full-shape, random-weight Qwen2-7B-Instruct: tokens/s and peak GPU memory,
compared with ``llmkit.finetune.train_memory.estimate_training``. Speed and memory do not depend on the weights' values.

Each configuration: LoRA r=8 on every linear layer (``target_modules="all-linear"``), AdamW, ``steps`` steps of
``batch`` x ``seq_len`` tokens after ``warmup`` steps; bf16 base (LoRA) or NF4 with double quantization and bf16
compute (QLoRA, ``prepare_model_for_kbit_training``); gradient checkpointing on and off.

    python benchmarks/lora_gpu.py            # on a CUDA machine; writes $OUT/lora_gpu.json
    python benchmarks/lora_gpu.py --tiny     # CPU smoke test of the code path on a 2-layer copy (LoRA only)
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import time
import traceback
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from llmkit.memory import shipped_config
from llmkit.finetune.train_memory import estimate_training

MODEL_ID = "Qwen/Qwen2-7B-Instruct"
GIB = 2**30


def write_checkpoint(out: Path, tiny: bool) -> Path:
    """A random-weight bf16 checkpoint with the published config (2 layers with --tiny)."""
    if (out / "config.json").exists():
        return out
    fields = shipped_config(MODEL_ID)
    config = AutoConfig.for_model(**{**fields, "num_hidden_layers": 2} if tiny else fields)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return out


def load(checkpoint: Path, method: str, checkpointing: bool):
    cuda = torch.cuda.is_available()
    if method == "lora":
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, device_map="cuda" if cuda else None)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    else:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map="cuda")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(checkpoint: Path, method: str, checkpointing: bool, batch: int, seq_len: int, steps: int,
            warmup: int) -> dict:
    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    model = load(checkpoint, method, checkpointing)
    load_s = time.perf_counter() - start
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=generator).to(model.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for step in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(round(loss.item(), 4))
    seconds = sum(times)
    row = {
        "method": method, "gradient_checkpointing": checkpointing, "batch": batch, "seq_len": seq_len,
        "steps_timed": steps, "warmup_steps": warmup, "load_s": round(load_s, 1), "trainable_params": trainable,
        "tokens_per_s": round(batch * seq_len * steps / seconds, 1), "step_s_median": round(sorted(times)[len(times) // 2], 4),
        "loss_first_last": [losses[0], losses[-1]],
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        row.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2),
                   device_used_now_gib=round((total - free) / GIB, 2))
    est = estimate_training(MODEL_ID, method, rank=8, seq_len=seq_len, batch=batch,
                            gradient_checkpointing=checkpointing, lora_dropout=0.05)
    row["estimate"] = {k: v for k, v in est.items() if k.endswith("_gib")}
    if cuda:  # the allocator never sees the CUDA context: compare it with the estimate minus that term
        allocator_estimate = est["total_gib"] - 0.5
        row["estimate_vs_peak_allocated_pct"] = round(100 * (allocator_estimate / row["peak_allocated_gib"] - 1), 1)
    del model, optimizer, loss
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/qwen2-7b-random"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="2 layers, CPU, LoRA only: checks the code path")
    args = parser.parse_args()
    if args.tiny:
        args.dir, args.batch, args.seq_len, args.steps, args.warmup = Path("/tmp/qwen2-2layer-random"), 1, 64, 2, 1
    checkpoint = write_checkpoint(args.dir, args.tiny)
    configs = [("lora", True), ("lora", False)] + ([] if args.tiny else [("qlora", True), ("qlora", False)])
    rows = []
    for method, checkpointing in configs:
        try:
            rows.append(measure(checkpoint, method, checkpointing, args.batch, args.seq_len, args.steps, args.warmup))
        except Exception as error:  # noqa: BLE001 - recorded in the results file, with the traceback
            rows.append({"method": method, "gradient_checkpointing": checkpointing,
                         "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]})
            gc.collect()
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1])[:600], flush=True)
    import bitsandbytes
    import peft
    import transformers

    data = {
        "date": datetime.date.today().isoformat(), "model": f"{MODEL_ID} (random weights, full shape)"
        + (" [tiny: 2 layers]" if args.tiny else ""),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "bitsandbytes": bitsandbytes.__version__, "python": platform.python_version()},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "optimizer": "AdamW"},
        "results": rows,
    }
    out = Path(os.environ.get("OUT", "benchmarks/results")) / ("lora_tiny_cpu.json" if args.tiny else "lora_gpu.json")
    out.write_text(json.dumps(data, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
