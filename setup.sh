#!/usr/bin/env bash
# Create .venv with the pinned course stack and llmkit, and register the Jupyter kernel "llmkit".
# Safe to re-run: reinstalls only when requirements.txt, pyproject.toml or the torch choice changed.
#   bash setup.sh                 the course's stack; torch: the newest CUDA build of the pinned version that this
#                                 NVIDIA driver runs
#   bash setup.sh llama-cpp       also compile llama-cpp-python (notebook 09): the CUDA version where an NVIDIA driver
#                                 and nvcc are found, else a portable CPU version (minutes: progress is shown)
#   bash setup.sh vllm            only vLLM (notebook 10), in its own .venv-vllm with its own Jupyter kernel "llmkit-vllm"
#                                 (requirements-vllm.txt says why it cannot share .venv); NVIDIA GPUs only
#   bash setup.sh --torch-plan    only say which torch build would be installed and why (installs nothing but uv)
#   bash setup.sh wheelhouse DIR  on a machine with a network: download every package into DIR (torch: PyPI's build,
#                                 or TORCH_INDEX_URL's), for an offline machine (a SCOW compute node), where
#   WHEELHOUSE=DIR bash setup.sh [llama-cpp]   installs from DIR alone, never from an index
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash setup.sh   a torch build of your choice
# Exit codes: 1 an install or build failed (pip's message or the build log is shown); 2 no Python 3.11, an unknown
# argument, or WHEELHOUSE is not a folder; 4 no torch build for this driver, TORCH_INDEX_URL did not serve the pinned
# torch, or the wheelhouse lacks a package, or the driver is too old for vLLM's CUDA 13 build; 5 vLLM asked for where
# no NVIDIA driver is found.
set -euo pipefail
cd "$(dirname "$0")"

torch_spec="$(grep '^torch==' requirements.txt)"
uv_spec="$(grep '^uv==' requirements.txt)"
# torch 2.13's oldest CUDA build is cu126; CUDA 12.x builds need driver >= 525.60.13 (NVIDIA's minor-version
# compatibility table). uv's list goes further back and would fall through to a CPU build: stop first, and say so.
oldest_cuda_driver=525.60.13
# vLLM's PyPI wheels are built for CUDA 13 (its nvidia-cutlass-dsl[cu13] dependency), which needs driver >= 580.65.06
oldest_cuda13_driver=580.65.06

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

pip_install() {
  # .venv/bin/pip (or $pip_bin) install ARGS, its output shown; with a wheelhouse, a package it lacks is named in one line (exit 4)
  local log missing
  log="$(mktemp)"
  if "${pip_bin:-.venv/bin/pip}" install "$@" 2>&1 | tee "$log"; then rm -f "$log"; return; fi
  # pip says it one of these ways (the second when a constraints file is configured)
  missing="$(sed -n -e 's/.*No matching distribution found for \([^ ]*\).*/\1/p' \
    -e 's/.*Cannot install \([^ ]*\) because.*/\1/p' "$log" | head -n 1)"
  rm -f "$log"
  if [ -n "${WHEELHOUSE:-}" ] && [ -n "$missing" ]; then
    echo "setup.sh: the wheelhouse $WHEELHOUSE has no $missing; make it again on a machine with a network: bash setup.sh wheelhouse DIR" >&2
    exit 4
  fi
  echo "setup.sh: pip install $* failed (its message is above)" >&2
  exit 1
}

