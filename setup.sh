#!/usr/bin/env bash
# Create .venv with the pinned course stack and llmkit, and register the Jupyter kernel "llmkit".
# Safe to re-run: reinstalls only when requirements.txt, pyproject.toml or the torch choice changed.
#   bash setup.sh                 torch: the newest CUDA build of the pinned version that this NVIDIA driver runs
#   bash setup.sh --torch-plan    only say which torch build would be installed and why (installs nothing but uv)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash setup.sh   a torch build of your choice
# Exit codes: 2 no Python 3.11; 4 no torch build for this driver, or TORCH_INDEX_URL did not serve the pinned torch.
set -euo pipefail
cd "$(dirname "$0")"

torch_spec="$(grep '^torch==' requirements.txt)"
uv_spec="$(grep '^uv==' requirements.txt)"
# torch 2.13's oldest CUDA build is cu126; CUDA 12.x builds need driver >= 525.60.13 (NVIDIA's minor-version
# compatibility table). uv's list goes further back and would fall through to a CPU build: stop first, and say so.
oldest_cuda_driver=525.60.13

stage() {  # one progress line with the time since setup started
  printf 'setup.sh [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"
}

nvidia_driver() {
  # The NVIDIA driver version (e.g. 550.144.03), read where uv reads it; empty without a driver.
  # UV_CUDA_DRIVER_VERSION (uv's own setting) overrides the machine, for both uv and this script.
  if [ -n "${UV_CUDA_DRIVER_VERSION:-}" ]; then echo "$UV_CUDA_DRIVER_VERSION"
  elif [ -r /sys/module/nvidia/version ]; then tr -d '[:space:]' < /sys/module/nvidia/version
  elif [ -r /proc/driver/nvidia/version ]; then head -1 /proc/driver/nvidia/version | awk -F'  ' '{print $2}'
  elif command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1
  fi
}

older_than() {  # older_than A B: version A < version B
  [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]
}

install_torch() {
  # Installs the pinned torch into .venv (with --dry-run: only shows what would be installed), saying which and why.
  # No driver: PyPI's build. A driver: uv's --torch-backend=auto reads the same driver version and tries PyTorch's
  # CUDA indexes newest first, so the newest CUDA build of the pinned torch that this driver runs wins; uv does
  # this job, no table of ours. TORCH_INDEX_URL overrides both.
  local dry_run="${1:-}" driver
  driver="$(nvidia_driver)"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "setup.sh: torch: $torch_spec from TORCH_INDEX_URL=$TORCH_INDEX_URL"
    # --force-reinstall: a torch of the same version from another index (e.g. PyPI's) does not count;
    # --no-deps: its dependencies come with requirements.txt next
    .venv/bin/pip install -q $dry_run --force-reinstall --no-deps "$torch_spec" --index-url "$TORCH_INDEX_URL" || {
      echo "setup.sh: TORCH_INDEX_URL=$TORCH_INDEX_URL did not serve $torch_spec; use one of PyTorch's indexes, e.g. https://download.pytorch.org/whl/cu126" >&2
      exit 4; }
  elif [ -z "$driver" ]; then
    echo "setup.sh: torch: no NVIDIA driver found, so $torch_spec from PyPI (it runs on the CPU here)"
  elif older_than "$driver" "$oldest_cuda_driver"; then
    echo "setup.sh: NVIDIA driver $driver is older than $oldest_cuda_driver, the oldest that runs a CUDA build of $torch_spec: update the driver, or install the CPU build with TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2
    exit 4
  else
    echo "setup.sh: torch: NVIDIA driver $driver, so uv --torch-backend=auto picks the newest CUDA build of $torch_spec that it runs"
    if [ -z "$dry_run" ] && .venv/bin/python -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
      echo "setup.sh: torch: keeping the CUDA build already installed ($(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
      return
    fi
    [ -x .venv/bin/uv ] || .venv/bin/pip install -q "$uv_spec"
    UV_CUDA_DRIVER_VERSION="$driver" .venv/bin/uv pip install $dry_run ${dry_run:+--no-deps} --reinstall-package torch \
      --python .venv/bin/python --torch-backend=auto ${PIP_INDEX_URL:+--default-index "$PIP_INDEX_URL"} "$torch_spec" || {
      echo "setup.sh: uv could not install a CUDA build of $torch_spec for driver $driver (is download.pytorch.org reachable?); TORCH_INDEX_URL=... bash setup.sh picks one by hand" >&2
      exit 4; }
    [ -n "$dry_run" ] || .venv/bin/python -c 'import sys, torch; print(f"setup.sh: torch {torch.__version__} for CUDA {torch.version.cuda}"); sys.exit(torch.version.cuda is None)' || {
      .venv/bin/pip uninstall -q -y torch
      echo "setup.sh: uv installed a CPU-only torch for driver $driver; removed it. Pick a build with TORCH_INDEX_URL" >&2
      exit 4; }
  fi
}

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python_bin="$candidate"; break
    fi
  done
