"""Which imports and settings make llama-cpp-python's CUDA build crash when it loads a model (notebook 09 on the
GPU machine: a segmentation fault in libggml-cuda). Each variant runs in its own process: it imports what the
variant names, loads the GGUF with all layers on the GPU and generates 4 tokens; the exit code and the last
lines of a fault are recorded in JSON.

    python benchmarks/llamacpp_crash_probe.py model-f16.gguf --out $OUT/llamacpp_crash_probe.json
    python benchmarks/llamacpp_crash_probe.py model-f16.gguf --only after --out ...   # variants whose name has "after"
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

LOAD = ("llm = llama_cpp.Llama(model_path={path!r}, n_ctx=512, n_gpu_layers={layers}, flash_attn={flash}, "
        "use_mmap={mmap}, verbose=False); print(llm('Hi', max_tokens=4)['choices'][0]['text'] is not None)")
NOTEBOOK_09_IMPORTS = "import matplotlib.pyplot; import llmkit; from llmkit.deploy import gguf; llmkit.pick_model('Qwen/Qwen2-7B-Instruct')"
# notebook 09's kernel died at its first figure, after the models were loaded and closed (GPU_NOTES.md, 2026-12-04)
FIGURE = ("import matplotlib.pyplot as plt; fig, ax = plt.subplots(); ax.bar(['a', 'b'], [1.0, 2.0]); "
          "fig.savefig('/tmp/llamacpp_probe.png'); print(True)")
FFT = "import numpy.fft; print(len(numpy.fft.fft([1.0, 2.0])) == 2)"  # a C++ extension that numpy loads only on use
# name: (imports before the load, extra environment, load settings; "after": code run after the load)
VARIANTS = {
    "llama_cpp only": ("import llama_cpp", {}, {}),
    "llama_cpp, then numpy": ("import llama_cpp; import numpy", {}, {}),
    "numpy, then llama_cpp": ("import numpy; import llama_cpp", {}, {}),
    "llama_cpp, then numpy; GGML_CUDA_NO_PINNED=1": ("import llama_cpp; import numpy", {"GGML_CUDA_NO_PINNED": "1"}, {}),
    "llama_cpp, then numpy; n_gpu_layers=0": ("import llama_cpp; import numpy", {}, {"layers": 0}),
    "llama_cpp, then numpy; use_mmap=False": ("import llama_cpp; import numpy", {}, {"mmap": False}),
    "llama_cpp, then numpy; GGML_CUDA_DISABLE_GRAPHS=1": ("import llama_cpp; import numpy", {"GGML_CUDA_DISABLE_GRAPHS": "1"}, {}),
    "llama_cpp, then numpy; OMP_NUM_THREADS=1": ("import llama_cpp; import numpy", {"OMP_NUM_THREADS": "1"}, {}),
    "notebook 09's imports": (f"import llama_cpp; {NOTEBOOK_09_IMPORTS}", {}, {}),
    "notebook 09's imports; GGML_CUDA_NO_PINNED=1": (f"import llama_cpp; {NOTEBOOK_09_IMPORTS}", {"GGML_CUDA_NO_PINNED": "1"}, {}),
    "notebook 09's imports, a figure after the load": (f"import llama_cpp; {NOTEBOOK_09_IMPORTS}", {}, {"after": FIGURE}),
    "notebook 09's imports, a figure after close()": (f"import llama_cpp; {NOTEBOOK_09_IMPORTS}", {},
                                                       {"after": f"llm.close(); {FIGURE}"}),
    # what the llama.cpp kernel's launcher does since that crash (llmkit/deploy/llamacpp_kernel.py)
    "Agg before the load, a figure after the load": (f"import llama_cpp; import matplotlib.backends.backend_agg; "
                                                     f"{NOTEBOOK_09_IMPORTS}", {}, {"after": FIGURE}),
    # another C++ extension first loaded after the load (numpy's FFT): is it Agg, or any native library loaded late?
    "notebook 09's imports, numpy's C++ FFT after the load": (f"import llama_cpp; {NOTEBOOK_09_IMPORTS}", {}, {"after": FFT}),
}


def run_variant(gguf: Path, imports: str, env: dict, settings: dict, timeout_s: int = 90) -> dict:
    load = LOAD.format(path=str(gguf), **{"layers": -1, "flash": True, "mmap": True, **settings})
    after = f"; {settings['after']}" if "after" in settings else ""
    try:
        done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", f"{imports}; {load}{after}"], capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"exit_code": None, "ok": False, "stderr_tail": [f"no answer within {timeout_s} s"]}
    return {"exit_code": done.returncode, "ok": done.returncode == 0 and done.stdout.strip().endswith("True"),
            "stderr_tail": done.stderr.strip().splitlines()[-6:]}


def fix_env(results: dict) -> dict:
    """The environment of the first variant that passed where the same imports without it crashed ({} if none)."""
    for name, (imports, env, settings) in VARIANTS.items():
        plain = next((n for n, (i, e, st) in VARIANTS.items() if i == imports and not e and not st), None)
        if env and name in results and plain in results and results[name]["ok"] and not results[plain]["ok"]:
            return env
    return {}


def backtrace(gguf: Path, imports: str) -> list[str]:
    """gdb's backtrace of the crashing variant, where gdb is installed."""
    if shutil.which("gdb") is None:
        return ["gdb is not installed"]
    load = LOAD.format(path=str(gguf), layers=-1, flash=True, mmap=True)
    try:
        done = subprocess.run(["gdb", "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c",
                               f"{imports}; {load}"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return ["gdb gave no backtrace within 120 s"]
    return [line for line in done.stdout.splitlines() if line.startswith("#")][:25]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="", help="run only the variants whose name contains this text")
    args = parser.parse_args()
    import llama_cpp

    results = {}
    for name, (imports, env, settings) in VARIANTS.items():
        if args.only not in name:
            continue
        results[name] = run_variant(args.gguf, imports, env, settings)
        print(f"{name:55s} exit {results[name]['exit_code']}", flush=True)
    crashing = next((VARIANTS[n][0] for n, r in results.items() if not r["ok"]), None)
    args.out.write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "llama_cpp_python": llama_cpp.__version__,
        "gguf": args.gguf.name, "variants": results, "fix_env": fix_env(results),
        "backtrace_of_first_crash": backtrace(args.gguf, crashing) if crashing else []}, indent=1))


if __name__ == "__main__":
    main()
