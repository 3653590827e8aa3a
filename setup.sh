#!/usr/bin/env bash
# Create .venv with the pinned course stack and llmkit, and register the Jupyter kernel "llmkit".
# Safe to re-run: reinstalls only when requirements.txt or pyproject.toml changed.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash setup.sh   picks a torch CUDA build first.
set -euo pipefail
cd "$(dirname "$0")"

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
# llama-cpp-python compiles llama.cpp at install. GGML_NATIVE=OFF gives a portable x86-64 build (AVX2/FMA/F16C,
# no AVX-512, no AMX): a native build on an Intel Xeon with AMX crashed in ggml's AMX matmul (a general protection
# fault at `ldtilecfg`) on every q4_k_m/q5_k_m file, and a build made on one machine must run on the next one.
# CMAKE_ARGS adds to these flags (e.g. CMAKE_ARGS="-DGGML_CUDA=on" for a CUDA build). The flags are stamped, so a
# build with other flags is replaced; --no-cache-dir keeps pip from reusing a wheel it built with other flags.
llama_cpp_spec="$(grep '^llama-cpp-python==' requirements.txt)"
llama_cpp_flags="-DGGML_NATIVE=OFF${CMAKE_ARGS:+ $CMAKE_ARGS}"
llama_cpp_stamp=.venv/.llama-cpp-build
if [ "$(cat "$llama_cpp_stamp" 2>/dev/null)" != "$llama_cpp_spec $llama_cpp_flags" ]; then
  echo "setup.sh: compiling $llama_cpp_spec with CMAKE_ARGS='$llama_cpp_flags' (about 8 minutes on 2 cores)"
  CMAKE_ARGS="$llama_cpp_flags" .venv/bin/pip install --progress-bar off --no-cache-dir --no-deps --force-reinstall \
    "$llama_cpp_spec"
  echo "$llama_cpp_spec $llama_cpp_flags" > "$llama_cpp_stamp"
fi

stamp=.venv/.llmkit-installed
wanted="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1) ${TORCH_INDEX_URL:-}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/pip install "$(grep '^torch==' requirements.txt)" --index-url "$TORCH_INDEX_URL"
  fi
  .venv/bin/pip install --progress-bar off -r requirements.txt -e .
  echo "$wanted" > "$stamp"
fi

# llama.cpp's converter (convert_hf_to_gguf.py, its conversion/ package and the gguf-py it imports from beside
# itself) is not in the llama-cpp-python wheel; take it from the same pinned source release that pip compiled,
# so converter and runtime agree (PyPI's gguf 0.19.0 is older than the gguf-py in this release).
llama_cpp_version="$(sed -n 's/^llama-cpp-python==//p' requirements.txt)"
converter=.venv/share/llama.cpp
if [ "$(cat "$converter/VERSION" 2>/dev/null)" != "$llama_cpp_version" ]; then
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
echo "setup.sh: .venv ready (kernel 'llmkit' registered, llama.cpp converter in $converter)"