fi
if [ -z "$python_bin" ]; then
  echo "setup.sh: Python 3.11 not found; install it (e.g. conda create -n llmkit python=3.11) or set PYTHON=/path/to/python3.11" >&2
  exit 2
fi

[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
if [ "${1:-}" = "--torch-plan" ]; then
  install_torch --dry-run
  exit 0
fi
# llama-cpp-python compiles llama.cpp at install. GGML_NATIVE=OFF gives a portable x86-64 build (AVX2/FMA/F16C,
# no AVX-512, no AMX): a native build on an Intel Xeon with AMX crashed in ggml's AMX matmul (a general protection
# fault at `ldtilecfg`) on every q4_k_m/q5_k_m file, and a build made on one machine must run on the next one.
# CMAKE_ARGS adds to these flags (e.g. CMAKE_ARGS="-DGGML_CUDA=on" for a CUDA build). The flags are stamped, so a
# build with other flags is replaced; --no-cache-dir keeps pip from reusing a wheel it built with other flags.
llama_cpp_spec="$(grep '^llama-cpp-python==' requirements.txt)"
llama_cpp_flags="-DGGML_NATIVE=OFF${CMAKE_ARGS:+ $CMAKE_ARGS}"
llama_cpp_stamp=.venv/.llama-cpp-build
if [ "$(cat "$llama_cpp_stamp" 2>/dev/null)" != "$llama_cpp_spec $llama_cpp_flags" ]; then
  stage "compiling $llama_cpp_spec with CMAKE_ARGS='$llama_cpp_flags' (about 8 minutes on 2 cores, no output meanwhile)"
  CMAKE_ARGS="$llama_cpp_flags" .venv/bin/pip install --progress-bar off --no-cache-dir --no-deps --force-reinstall \
    "$llama_cpp_spec"
  echo "$llama_cpp_spec $llama_cpp_flags" > "$llama_cpp_stamp"
fi

stamp=.venv/.llmkit-installed
wanted="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1) ${TORCH_INDEX_URL:-} $(nvidia_driver)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  stage "installing torch"
  install_torch
  stage "installing requirements.txt and llmkit (about 2 minutes)"
  .venv/bin/pip install --progress-bar off -r requirements.txt -e .
  echo "$wanted" > "$stamp"
fi

# llama.cpp's converter (convert_hf_to_gguf.py, its conversion/ package and the gguf-py it imports from beside
# itself) is not in the llama-cpp-python wheel; take it from the same pinned source release that pip compiled,
# so converter and runtime agree (PyPI's gguf 0.19.0 is older than the gguf-py in this release).
llama_cpp_version="$(sed -n 's/^llama-cpp-python==//p' requirements.txt)"
converter=.venv/share/llama.cpp
if [ "$(cat "$converter/VERSION" 2>/dev/null)" != "$llama_cpp_version" ]; then
  stage "unpacking llama.cpp's GGUF converter"
  tmp="$(mktemp -d)"
  .venv/bin/pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$llama_cpp_version" -d "$tmp"
  tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp" --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
    '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*' '*/vendor/llama.cpp/LICENSE'
  rm -rf "$converter" && mkdir -p "$converter"
  cp -r "$tmp"/llama_cpp_python-*/vendor/llama.cpp/{convert_hf_to_gguf.py,conversion,gguf-py,LICENSE} "$converter"/
  echo "$llama_cpp_version" > "$converter/VERSION"
  rm -rf "$tmp"
fi
.venv/bin/python -m ipykernel install --user --name llmkit --display-name "Python (llmkit)" >/dev/null
stage ".venv ready (kernel 'llmkit' registered, llama.cpp converter in $converter)"