build_wheelhouse() {
  # Every package setup.sh installs, into $1: requirements.txt with torch (PyPI's build, or TORCH_INDEX_URL's),
  # nvcc wheels matching that torch's CUDA, llama-cpp-python's source release and what building it needs, and the
  # build backends of llmkit itself.
  local dir="$1" llama_spec torch_wheel cuda specs
  llama_spec="$(grep '^llama-cpp-python==' requirements-llamacpp.txt)"
  mkdir -p "$dir"
  stage "downloading the course's packages into $dir (torch: ${TORCH_INDEX_URL:-the PyPI build, for driver 580 or newer; TORCH_INDEX_URL picks another})"
  # pip wheel, not download: a package published only as source (gptqmodel) is built into a wheel here, because the
  # offline machine could not fetch what building it needs
  .venv/bin/pip wheel --progress-bar off -w "$dir" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
    -r requirements.txt "setuptools>=69" wheel
  torch_wheel="$(ls "$dir"/torch-*.whl | head -n 1)"
  cuda="$(.venv/bin/python llmkit/environment/cuda_toolkit.py torch-cuda "$torch_wheel")"
  specs="$([ -z "$cuda" ] || .venv/bin/python llmkit/environment/cuda_toolkit.py wheels "$cuda")"
  case "$specs" in
    ""|note:*) ;;  # a CPU torch, or a CUDA without nvcc wheels
    *) stage "downloading nvcc $cuda from NVIDIA's wheels (for GPU machines)"  # what install_nvcc installs there
       .venv/bin/pip download --progress-bar off -d "$dir" $specs ;;
  esac
  stage "downloading $llama_spec's source release and its build requirements"
  .venv/bin/pip download --progress-bar off -d "$dir" --no-binary llama-cpp-python -r requirements-llamacpp.txt
  .venv/bin/pip download --progress-bar off -d "$dir" "scikit-build-core[pyproject]>=0.9.2" cmake ninja
  stage "wheelhouse ready ($(du -sh "$dir" | cut -f1)): copy $dir to the offline machine, then there: WHEELHOUSE=$dir bash setup.sh llama-cpp"
}

install_torch() {
  # Installs the pinned torch into .venv (with --dry-run: only shows what would be installed), saying which and why.
  # No driver: PyPI's build. A driver: uv's --torch-backend=auto reads the same driver version and tries PyTorch's
  # CUDA indexes newest first, so the newest CUDA build of the pinned torch that this driver runs wins; uv does
  # this job, no table of ours. TORCH_INDEX_URL overrides both.
  local dry_run="${1:-}" driver
  driver="$(nvidia_driver)"
  if [ -n "${WHEELHOUSE:-}" ]; then
    echo "setup.sh: torch: $torch_spec from the wheelhouse $WHEELHOUSE (the build chosen when it was made)"
    pip_install $dry_run "$torch_spec"
  elif [ -n "${TORCH_INDEX_URL:-}" ]; then
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

install_nvcc() {
  # gptqmodel compiles its Marlin GPTQ kernels with the nvcc under CUDA_HOME, whose CUDA major must match torch's.
  # From CUDA 13 on NVIDIA publishes nvcc as PyPI wheels: install them for torch's CUDA version and arrange them as
  # .venv/cuda, which `import llmkit` makes CUDA_HOME unless it is set (llmkit/environment/cuda_toolkit.py). CPU torch: nothing.
  local cuda specs
  cuda="$(.venv/bin/python -c 'import torch; print(torch.version.cuda or "")')"
  [ -n "$cuda" ] || return 0
  specs="$(.venv/bin/python llmkit/environment/cuda_toolkit.py wheels "$cuda")"
  case "$specs" in note:*) stage "$specs"; return 0 ;; esac
  stage "installing nvcc $cuda from NVIDIA's wheels for gptqmodel's GPTQ kernels (about 100 MB)"
  pip_install -q $specs
  .venv/bin/python llmkit/environment/cuda_toolkit.py link >/dev/null
  stage "nvcc $(.venv/cuda/bin/nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') in .venv/cuda: import llmkit sets CUDA_HOME to it unless CUDA_HOME is set"
}

