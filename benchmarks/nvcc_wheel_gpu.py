"""gptqmodel's Marlin kernels built with NVIDIA's nvcc wheels, the system CUDA toolkit hidden: build time, a GPTQ
model generating on Marlin, and the doctor's nvcc row; JSON to $OUT (results/marlin_nvcc_wheel_h200.json).

On the GPU machine, with the five CUDA 13.0 wheels (``llmkit.environment.cuda_toolkit.wheel_specs("13.0")``) installed into
SITE and the rehearsal checkpoint of Qwen1.5-7B-Chat-GPTQ-Int4 written (``llmkit rehearse``):
    python3 benchmarks/nvcc_wheel_gpu.py --site /tmp/t/site-packages --out $OUT/marlin_nvcc_wheel_h200.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from llmkit.environment.cuda_toolkit import link_toolkit

GPTQ_MODEL = "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4"
GENERATE = f"""
import time, llmkit, torch
start = time.perf_counter()
model, tok = llmkit.load("{GPTQ_MODEL}")
loaded = time.perf_counter() - start
layer = type(model.model.layers[0].mlp.up_proj).__name__
ids = tok("Hello", return_tensors="pt").to(model.device)
out = model.generate(**ids, max_new_tokens=16, do_sample=False)
print("RESULT", layer, round(loaded, 1), out.shape[1] - ids["input_ids"].shape[1], torch.isfinite(model(**ids).logits).all().item())
"""


def without_system_cuda(env: dict, toolkit: Path) -> dict:
    """The environment with every PATH entry that holds an ``nvcc`` removed and CUDA_HOME at the wheels' toolkit."""
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "nvcc").exists()]
    return {**env, "PATH": os.pathsep.join(path), "CUDA_HOME": str(toolkit), "MAX_JOBS": "8", "TORCH_CUDA_ARCH_LIST": "9.0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", required=True, help="site-packages folder holding nvidia/cu13 from the wheels")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    toolkit = link_toolkit(args.site, "/tmp/cuda13-wheels")
    env = without_system_cuda(dict(os.environ), toolkit)
    shutil.rmtree(Path.home() / ".cache" / "gptqmodel", ignore_errors=True)  # build from scratch
    result = {"date": datetime.date.today().isoformat(), "toolkit": str(toolkit),
              "system_nvcc_hidden": shutil.which("nvcc", path=env["PATH"]) is None,
              "nvcc_version": subprocess.run([toolkit / "bin" / "nvcc", "--version"], capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1]}
    start = time.perf_counter()
    builds = {ext: subprocess.Popen([sys.executable, "benchmarks/gptq72b_gpu.py", "prebuild", "--ext", ext], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for ext in ("marlin_bf16", "marlin_fp16")}  # in parallel, MAX_JOBS=8 each
    for ext, proc in builds.items():
        output = proc.communicate()[0]
        result[ext] = {"exit": proc.returncode, "tail": output.strip().splitlines()[-3:]}
    result["build_wall_s"] = round(time.perf_counter() - start, 1)
    run = subprocess.run([sys.executable, "-c", GENERATE], env=env, capture_output=True, text=True, timeout=400)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT")), None)
    result["generate"] = ({"layer": line.split()[1], "load_s": float(line.split()[2]), "new_tokens": int(line.split()[3]),
                           "finite_logits": line.split()[4] == "True"} if line else {"error": run.stderr[-2000:]})
    doctor = subprocess.run([sys.executable, "-m", "llmkit.cli", "doctor", "--json"], env=env, capture_output=True, text=True)
    try:
        rows = json.loads(doctor.stdout)["rows"]
        result["doctor"] = [r for r in rows if "nvcc" in r["check"] or "GPTQ" in r["check"]]
    except (ValueError, KeyError) as error:
        result["doctor"] = {"error": f"{error}: {doctor.stdout[-500:]} {doctor.stderr[-1500:]}"}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
