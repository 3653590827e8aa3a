"""LoRA fine-tuning as a script, on one GPU or several: notebook 06's settings, ``transformers.Trainer`` + peft.

The same file runs under every launcher; ``Trainer`` (through accelerate) sees ``WORLD_SIZE`` / ``RANK`` and wraps
the model in PyTorch DDP (NCCL on GPUs, gloo on the CPU)::

    python -m llmkit.finetune.train_lora --model Qwen/Qwen2-7B-Instruct --data DATA_DIR --out lora-out
    torchrun --nproc_per_node 2 -m llmkit.finetune.train_lora --model Qwen/Qwen2-7B-Instruct --data DATA_DIR --out lora-out
    accelerate launch --num_processes 2 -m llmkit.finetune.train_lora --model Qwen/Qwen2-7B-Instruct --data DATA_DIR --out lora-out

``--global-batch-size`` is the number of sequences per optimizer step, whatever the number of processes:
per-device batch x gradient accumulation x world size. Two GPUs then do half the accumulation steps each, every
optimizer step sees the same sequences as on one GPU (accelerate shards the batches of one seeded order), and
the loss curves of 1 and N GPUs can be compared step by step. Only the main process prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from llmkit.errors import BadInput

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_WORDS = ("模型 数据 训练 学习 梯度 batch token layer adapter rank alpha GPU 显存 速度 损失 loss step "
          "question answer 你好 世界 course llmkit Qwen LoRA 参数 优化 scheduler cosine warmup").split()


def world_size() -> int:
    """Processes in this run, as the launcher (torchrun, accelerate launch) announces it; 1 for plain python.

    >>> os.environ.pop("WORLD_SIZE", None); world_size()
    1
    """
    return int(os.environ.get("WORLD_SIZE", "1"))


def split_batch(global_batch: int, per_device: int, processes: int) -> int:
    """Gradient accumulation steps that make ``per_device`` x accumulation x ``processes`` = ``global_batch``.

    >>> split_batch(32, 4, 1), split_batch(32, 4, 2)
    (8, 4)
    >>> split_batch(32, 4, 3)
    Traceback (most recent call last):
    ...
    llmkit.errors.BadInput: --global-batch-size 32 is not a multiple of per-device batch 4 x 3 process(es) = 12: ...
    """
    step = per_device * processes
    if global_batch < step or global_batch % step:
        raise BadInput(f"--global-batch-size {global_batch} is not a multiple of per-device batch {per_device} x "
                       f"{processes} process(es) = {step}: choose a global batch that is (or a smaller "
                       "--per-device-batch-size), so that 1 and N GPUs train on the same batches")
    return global_batch // step


def synthetic_records(n: int, seed: int = 0, words: int = 400) -> list[dict]:
    """``n`` alpaca records of random words (fixed ``seed``): data for speed runs, where content does not matter.

    >>> synthetic_records(2)[0].keys(), synthetic_records(2) == synthetic_records(2)
    (dict_keys(['instruction', 'input', 'output']), True)
    """
    rng = random.Random(seed)
    return [{"instruction": " ".join(rng.choices(_WORDS, k=4)), "input": "",
             "output": " ".join(rng.choices(_WORDS, k=words))} for _ in range(n)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (defaults: notebook 06 on a real model).

    >>> parse_args(["--model", "m", "--synthetic", "8", "--out", "o"]).global_batch_size
    16
    """
    p = argparse.ArgumentParser(prog="python -m llmkit.finetune.train_lora", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="Qwen/Qwen2-7B-Instruct",
                   help="model id (found with llmkit.hub.locate; a stand-in when LLMKIT_STANDIN=1) or folder")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="alpaca dataset folder with dataset_info.json (llmkit.finetune.sft_data)")
    data.add_argument("--synthetic", type=int, metavar="N", help="N synthetic records (fixed seed) instead of --data")
    p.add_argument("--dataset", default="identity", help="dataset name in dataset_info.json")
    p.add_argument("--out", required=True, help="output folder; one with checkpoints is resumed from")
    p.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument("--random-init", action="store_true",
                   help="random weights from the model's config.json (benchmarks on a machine without weights)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-target", default="all",
                   help='"all" (every linear layer but the LM head) or a comma-separated list of module names')
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1, help="> 0 overrides --epochs")
    p.add_argument("--global-batch-size", type=int, default=16, help="sequences per optimizer step, all processes")
    p.add_argument("--per-device-batch-size", type=int, default=2)
    p.add_argument("--cutoff-len", type=int, default=1024)
    p.add_argument("--warmup-steps", type=int, default=5, help="learning-rate warm-up (cosine schedule)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="auto: on where the GPU has bf16")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--no-cuda", action="store_true", help="train on the CPU (DDP over gloo)")
    p.add_argument("--skip-timing-steps", type=int, default=2, help="first steps left out of tokens/s (warm-up)")
    p.add_argument("--report-json", help="write losses and throughput here (main process only)")
    return p.parse_args(argv)


