"""llama.cpp (llama-cpp-python) next to transformers on the same model: the cost of converting and quantizing to
GGUF, load time, prompt-eval (prefill) and eval (decode) tokens/s, flash attention on and off, and a sweep of how
many layers are offloaded to the GPU.

Every run is greedy with a fixed output length on the same prompt token ids (``llmkit.generation.bench``'s workload).
transformers' prefill rate is prompt tokens / time to first token, its decode rate the remaining tokens over the
remaining time; llama.cpp reports both itself (``llama_perf_context``).

    python benchmarks/gguf_gpu.py --dir /tmp/q7 --out $OUT/gguf_gpu.json   # CUDA: full-shape random Qwen2-7B
    (``--prepare-only`` first writes the checkpoint and the GGUF files and records how long that took)
    python benchmarks/gguf_gpu.py --standin --out /tmp/gguf_cpu.json        # CPU: the qwen2-chat stand-in

On the GPU, llama-cpp-python must be a CUDA build (``CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python``);
the script stops if it is not, instead of timing the CPU build by mistake.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import llmkit
from llmkit.deploy import gguf
from llmkit.generation.bench_engines import bench_llamacpp

# torch is imported only where it is used: the llama.cpp part runs in a process without it, because llama.cpp's
# CUDA build crashed (SIGSEGV) on the H100 in a process that had imported torch's CUDA libraries.
sys.path.insert(0, str(Path(__file__).parent))

MODEL_ID = "Qwen/Qwen2-7B-Instruct"
QUANTS = ("q5_k_m", "q4_k_m")


def rates(r, prompt_tokens: int) -> dict:
    """Prefill and decode tokens/s of a transformers ``BenchResult`` (one prompt)."""
    total = sorted(r.runs_s)[len(r.runs_s) // 2]
    ttft = r.time_to_first_token_s
    return {"prompt_eval_tokens_per_s": round(prompt_tokens / ttft, 1),
            "eval_tokens_per_s": round((r.new_tokens - 1) / (total - ttft), 1)}


def row(r, **extra) -> dict:
    """The fields of a ``BenchResult`` worth keeping, plus ``extra``."""
    return {"backend": r.backend, "tokens_per_s": r.tokens_per_s, "warm_up_s": r.warm_up_s, "runs_s": r.runs_s,
            "time_to_first_token_s": r.time_to_first_token_s, **r.details, **extra}


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two greedy outputs share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def timed(what: str, log: dict, fn, *args, **kwargs):
    """Run ``fn``, store its wall time under ``log[what]`` and print it."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    log[what] = round(time.perf_counter() - start, 1)
    print(f"{what}: {log[what]} s", flush=True)
    return out