nvcc_path() {  # nvcc on PATH, else under CUDA_HOME or /usr/local/cuda; empty without one
  command -v nvcc || { [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; } || true
}

llama_cpp_cmake_args() {
  # GGML_NATIVE=OFF: a portable x86-64 build (AVX2/FMA/F16C, no AVX-512, no AMX): a native build on an Intel Xeon
  # with AMX crashed in ggml's AMX matmul (a general protection fault at `ldtilecfg`) on every q4_k_m/q5_k_m file,
  # and a build made on one machine must run on the next one. With an NVIDIA driver and nvcc: the CUDA version,
  # for this machine's GPU architectures only (much faster to compile). CMAKE_ARGS adds to these flags.
  local args="-DGGML_NATIVE=OFF" archs
  if [ -n "$(nvidia_driver)" ] && [ -n "$(nvcc_path)" ]; then
    archs="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '. ' | sort -u | paste -sd';' || true)"
    args="$args -DGGML_CUDA=on${archs:+ -DCMAKE_CUDA_ARCHITECTURES=$archs}"
  fi
  echo "$args${CMAKE_ARGS:+ $CMAKE_ARGS}"
}

build_progress() {  # a CMake build's output (ninja's "[12/190]" or make's "[ 42%]") -> one line per 10% done
  sed -un 's/^.*\[ *\([0-9][0-9]*\)\/\([0-9][0-9]*\)\].*$/\1 \2/p; s/^.*\[ *\([0-9][0-9]*\)%\].*$/\1 100/p' |
    awk '{ p = int(100 * $1 / $2); if (p >= shown + 10) { shown = p - p % 10;
      printf "setup.sh   llama.cpp build %d%%\n", shown; fflush() } }'
}

install_llama_cpp() {
  # Compiles the pinned llama-cpp-python from its source release and unpacks llama.cpp's GGUF converter
  # (convert_hf_to_gguf.py, its conversion/ package and gguf-py, not in the wheel) from the same release, so
  # converter and runtime agree (PyPI's gguf 0.19.0 is older). The flags are stamped: other flags rebuild.
  local spec flags stamp=.venv/.llama-cpp-build converter=.venv/share/llama.cpp tmp log=.venv/llama-cpp-build.log
  spec="$(grep '^llama-cpp-python==' requirements-llamacpp.txt)"
  flags="$(llama_cpp_cmake_args)"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$spec $flags" ] && [ -f "$converter/convert_hf_to_gguf.py" ]; then
    stage "llama-cpp-python: $spec already built with CMAKE_ARGS='$flags'"
    pip_install -q -r requirements-llamacpp.txt  # its runtime dependencies, should they be missing
    return
  fi
  tmp="$(mktemp -d)"
  stage "downloading the $spec source release"
  .venv/bin/pip download --quiet --no-deps --no-binary :all: "$spec" -d "$tmp"
  case "$flags" in
    *GGML_CUDA=on*) stage "compiling $spec for CUDA, CMAKE_ARGS='$flags' (about 5 minutes on 16 cores for one GPU architecture, longer on fewer)" ;;
    *) stage "compiling $spec for the CPU, CMAKE_ARGS='$flags' (3 to 8 minutes on 2 cores)" ;;
  esac
  if ! CMAKE_ARGS="$flags" .venv/bin/pip install -v --no-cache-dir --no-deps --force-reinstall \
      "$tmp"/llama_cpp_python-*.tar.gz 2>&1 < /dev/null | tee "$log" | build_progress; then
    echo "setup.sh: compiling $spec failed; the last lines of $log:" >&2
    tail -n 15 "$log" >&2
    rm -rf "$tmp"
    exit 1
  fi
  tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp" --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
    '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*' '*/vendor/llama.cpp/LICENSE'
  rm -rf "$converter" && mkdir -p "$converter"
  cp -r "$tmp"/llama_cpp_python-*/vendor/llama.cpp/{convert_hf_to_gguf.py,conversion,gguf-py,LICENSE} "$converter"/
  rm -rf "$tmp"
  pip_install -q -r requirements-llamacpp.txt  # its runtime dependencies (it was built with --no-deps)
  echo "$spec $flags" > "$stamp"
  stage "llama-cpp-python built; llama.cpp's converter in $converter"
}

register_llama_kernel() {
  # The llama.cpp notebook's kernel loads llama.cpp before ipykernel: a CUDA build crashed loading a model in any
  # process that had loaded pyzmq first, and every Jupyter kernel does (llmkit/deploy/llamacpp_kernel.py says more).
  .venv/bin/python -m llmkit.deploy.llamacpp_kernel install >/dev/null
  stage "Jupyter kernel 'Python (llmkit + llama.cpp)' registered for the llama.cpp notebook"
}