def target_modules(lora_target: str):
    """peft ``target_modules`` for LLaMA-Factory's ``lora_target`` (``llmkit.finetune.llamafactory.LoraSettings``).

    >>> target_modules("all"), target_modules("q_proj, v_proj")
    ('all-linear', ['q_proj', 'v_proj'])
    """
    return "all-linear" if lora_target == "all" else [m.strip() for m in lora_target.split(",") if m.strip()]


def load_model(path: str, random_init: bool, dtype, device=None):
    """A causal LM from ``path``: its weights, or with ``random_init`` random weights from its config.json.

    >>> load_model(standin_path("qwen2-chat"), True, torch.float32).config.model_type  # doctest: +SKIP
    'qwen2'
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not random_init:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    torch.manual_seed(0)  # the same weights on every rank and every run (DDP also broadcasts rank 0's)
    with torch.device(device or "cpu"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)


def resolve_model(model: str, random_init: bool) -> str:
    """Folder of ``model``: ``llmkit.pick_model`` (stand-in mode) then ``llmkit.hub.locate``; a folder with only
    a config.json and a tokenizer is enough for ``random_init``.

    >>> resolve_model("/no/such/model", False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    llmkit.hub.locating.ModelNotFound: model '/no/such/model' is not on this machine. ...
    """
    from llmkit.hub import locate
    from llmkit.pick import pick_model

    found = locate(pick_model(model))
    if not random_init and not found.report["ok"]:
        raise BadInput(f"{found.path} is incomplete: {'; '.join(found.report['problems'])}")
    return str(found.path)


def run(argv: list[str] | None = None) -> dict:
    """Train; returns the report (also written to ``--report-json`` by the main process).

    >>> run(["--model", "Qwen/Qwen2-7B-Instruct", "--data", "data", "--out", "lora-out"])  # doctest: +SKIP
    {'world_size': 1, 'losses': [...], 'tokens_per_s': ...}
    """
    start = time.perf_counter()
    a = parse_args(argv)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from llmkit.chat import IGNORE_INDEX
    from llmkit.finetune.sft import prepare_output_dir, tokenized_rows
    from llmkit.finetune.sft_data import load_alpaca

    processes = world_size()
    accumulation = split_batch(a.global_batch_size, a.per_device_batch_size, processes)
    cuda = torch.cuda.is_available() and not a.no_cuda
    bf16 = a.bf16 == "on" or (a.bf16 == "auto" and cuda and torch.cuda.is_bf16_supported())
    args = TrainingArguments(
        output_dir=a.out, max_steps=a.max_steps, num_train_epochs=a.epochs, learning_rate=a.learning_rate,
        per_device_train_batch_size=a.per_device_batch_size, gradient_accumulation_steps=accumulation,
        lr_scheduler_type="cosine", warmup_steps=a.warmup_steps, logging_steps=a.logging_steps,
        save_steps=a.save_steps, save_total_limit=2, bf16=bf16, activation_checkpointing=a.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False}, ddp_find_unused_parameters=False,
        use_cpu=not cuda, report_to="none", seed=a.seed, data_seed=a.seed, disable_tqdm=True,
        dataloader_num_workers=0, include_num_input_tokens_seen="non_padding")
    if args.world_size != processes:
        raise BadInput(f"WORLD_SIZE says {processes} processes but the trainer sees {args.world_size}")
    main = args.process_index == 0
    with args.main_process_first(local=False, desc="output folder"):  # rank 0 clears / checks it first
        resume_from = prepare_output_dir(a.out, overwrite=a.overwrite and main)
    path = resolve_model(a.model, a.random_init)
    tokenizer = AutoTokenizer.from_pretrained(path)
    records = synthetic_records(a.synthetic, a.seed) if a.synthetic else load_alpaca(a.data, a.dataset)
    dataset = tokenized_rows(records, tokenizer, cutoff_len=a.cutoff_len)  # a list: no `datasets` needed
    dtype = torch.bfloat16 if bf16 else torch.float32
    set_seed(a.seed)  # the LoRA A matrices start random: the same start on 1 and N processes
    model = load_model(path, a.random_init, dtype, args.device if cuda else None)
    model = get_peft_model(model, LoraConfig(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                                             target_modules=target_modules(a.lora_target), task_type="CAUSAL_LM"))
    clock = StepClock(a.skip_timing_steps, cuda)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[clock],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX))
    if trainer.is_world_process_zero():
        print(f"[train_lora] {processes} process(es) x per-device batch {a.per_device_batch_size} x accumulation "
              f"{accumulation} = global batch {a.global_batch_size}; bf16={bf16}; device={args.device}; "
              f"resume from {resume_from or 'nothing'}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model()
    report = {
        "world_size": processes, "device": torch.cuda.get_device_name(args.device) if cuda else "cpu",
        "global_batch_size": a.global_batch_size, "per_device_batch_size": a.per_device_batch_size,
        "gradient_accumulation_steps": accumulation, "bf16": bf16, "steps": trainer.state.global_step,
        "losses": [{"step": row["step"], "loss": row["loss"]} for row in trainer.state.log_history if "loss" in row],
        "train_runtime_s": result.metrics.get("train_runtime"), **clock.throughput(a.global_batch_size),
        "wall_s": round(time.perf_counter() - start, 2), "settings": vars(a), "model_path": path,
    }
    if trainer.is_world_process_zero():
        print("[train_lora] " + json.dumps({k: v for k, v in report.items() if k not in ("losses", "settings")}),
              flush=True)
        if a.report_json:
            Path(a.report_json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.report_json).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return report


class StepClock(TrainerCallback):
    """Wall time and tokens seen at the end of every optimizer step; the first ``skip`` steps are warm-up.

    >>> StepClock(skip=1).throughput(global_batch=8)
    {'timed_steps': 0, 'tokens_per_s': None, 'samples_per_s': None}
    """

    def __init__(self, skip: int = 2, cuda: bool = False):
        self.skip, self.cuda, self.marks = skip, cuda, []

    def on_step_end(self, args, state, control, **kwargs):
        """Record (step, time, tokens seen by all processes) once the step's work is done."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.marks.append((state.global_step, time.perf_counter(), state.num_input_tokens_seen))

    def throughput(self, global_batch: int) -> dict:
        """tokens/s and samples/s over the steps after the warm-up ones (None when too few steps ran).

        >>> clock = StepClock(skip=0); clock.marks = [(1, 0.0, 100), (3, 2.0, 500)]
        >>> clock.throughput(global_batch=4)
        {'timed_steps': 2, 'tokens_per_s': 200.0, 'samples_per_s': 4.0}
        """
        marks = self.marks[self.skip:]
        if len(marks) < 2:
            return {"timed_steps": 0, "tokens_per_s": None, "samples_per_s": None}
        (step0, t0, tok0), (step1, t1, tok1) = marks[0], marks[-1]
        return {"timed_steps": step1 - step0, "tokens_per_s": round((tok1 - tok0) / (t1 - t0), 1),
                "samples_per_s": round((step1 - step0) * global_batch / (t1 - t0), 2)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m llmkit.finetune.train_lora``; a refusal prints its reason and returns 2.

    >>> main(["--model", "m", "--synthetic", "4", "--out", "lora-out", "--global-batch-size", "3"])
    [train_lora] refused: --global-batch-size 3 is not a multiple of per-device batch 2 x 1 process(es) = 2: ...
    2
    """
    try:
        run(argv)
    except (BadInput, LookupError) as error:
        print(f"[train_lora] refused: {error}", file=sys.stdout, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
