#!/usr/bin/env bash
# Rehearse, on this CPU machine, the vLLM install that benchmarks/vllm_device.sh does on the GPU machine: a Python 3.12
# venv with the GPU image's packages that vLLM's tree takes from the image (.whlv/left_out.txt, at the versions of
# benchmarks/device_pip_h200.txt; torch 2.11.0 with its CUDA wheels: about 4.6 GB from PyPI), then every carry folder
# .whlv/pNN added and installed exactly as there, then vLLM's Python side imported: LLM, SamplingParams, TokensPrompt
# and the OpenAI server. A wheel missing from the carried set shows here as an ImportError, before any device time is
# spent. Only the compiled CUDA extension cannot load here (it needs the driver's libcuda.so.1).
#   bash benchmarks/vllm_rehearse_cpu.sh [WORK_DIR]      # default /tmp/vllm-rehearse; run vllm_wheels.sh first
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/vllm-rehearse}
[ -f .whlv/left_out.txt ] || { echo "no .whlv/left_out.txt: run bash benchmarks/vllm_wheels.sh benchmarks/device_pip_h200.txt first" >&2; exit 2; }
PY312=${PY312:-$(ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1 || command -v python3.12)}
mkdir -p "$W"
[ -x "$W/venv/bin/python" ] || "$PY312" -m venv "$W/venv"
# the image's side: what vllm_wheels.sh left out because the GPU machine has it (not what it skipped on purpose)
"$W/venv/bin/python" - "$W/image.txt" <<'EOF'
import re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
image = {norm(l.split("==")[0]): l.strip() for l in open("benchmarks/device_pip_h200.txt") if "==" in l}
left = [l.split()[0] for l in open(".whlv/left_out.txt") if "(SKIP)" not in l]
open(sys.argv[1], "w").write("\n".join(image.get(norm(r.split("==")[0]), r) for r in left) + "\n")
EOF
PIP_CONSTRAINT= "$W/venv/bin/pip" install -q --no-deps -r "$W/image.txt" 2>&1 | grep -v "is ignored" || true
export VPARTS=$W/parts VTARGET=$W/v/site-packages PATH=$W/venv/bin:$PATH
rm -rf "$VPARTS" "$W/v"
bash benchmarks/vllm_device.sh add .whlv/p[0-9][0-9] | tail -1
# install ends by importing the compiled extension, which needs a GPU driver: its last lines say so here
bash benchmarks/vllm_device.sh install 2>&1 | grep -v "^  File\|^    " | tail -4 || true
PYTHONPATH=$(python -c 'import site, sys; b = list(sys.path); site.addsitedir(sys.argv[1]); print(":".join(p for p in sys.path if p not in b))' "$VTARGET") \
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 python - <<'EOF'
import vllm
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
import vllm.entrypoints.openai.api_server
import vllm.benchmarks.throughput
import flashinfer.quantization  # the engine imports it at start-up (with cutlass-dsl but no CUDA flavour it raised)
print(f"vllm {vllm.__version__}: LLM, SamplingParams, TokensPrompt, the OpenAI server, the throughput benchmark and "
      "FlashInfer's quantization module import")
EOF