install_vllm() {
  # vLLM in .venv-vllm, a venv of its own (requirements-vllm.txt: why), with llmkit and the Jupyter kernel
  # "llmkit-vllm" for notebook 10. Re-running reinstalls only when requirements-vllm.txt or pyproject.toml changed.
  local driver venv=.venv-vllm wanted
  driver="$(nvidia_driver)"
  if [ -z "$driver" ]; then
    echo "setup.sh: vLLM not installed: it runs only on Linux with an NVIDIA GPU, and no NVIDIA driver was found here (notebook 10 skips its vLLM sections)" >&2
    exit 5
  fi
  if older_than "$driver" "$oldest_cuda13_driver"; then
    echo "setup.sh: vLLM not installed: $(grep '^vllm==' requirements-vllm.txt) from PyPI is built for CUDA 13, which needs NVIDIA driver $oldest_cuda13_driver or newer (this one is $driver): update the driver, or use a CUDA 12 build from vLLM's own wheel index (docs.vllm.ai, installation, pre-built wheels)" >&2
    exit 4
  fi
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  wanted="$(cat requirements-vllm.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$venv/.llmkit-installed" 2>/dev/null)" = "$wanted" ]; then
    stage "vLLM: $venv is up to date"
  else
    stage "installing requirements-vllm.txt and llmkit into $venv (a separate environment: requirements-vllm.txt says why; several GB)"
    pip_bin="$venv/bin/pip" pip_install --progress-bar off -r requirements-vllm.txt
    pip_bin="$venv/bin/pip" pip_install -q --no-deps -e .  # llmkit; its dependencies came with vLLM's versions
    echo "$wanted" > "$venv/.llmkit-installed"
  fi
  "$venv/bin/python" -m ipykernel install --user --name llmkit-vllm --display-name "Python (llmkit + vLLM)" >/dev/null
  stage "vLLM $("$venv/bin/python" -c 'import vllm; print(vllm.__version__)') ready in $venv: open notebook 10 with the kernel 'Python (llmkit + vLLM)'"
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

usage="use: bash setup.sh [llama-cpp] | bash setup.sh vllm | bash setup.sh --torch-plan | bash setup.sh wheelhouse DIR"
with_llama_cpp=""
with_vllm=""
wheelhouse_out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --torch-plan) [ -x .venv/bin/python ] || "$python_bin" -m venv .venv; install_torch --dry-run; exit 0 ;;
    llama-cpp) with_llama_cpp=yes ;;
    vllm) with_vllm=yes ;;
    wheelhouse) [ -n "${2:-}" ] || { echo "setup.sh: wheelhouse needs a folder; $usage" >&2; exit 2; }
                wheelhouse_out="$2"; shift ;;
    *) echo "setup.sh: unknown argument '$1'; $usage" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "${WHEELHOUSE:-}" ]; then
  # offline: every pip call (build isolation included) reads only the wheelhouse; nothing asks an index
  [ -d "$WHEELHOUSE" ] || { echo "setup.sh: WHEELHOUSE=$WHEELHOUSE is not a folder; make one with: bash setup.sh wheelhouse DIR" >&2; exit 2; }
  WHEELHOUSE="$(cd "$WHEELHOUSE" && pwd)"
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"
fi
if [ -n "$with_vllm" ]; then
  install_vllm
  exit 0
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
if [ -n "$wheelhouse_out" ]; then
  build_wheelhouse "$wheelhouse_out"
  exit 0
fi
stamp=.venv/.llmkit-installed
wanted="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1) ${TORCH_INDEX_URL:-} $(nvidia_driver)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  stage "installing torch"
  install_torch
  stage "installing requirements.txt and llmkit (about 2 minutes)"
  pip_install --progress-bar off -r requirements.txt -e .
  install_nvcc
  echo "$wanted" > "$stamp"
fi

.venv/bin/python -m ipykernel install --user --name llmkit --display-name "Python (llmkit)" >/dev/null
if [ -n "$with_llama_cpp" ]; then
  install_llama_cpp
  register_llama_kernel
elif ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  stage "llama-cpp-python (notebook 09) is not installed: bash setup.sh llama-cpp compiles it (minutes)"
fi
stage ".venv ready (kernel 'llmkit' registered)"