def transformers_part(model_dir: Path, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    """The transformers row, with its greedy tokens for the comparison."""
    from llmkit.generation.bench import bench, workload
    from llmkit.loading import load

    seconds: dict = {}
    model, tokenizer = timed("transformers_load_s", seconds, load, str(model_dir))
    prompts = workload(tokenizer, prompts=1, prompt_tokens=prompt_tokens)
    r = bench(model, tokenizer, "hf", prompts, new_tokens, repeats)
    return {"row": row(r, engine="transformers", weights=str(model.dtype).removeprefix("torch."),
                       load_s=seconds["transformers_load_s"], **rates(r, prompt_tokens)),
            "prompts": prompts, "outputs": r.outputs, "tokenizer_dir": str(model_dir)}


def llamacpp_part(work: Path, hf: dict, new_tokens: int, repeats: int, gpu: bool) -> dict:
    """The llama.cpp rows and the offload sweep."""
    import llama_cpp

    if gpu and not llama_cpp.llama_supports_gpu_offload():
        sys.exit("this llama-cpp-python is a CPU build; rebuild it with CMAKE_ARGS='-DGGML_CUDA=on'")
    files = {name: work / f"model-{name}.gguf" for name in ("f16", *QUANTS)}
    prompts, rows, errors = hf["prompts"], [], {}
    for name, options in [(name, {"flash_attn": True}) for name in files] + [("q4_k_m", {"flash_attn": False})]:
        try:
            r = bench_llamacpp(files[name], prompts, new_tokens, repeats, **options)
            rows.append(row(r, engine="llama.cpp", weights=name, file_gib=round(files[name].stat().st_size / 2**30, 2),
                            same_greedy_prefix_as_transformers=same_prefix(r.outputs[0], hf["outputs"][0])))
        except Exception:  # keep the other rows; the JSON says which one failed and why
            errors[f"{name} {options}"] = traceback.format_exc(limit=3)
    metadata = llama_cpp.Llama(model_path=str(files["q4_k_m"]), vocab_only=True, verbose=False).metadata
    n_layers = int(metadata["qwen2.block_count"])
    short = [prompts[0][:len(prompts[0]) // 4]]
    sweep = []
    for offload in sorted({0, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers}):
        r = bench_llamacpp(files["q4_k_m"], short, new_tokens // 4, 1, n_gpu_layers=offload)
        sweep.append({"n_gpu_layers": offload, "of_layers": n_layers, "load_s": r.details["load_s"],
                      "prompt_eval_tokens_per_s": r.details["prompt_eval_tokens_per_s"],
                      "eval_tokens_per_s": r.details["eval_tokens_per_s"]})
        print(sweep[-1], flush=True)
    return {"rows": rows, "offload_sweep": sweep, "errors": errors,
            "llama_cpp_python": llama_cpp.__version__}


def prepare(work: Path, model_dir: Path, standin: bool) -> dict:
    """Write the checkpoint (GPU), convert it to an f16 GGUF and quantize that; the seconds each step took are kept
    in ``work/preparation.json`` so that a later run (``--prepare-only`` first, then the timing) reports them."""
    work.mkdir(parents=True, exist_ok=True)
    from load_memory_gpu import write_random_checkpoint  # (reused, not copied)

    record = work / "preparation.json"
    seconds = json.loads(record.read_text()) if record.exists() else {}
    if not standin and not (model_dir / "config.json").exists():
        timed("write_random_checkpoint_s", seconds, write_random_checkpoint, MODEL_ID, model_dir)
    f16 = work / "model-f16.gguf"
    if not f16.exists():
        timed("convert_f16_s", seconds, gguf.convert, model_dir, f16, outtype="f16")
    for quant in QUANTS:
        if not (work / f"model-{quant}.gguf").exists():
            timed(f"quantize_{quant}_s", seconds, gguf.quantize, f16, work / f"model-{quant}.gguf", quant)
    record.write_text(json.dumps(seconds, indent=2))
    return seconds


def in_subprocess(part: str, args, extra: list[str]) -> dict:
    """Run one part in its own process: llama.cpp's CUDA libraries and torch's crashed when they shared one."""
    out = args.dir / f"part-{part}.json"
    cmd = [sys.executable, __file__, "--part", part, "--dir", str(args.dir), "--out", str(out), *extra]
    subprocess.run(cmd + (["--standin"] if args.standin else []), check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/gguf-bench"), help="work folder (checkpoint, GGUFs)")
    parser.add_argument("--standin", action="store_true", help="CPU: the qwen2-chat stand-in, small workload")
    parser.add_argument("--part", choices=["transformers", "llamacpp"], help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-only", action="store_true", help="checkpoint and GGUF files only, no timing")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    prompt_tokens, new_tokens, repeats = (64, 32, 2) if args.standin else (1024, 256, 3)
    model_dir = Path(llmkit.standin_path("qwen2-chat")) if args.standin else args.dir / "hf"
    if args.part == "transformers":
        args.out.write_text(json.dumps(transformers_part(model_dir, prompt_tokens, new_tokens, repeats)))
        return
    if args.part == "llamacpp":
        hf = json.loads((args.dir / "part-transformers.json").read_text())
        args.out.write_text(json.dumps(llamacpp_part(args.dir, hf, new_tokens, repeats, args.gpu)))
        return

    import torch

    cuda = torch.cuda.is_available()

    seconds = prepare(args.dir, model_dir, args.standin)
    if args.prepare_only:
        return
    hf = in_subprocess("transformers", args, [])
    engine = in_subprocess("llamacpp", args, ["--gpu"] if cuda else [])
    report = {
        "what": "llama.cpp GGUF (f16, q5_k_m, q4_k_m) next to transformers on the same model: load, prompt-eval, eval",
        "model": "stand-in qwen2-chat" if args.standin else f"{MODEL_ID} config, random weights (full shape)",
        "workload": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats, "greedy": True},
        "machine": {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                    "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                    "llama_cpp_python": engine["llama_cpp_python"], "llmkit": llmkit.__version__,
                    "python": platform.python_version()},
        "date": datetime.date.today().isoformat(),
        "preparation_s": seconds,
        "runs": [hf["row"], *engine["rows"]], "offload_sweep": engine["offload_sweep"], "errors": engine["errors"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
