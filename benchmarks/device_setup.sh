#!/usr/bin/env bash
# Install the wheels carried to the GPU machine (no internet there) and, optionally, build llama-cpp-python with
# CUDA from the carried slim sdist; source it so the environment stays set:
#   source benchmarks/device_setup.sh .whl .whlz        # wheel folders, installed into /tmp/t/site-packages
#   LLAMA_BUILD=1 source benchmarks/device_setup.sh .whlz  # also build llama-cpp-python (about 5 min, in the background)
# A folder with marlin_so.tgz (the *.so files under ~/.cache/gptqmodel/torch_extensions of a machine that built them:
# `cd ~/.cache/gptqmodel && find torch_extensions -name "*.so" | tar czf $OUT/marlin_so.tgz -T -`) puts them back, so
# gptqmodel loads its Marlin kernels instead of compiling them (about 230 s); its cache key is torch's and the sources'.
# The target path contains `site-packages`: streamlit turns its developmentMode on when it does not (GPU_NOTES.md).
T=/tmp/t/site-packages
mkdir -p "$T" /tmp/lcpw
for folder in "$@"; do
  ls "$folder"/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --target "$T" "$folder"/*.whl
  if [ -f "$folder/marlin_so.tgz" ]; then  # gptqmodel's Marlin kernels built on an earlier machine (same torch, wheel)
    mkdir -p ~/.cache/gptqmodel && tar xzf "$folder/marlin_so.tgz" -C ~/.cache/gptqmodel
  fi
  if [ -f "$folder/llama_src.tar.xz" ] && [ ! -d /tmp/lcp ]; then
    mkdir -p /tmp/lcp && tar xJf "$folder/llama_src.tar.xz" -C /tmp/lcp
  fi
done
export PYTHONPATH=$T:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if ls /tmp/lcpw/*.whl >/dev/null 2>&1; then  # built in an earlier call while the machine was held
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$T" /tmp/lcpw/*.whl 2>&1 | grep -v WARNING
  PYTHONPATH=$T:$PWD python3 -m llmkit.deploy.llamacpp_kernel install >/dev/null  # the llama.cpp notebook's kernel
fi
export LLAMA_CPP_DIR=$(ls -d /tmp/lcp/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | head -1)
if [ "${LLAMA_BUILD:-0}" = 1 ] && ! ls /tmp/lcpw/*.whl >/dev/null 2>&1 && [ ! -e /tmp/lcpw.log ]; then
  # -DGGML_NATIVE=OFF as setup.sh builds it; only sm_90 (H100, H200) to keep the build short. setsid: a job left in
  # the background ends with the device call that started it (2026-12-06, sixth); this one lives on while the machine
  # is held, for later calls. /tmp/lcpw.log exists from the start: one build per machine
  echo "llama-cpp-python build started $(date -u +%T)" >/tmp/lcpw.log
  setsid bash -c 'cd "$(ls -d /tmp/lcp/llama_cpp_python-*/ | head -1)" && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=12 python3 -m pip wheel -q --no-build-isolation --no-deps --no-index . -w /tmp/lcpw \
    >>/tmp/lcpw.log 2>&1; echo "llama build exit $?" >>/tmp/lcpw.log' </dev/null >/dev/null 2>&1 &
fi
