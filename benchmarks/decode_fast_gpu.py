"""Decode speed of the transformers backends of ``llmkit.generation.bench`` on full-shape random-weight models, against the
memory-bandwidth limit measured in the same run (weight bytes read per decode step / device copy bandwidth).

One backend per process (a hung compile or capture cannot take the others down; run each under ``timeout``):
    python benchmarks/decode_fast_gpu.py --model qwen2-72b-gptq --dir /tmp/q72 --backend hf-cb
    python benchmarks/decode_fast_gpu.py --model qwen2-7b --dir /tmp/q7 --backend hf --workload
writes ``$OUT/decode_<model>_<backend>.json``; ``merge`` joins them into one file:
    python benchmarks/decode_fast_gpu.py merge --into benchmarks/results/decode_fast_h100.json $OUT/decode_*.json
Checkpoints are written first when missing (``write``). On CPU the same code runs on the stand-ins (``--standin``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gptq72b_gpu import model_bytes, write_random_gptq_checkpoint  # noqa: E402  (reused, not copied)
from load_memory_gpu import copy_bandwidth_gbs, write_random_checkpoint  # noqa: E402

import llmkit  # noqa: E402
from llmkit.generation.bench import bench, workload  # noqa: E402

MODELS = {"qwen2-7b": "Qwen/Qwen2-7B-Instruct", "qwen2-72b-gptq": "Qwen/Qwen2-72B-Instruct-GPTQ-Int4"}
STANDINS = {"qwen2-7b": "qwen2-chat", "qwen2-72b-gptq": "qwen2-gptq-int4"}


def write(model: str, path: Path) -> dict:
    """Write the random full-shape checkpoint of ``model`` to ``path`` unless it is there."""
    start = time.perf_counter()
    if model == "qwen2-72b-gptq":
        write_random_gptq_checkpoint(path, backend=None)  # llmkit.load chooses the kernel (Marlin on Hopper)
    else:
        write_random_checkpoint(MODELS[model], path)
    return {"write_s": round(time.perf_counter() - start, 1)}


def run(model: str, path: Path, backend: str, batch1_tokens: int, with_workload: bool, compile_mode: str) -> dict:
    cuda = torch.cuda.is_available()
    bandwidth = copy_bandwidth_gbs() if cuda else None
    start = time.perf_counter()
    loaded, tokenizer = llmkit.load(str(path))
    load_s = time.perf_counter() - start
    sizes = model_bytes(loaded) if cuda else None
    result = {"date": datetime.date.today().isoformat(), "model": MODELS[model], "backend": backend,
              "weights": "random (full shape)" if cuda else f"stand-in {STANDINS[model]}",
              "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
              "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                           "llmkit": llmkit.__version__, "python": platform.python_version()},
              "kernel": type(loaded.model.layers[0].self_attn.q_proj).__name__, "dtype": str(loaded.dtype),
              "load_s": round(load_s, 1), "compile_mode": compile_mode}
    if cuda:
        result["copy_bandwidth_gb_s"] = round(bandwidth, 1)
        result["bytes_per_step"] = sizes["total_bytes"]
        result["bandwidth_limit_steps_per_s"] = round(bandwidth * 1e9 / sizes["total_bytes"], 1)
    runs = {"batch1": (workload(tokenizer, 1, 64), batch1_tokens)}
    if with_workload:
        runs["workload_25x64_128"] = (workload(tokenizer, 25, 64), 128)
    for name, (prompts, new_tokens) in runs.items():
        try:
            measured = bench(loaded, tokenizer, backend, prompts, new_tokens=new_tokens, compile_mode=compile_mode).to_dict()
        except Exception as error:  # recorded in the JSON: a backend that fails on this machine is a result too
            measured = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        if cuda and "tokens_per_s" in measured:
            steps_per_s = measured["tokens_per_s"] / measured["prompts"]
            measured["fraction_of_limit"] = round(steps_per_s / result["bandwidth_limit_steps_per_s"], 3)
        result[name] = measured
        print(name, json.dumps(measured)[:600], flush=True)
    return result


def merge(into: Path, parts: list[Path]) -> None:
    """Join per-backend JSON files into one, keyed by model then backend."""
    merged = json.loads(into.read_text()) if into.exists() else {}
    for part in parts:
        data = json.loads(part.read_text())
        key = data["backend"] if data.get("run", "first start") == "first start" else f"{data['backend']} ({data['run']})"
        merged.setdefault(data["model"], {})[key] = data
    into.write_text(json.dumps(merged, indent=2, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", nargs="?", default="run", choices=["run", "write", "merge"])
    parser.add_argument("parts", nargs="*", type=Path)
    parser.add_argument("--model", choices=sorted(MODELS), default="qwen2-7b")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--batch1-tokens", type=int, default=256)
    parser.add_argument("--workload", action="store_true", help="also the 25 prompts x 64 tokens in, 128 out workload")
    parser.add_argument("--standin", action="store_true", help="CPU smoke test on the stand-in instead of --dir")
    parser.add_argument("--into", type=Path)
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for hf-graph-compile")
    parser.add_argument("--tag", default="", help="suffix of the output file and key, e.g. 'second-start'")
    args = parser.parse_intermixed_args()
    if args.step == "merge":
        merge(args.into, args.parts)
        return
    if args.standin:
        from llmkit.standins import standin_path

        args.dir = standin_path(STANDINS[args.model])
    elif args.step == "write" or not (args.dir / "config.json").exists():
        print(json.dumps(write(args.model, args.dir)), flush=True)
        if args.step == "write":
            return
    result = run(args.model, args.dir, args.backend, args.batch1_tokens, args.workload, args.compile_mode)
    result["run"] = args.tag or "first start"
    name = f"{args.backend}-{args.tag}" if args.tag else args.backend
    out = Path(os.environ.get("OUT", "/tmp")) / f"decode_{args.model}_{name}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
