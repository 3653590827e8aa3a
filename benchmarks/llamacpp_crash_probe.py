"""Which imports and settings make llama-cpp-python's CUDA build crash (notebook 09 on the GPU machine: segmentation
faults in libggml-cuda's model load, and in the import of matplotlib's Agg extension). Each variant runs in its own
process: it imports what the variant names, loads the GGUF with all layers on the GPU and generates 4 tokens; the
exit code and the last lines of a fault are recorded in JSON.

    python benchmarks/llamacpp_crash_probe.py model-f16.gguf --out $OUT/llamacpp_crash_probe.json
    python benchmarks/llamacpp_crash_probe.py model-f16.gguf --only Agg --out ...   # variants whose name has "Agg"

Found so far (GPU_NOTES.md): numpy, pyzmq or ipykernel imported before llama_cpp crash the load, unless
libggml-cuda is preloaded; the Agg extension imported after llama_cpp crashes at its import, and imported before
llama_cpp the load crashes (2026-12-06, H100).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from llmkit.deploy.llamacpp_kernel import ggml_cuda_library  # what the llama.cpp kernel preloads

LOAD = ("llm = llama_cpp.Llama(model_path={path!r}, n_ctx=512, n_gpu_layers={layers}, flash_attn={flash}, "
        "use_mmap={mmap}, verbose=False); print(llm('Hi', max_tokens=4)['choices'][0]['text'] is not None)")
NOTEBOOK_09_IMPORTS = "import matplotlib.pyplot; import llmkit; from llmkit.deploy import gguf; llmkit.pick_model('Qwen/Qwen2-7B-Instruct')"
FIGURE = ("import matplotlib.pyplot as plt; fig, ax = plt.subplots(); ax.bar(['a', 'b'], [1.0, 2.0]); "
          "fig.savefig('/tmp/llamacpp_probe.png'); print(True)")
AGG = "import matplotlib.backends.backend_agg"


def llama_libs() -> str:
    """llama-cpp-python's own shared libraries, ggml's first (for LD_PRELOAD), without importing llama_cpp."""
    import importlib.util

    folder = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
    names = ["libggml-base.so", "libggml-cpu.so", "libggml-cuda.so", "libggml.so", "libllama.so"]
    return " ".join(str(folder / n) for n in names if (folder / n).exists())


def libstdcxx() -> str:
    """The system's libstdc++ (for LD_PRELOAD)."""
    return next(iter(sorted(glob.glob("/lib/x86_64-linux-gnu/libstdc++.so.6*"))), "libstdc++.so.6")


PRELOAD_CUDA = {"LD_PRELOAD": "{ggml_cuda}"}
PRELOAD_ALL = {"LD_PRELOAD": "{llama_libs}"}
# name: (imports before the load, extra environment, load settings; "after": code run after the load)
VARIANTS = {
    "llama_cpp only": ("import llama_cpp", {}, {}),
    "numpy, then llama_cpp": ("import numpy; import llama_cpp", {}, {}),
    "numpy, then llama_cpp; libggml-cuda preloaded": ("import numpy; import llama_cpp", PRELOAD_CUDA, {}),
    "llama_cpp, then Agg": (f"import llama_cpp; {AGG}", {}, {}),
    "llama_cpp, then Agg; libggml-cuda preloaded": (f"import llama_cpp; {AGG}", PRELOAD_CUDA, {}),
    "llama_cpp, then Agg; llama.cpp's libraries preloaded": (f"import llama_cpp; {AGG}", PRELOAD_ALL, {}),
    "llama_cpp, then Agg; libstdc++ preloaded": (f"import llama_cpp; {AGG}", {"LD_PRELOAD": "{libstdcxx}"}, {}),
    "llama_cpp, then Agg; CUDA_VISIBLE_DEVICES=''": (f"import llama_cpp; {AGG}", {"CUDA_VISIBLE_DEVICES": ""},
                                                   {"layers": 0}),
    "Agg, then llama_cpp": (f"{AGG}; import llama_cpp", {}, {}),
    "Agg, then llama_cpp; n_gpu_layers=0": (f"{AGG}; import llama_cpp", {}, {"layers": 0}),
    "Agg, then llama_cpp; libggml-cuda preloaded": (f"{AGG}; import llama_cpp", PRELOAD_CUDA, {}),
    "Agg, then llama_cpp; llama.cpp's libraries preloaded": (f"{AGG}; import llama_cpp", PRELOAD_ALL, {}),
    "notebook 09's imports, a figure after the load; libggml-cuda preloaded": (
        f"import llama_cpp; {NOTEBOOK_09_IMPORTS}", PRELOAD_CUDA, {"after": FIGURE}),
    "notebook 09's imports, a figure after the load; llama.cpp's libraries preloaded": (
        f"import llama_cpp; {NOTEBOOK_09_IMPORTS}", PRELOAD_ALL, {"after": FIGURE}),
}


def expand(env: dict) -> dict:
    """The variant's environment with the library paths filled in."""
    paths = {"llama_libs": llama_libs(), "ggml_cuda": ggml_cuda_library(), "libstdcxx": libstdcxx()}
    return {key: value.format(**paths) for key, value in env.items()}


def run_variant(gguf: Path, imports: str, env: dict, settings: dict, timeout_s: int = 90) -> dict:
    load = LOAD.format(path=str(gguf), **{"layers": -1, "flash": True, "mmap": True, **settings})
    after = f"; {settings['after']}" if "after" in settings else ""
    try:
        done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", f"{imports}; {load}{after}"], capture_output=True,
                              text=True, env={**os.environ, **expand(env)}, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"exit_code": None, "ok": False, "stderr_tail": [f"no answer within {timeout_s} s"]}
    return {"exit_code": done.returncode, "ok": done.returncode == 0 and done.stdout.strip().endswith("True"),
            "stderr_tail": done.stderr.strip().splitlines()[-6:]}


def fix_env(results: dict) -> dict:
    """The environment (paths filled in) of the first variant with notebook 09's imports and a figure after the
    load that passed ({} if none): what the llama.cpp kernel needs."""
    for name, (imports, env, settings) in VARIANTS.items():
        if env and "after" in settings and results.get(name, {}).get("ok"):
            return expand(env)
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
