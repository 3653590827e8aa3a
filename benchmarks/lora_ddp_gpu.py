"""LoRA on 1 and 2 GPUs with DDP (``llmkit.finetune.train_lora``, 2 GPUs started by ``torchrun`` and by ``accelerate
launch``): same global batch, loss curves compared step by step (2 GPUs against 1, accelerate against torchrun),
tokens/s and the scaling 2 GPUs / 1 GPU. Random weights with Qwen2-7B-Instruct's published config (speed does not
depend on the weights' values), synthetic alpaca records cut to ``--seq-len`` tokens.

    PYTHONPATH=$PWD python benchmarks/lora_ddp_gpu.py          # 2 GPUs; writes benchmarks/results/lora_ddp_h200x2.json + .png
    python benchmarks/lora_ddp_gpu.py --cpu --out /tmp/ddp.json  # CPU check of the logic: gloo, tiny config, 2 processes

NVLink multicast stays off in every run (NCCL_NVLS_ENABLE=0 and friends are set in the runs' environment).
Needs torch, transformers, peft, accelerate; matplotlib for the plot (skipped, and said so in the JSON, without it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "Qwen/Qwen2-7B-Instruct"
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def write_model_dir(folder: Path, tiny: bool) -> Path:
    """config.json (Qwen2-7B-Instruct's, or a tiny one) and the offline Qwen2 tokenizer: enough for --random-init.

    >>> (write_model_dir(Path(tempfile.mkdtemp()), tiny=True) / "config.json").is_file()  # doctest: +SKIP
    True
    """
    from transformers import AutoConfig

    from llmkit.memory import shipped_config
    from llmkit.standins.tokenizer import build_qwen2_tokenizer

    fields = shipped_config(MODEL_ID)
    AutoConfig.for_model(**{**fields, **TINY} if tiny else fields).save_pretrained(folder)
    build_qwen2_tokenizer().save_pretrained(folder)
    return folder


def launcher(name: str, processes: int) -> list[str]:
    """The command that starts ``processes`` training processes: ``torchrun`` or ``accelerate launch`` (the README's).

    >>> launcher("accelerate", 2)[2:5]
    ['accelerate.commands.launch', '--multi_gpu', '--num_processes']
    """
    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    # precision and compilation are train_lora's own flags (--bf16), so accelerate's stay off
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def train(processes: int, model_dir: Path, work: Path, s: dict, cpu: bool, start: str = "torchrun") -> dict:
    """One ``START -m llmkit.finetune.train_lora`` run on ``processes`` processes (``start``: torchrun or accelerate).

    >>> train(2, Path("/tmp/m"), Path("/tmp/w"), SETTINGS_GPU, cpu=False, start="accelerate")  # doctest: +SKIP
    {'world_size': 2, 'launcher': 'accelerate', ...}
    """
    report = work / f"report-{processes}-{start}.json"
    command = [*launcher(start, processes), "-m", "llmkit.finetune.train_lora", "--model", str(model_dir),
               "--random-init",
               "--synthetic", str(s["global_batch_size"] * s["steps"]), "--out", str(work / f"out-{processes}-{start}"),
               "--overwrite", "--max-steps", str(s["steps"]), "--global-batch-size", str(s["global_batch_size"]),
               "--per-device-batch-size", str(s["per_device_batch_size"]), "--cutoff-len", str(s["seq_len"]),
               "--lora-rank", str(s["lora_rank"]), "--lora-alpha", str(s["lora_alpha"]), "--lora-dropout", "0",
               "--lora-target", "all", "--learning-rate", str(s["learning_rate"]), "--warmup-steps", "2",
               "--save-steps", "1000000", "--logging-steps", "1", "--skip-timing-steps", str(s["warmup_steps"]),
               "--bf16", "off" if cpu else "on", "--seed", "0", "--report-json", str(report)]
    command += ["--no-cuda"] if cpu else []
    env = {**os.environ, **NO_MULTICAST, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not cpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(processes)))
    print("$", " ".join(command), flush=True)
    began = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, text=True, capture_output=True)
    if done.returncode:
        raise RuntimeError(f"{processes}-process {start} run failed ({done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-4000:]}")
    print("\n".join(line for line in done.stdout.splitlines() if line.startswith("[train_lora]")), flush=True)
    return {**json.loads(report.read_text(encoding="utf-8")), "launcher": start,
            "launcher_wall_s": round(time.perf_counter() - began, 1)}


def compare(one: dict, two: dict, rel_tol: float, min_scaling: float | None) -> dict:
    """Loss curves' largest differences, scaling of tokens/s, and pass/fail.

    >>> r1 = {"losses": [{"step": 1, "loss": 2.0}], "tokens_per_s": 100.0}
    >>> r2 = {"losses": [{"step": 1, "loss": 2.01}], "tokens_per_s": 190.0}
    >>> compare(r1, r2, rel_tol=0.01, min_scaling=1.8)["pass"]
    True
    """
    a = {row["step"]: row["loss"] for row in one["losses"]}
    b = {row["step"]: row["loss"] for row in two["losses"]}
    steps = sorted(set(a) & set(b))
    abs_diff = max(abs(a[k] - b[k]) for k in steps)
    rel_diff = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in steps)
    scaling = round(two["tokens_per_s"] / one["tokens_per_s"], 3)
    loss_ok = len(steps) == len(a) == len(b) and rel_diff <= rel_tol
    scaling_ok = None if min_scaling is None else scaling >= min_scaling
    return {"steps_compared": len(steps), "loss_max_abs_diff": abs_diff, "loss_max_rel_diff": rel_diff,
            "loss_rel_tolerance": rel_tol, "loss_pass": loss_ok, "scaling": scaling, "scaling_min": min_scaling,
            "scaling_pass": scaling_ok, "pass": loss_ok and scaling_ok is not False}


def plot(runs: list[dict], path: Path) -> str | None:
    """Loss curves of the runs (1 GPU first) and their tokens/s as bars, saved as a PNG; else why it cannot be drawn.

    >>> plot([one, two, two_accelerate], Path("/tmp/x.png"))  # doctest: +SKIP
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        return f"no plot: {error}"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    names = [f"{r['world_size']} GPU{'s' if r['world_size'] > 1 else ''}, {r['launcher']}" for r in runs]
    for report, name, style in zip(runs, names, ("-", "--", ":")):
        left.plot([r["step"] for r in report["losses"]], [r["loss"] for r in report["losses"]], style,
                  label=f"{name} (accumulation {report['gradient_accumulation_steps']})")
    left.set(xlabel="optimizer step", ylabel="training loss",
             title=f"same global batch {runs[0]['global_batch_size']}")
    left.legend()
    right.bar([n.replace(", ", "\n") for n in names], [r["tokens_per_s"] for r in runs],
              color=["tab:blue", "tab:orange", "tab:green"][:len(runs)])
    right.set(ylabel="tokens/s", title=f"scaling {runs[1]['tokens_per_s'] / runs[0]['tokens_per_s']:.2f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


def machine(cpu: bool) -> dict:
    """GPU name and count from nvidia-smi (the CPU in --cpu mode).

    >>> machine(cpu=True)["count"]
    0
    """
    if cpu or not shutil.which("nvidia-smi"):
        return {"name": platform.processor() or platform.machine(), "count": 0, "cpus": os.cpu_count()}
    names = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True).stdout.strip().splitlines()
    return {"name": names[0].split(",")[0].strip() if names else "?", "count": len(names), "gpus": names,
            "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> dict:
    """Run both trainings and write the JSON (and PNG beside it).

    >>> main(["--cpu", "--out", "/tmp/lora_ddp_cpu.json"])  # doctest: +SKIP
    {...}
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="gloo on the CPU, tiny config: checks the logic")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lora_ddp_h200x2.json")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of tokens/s")
    p.add_argument("--global-batch-size", type=int, default=64)
    p.add_argument("--per-device-batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    a = p.parse_args(argv)
    if a.cpu:
        a.steps, a.warmup_steps, a.global_batch_size, a.per_device_batch_size, a.seq_len = 4, 1, 4, 2, 64
    s = {"model": f"{MODEL_ID} config, random weights" + (" [tiny: 2 layers, hidden 64]" if a.cpu else ""),
         "steps": a.steps, "warmup_steps": a.warmup_steps, "global_batch_size": a.global_batch_size,
         "per_device_batch_size": a.per_device_batch_size, "seq_len": a.seq_len, "lora_rank": 8, "lora_alpha": 16,
         "lora_dropout": 0.0, "lora_target": "all-linear", "learning_rate": 1e-4, "dtype": "fp32" if a.cpu else "bf16",
         "gradient_checkpointing": False, "launchers": ["torchrun --standalone", "accelerate launch --multi_gpu"],
         "env": NO_MULTICAST}
    # bf16 autocast on 1 vs 2 GPUs sums the gradients in another order: differences of bf16 rounding, which
    # Adam carries forward; fp32 on the CPU agrees to float rounding.
    rel_tol, min_scaling = (1e-4, None) if a.cpu else (0.02, 1.8)
    import accelerate
    import peft
    import torch
    import transformers

    with tempfile.TemporaryDirectory(prefix="lora-ddp-") as tmp:
        work = Path(tmp)
        model_dir = write_model_dir(work / "model", tiny=a.cpu)
        one = train(1, model_dir, work, s, a.cpu)
        two = train(2, model_dir, work, s, a.cpu)
        two_accelerate = train(2, model_dir, work, s, a.cpu, start="accelerate")
    by_accelerate = compare(two, two_accelerate, rel_tol, None)
    result = {
        "date": datetime.date.today().isoformat(), "machine": machine(a.cpu),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "accelerate": accelerate.__version__, "python": platform.python_version()},
        "settings": s, **compare(one, two, rel_tol, min_scaling),
        "accelerate_vs_torchrun": {k: by_accelerate[k] for k in ("steps_compared", "loss_max_abs_diff",
                                                                  "loss_max_rel_diff", "loss_pass", "scaling")},
        "tokens_per_s": {"1": one["tokens_per_s"], "2": two["tokens_per_s"],
                         "2-accelerate": two_accelerate["tokens_per_s"]},
        "losses": {"1": [r["loss"] for r in one["losses"]], "2": [r["loss"] for r in two["losses"]],
                   "2-accelerate": [r["loss"] for r in two_accelerate["losses"]]},
        "runs": {name: {k: v for k, v in r.items() if k not in ("losses", "settings")}
                 for name, r in (("1", one), ("2", two), ("2-accelerate", two_accelerate))},
    }
    result["pass"] = result["pass"] and by_accelerate["loss_pass"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    png = a.out.with_suffix(".png")
    result["plot"] = plot([one, two, two_accelerate], png) or png.name
    a.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("machine", "loss_max_rel_diff", "accelerate_vs_torchrun", "tokens_per_s",
                                             "scaling", "pass")}))
    print("wrote", a.out)
    return result


if __name__ == "__main__":
    main()
