#!/usr/bin/env bash
# Build llama-cpp-python with CUDA for benchmarks/gguf_gpu.py on a GPU machine without internet, timing the build.
#   bash benchmarks/gguf_gpu_build.sh SDIST TARGET [CUDA_ARCH]   e.g. ... llama_cpp_python-0.3.36.tar.gz /tmp/site 90
# Needs nvcc, cmake, ninja and scikit-build-core there. A learner with internet runs instead:
#   CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python==0.3.36
set -euo pipefail
sdist=$1 target=$2 arch=${3:-90}
start=$(date +%s)
# LLAVA_BUILD=OFF: the multimodal library is not used by the course and would add build time
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${arch}-real -DLLAVA_BUILD=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  python3 -m pip install --no-index --no-deps --no-build-isolation --no-compile --target "$target" "$sdist"
echo "llama-cpp-python CUDA build took $(( $(date +%s) - start )) s on $(nproc) cores (sm_${arch})"
