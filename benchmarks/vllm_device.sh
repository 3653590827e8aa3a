#!/usr/bin/env bash
# GPU-machine side of benchmarks/vllm_wheels.sh: install vLLM 0.26.0 from the carried .whlv/pNN folders (no network
# there). Run from the repository root; /tmp survives between calls while the machine is held.
#   bash benchmarks/vllm_device.sh add .whlv/p01     # each call carries one folder (carry [".whlv/p01"]): copy it to
#                                                    # /tmp/vparts (seconds); several folders may be named at once
#   bash benchmarks/vllm_device.sh install           # in the call after the last add (or the same): join the split
#       wheels (cat NAME.whl.part*), check them (SHA256SUMS, python3 -m zipfile -t), pip install --no-deps into
#       /tmp/v/site-packages, print the environment to export, import vllm and its compiled CUDA extension.
# VPARTS and VTARGET override /tmp/vparts and /tmp/v/site-packages (the target path keeps `site-packages` in it).
set -eu
P=${VPARTS:-/tmp/vparts}
T=${VTARGET:-/tmp/v/site-packages}
case "${1:-}" in
add)
  shift
  [ $# -gt 0 ] || { echo "usage: $0 add FOLDER..." >&2; exit 2; }
  mkdir -p "$P"
  for d in "$@"; do cp "$d"/* "$P"/; done
  echo "$P: $(find "$P" -maxdepth 1 -type f | wc -l) files, $(du -sh "$P" | cut -f1)"
  ;;
install)
  cd "$P"
  for first in *.whl.part00; do
    [ -e "$first" ] || continue
    w=${first%.part00}
    cat "$w".part[0-9][0-9] >"$w.tmp" && mv "$w.tmp" "$w" && rm -f "$w".part[0-9][0-9]
    python3 -m zipfile -t "$w" >/dev/null || { echo "joined $w is not a valid zip: a part is missing" >&2; exit 1; }
    echo "joined $w"
  done
  if [ -f SHA256SUMS ]; then  # every wheel of the set is here and whole
    sha256sum -c --quiet SHA256SUMS || { echo "missing or damaged wheels (above): carry their folders again" >&2; exit 1; }
  fi
  mkdir -p "$T"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$T" ./*.whl 2>&1 |
    grep -v -e "^WARNING: Target directory" -e "Specify --upgrade" || true
  # .pth files are read only in site directories, not on PYTHONPATH (nvidia-cutlass-dsl puts its `cutlass` on sys.path
  # with one): take the directories they add into PYTHONPATH
  extra=$(python3 -c 'import site, sys; b = list(sys.path); site.addsitedir(sys.argv[1]); print(":".join(p for p in sys.path if p not in b and p != sys.argv[1]))' "$T")
  PP=$T${extra:+:$extra}
  echo "installed $(find . -maxdepth 1 -name '*.whl' | wc -l) wheels into $T ($(du -sh "$T" | cut -f1)); for later calls:"
  echo "export PYTHONPATH=$PP\${PYTHONPATH:+:\$PYTHONPATH} PATH=$T/bin:\$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\"
  echo "  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_USE_FLASHINFER_SAMPLER=0 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1"
  export PYTHONPATH=$PP${PYTHONPATH:+:$PYTHONPATH}
  python3 -c "import vllm; print('vllm', vllm.__version__, 'from', vllm.__file__)"
  # the compiled extension (vLLM >= 0.2x names the CUDA build's _C `_C_stable_libtorch`): proves the torch/CUDA ABI
  python3 - <<'EOF'
import importlib, importlib.util, torch
name = "vllm._C" if importlib.util.find_spec("vllm._C") else "vllm._C_stable_libtorch"
importlib.import_module(name)
print(f"{name} imported: torch {torch.__version__}, CUDA {torch.version.cuda}, GPU available {torch.cuda.is_available()}")
# flashinfer.quantization: the engine imports it at start-up; with cutlass-dsl carried but no CUDA flavour of its
# libraries its import raised RuntimeError (GPU_NOTES.md, 2026-12-06 fifth)
for extra in ("vllm._moe_C_stable_libtorch", "vllm.vllm_flash_attn._vllm_fa3_C", "flashinfer.quantization"):
    try:
        importlib.import_module(extra); print(f"{extra} imported")
    except Exception as e:  # noqa: BLE001 - a report, not a failure
        print(f"{extra}: {type(e).__name__}: {e}")
EOF
  # the Jupyter kernel of notebook 10's vLLM cells, like setup.sh's "Python (llmkit + vLLM)"; realmode_device.sh
  # runs a notebook in it with KERNEL=llmkit-vllm (source benchmarks/device_setup.sh first: its PYTHONPATH is kept).
  # PATH: the `vllm` command (10's `vllm serve`, `vllm bench`) is in $T/bin, which is not beside the kernel's python3
  python3 -m ipykernel install --user --name llmkit-vllm --display-name "Python (llmkit + vLLM)" \
    --env PYTHONPATH "$PYTHONPATH" --env PATH "$T/bin:$PATH" --env HF_HUB_OFFLINE 1 --env VLLM_NO_USAGE_STATS 1 --env DO_NOT_TRACK 1 \
    --env VLLM_USE_FLASHINFER_SAMPLER 0 --env NCCL_NVLS_ENABLE 0 --env TORCH_SYMM_MEM_DISABLE_MULTICAST 1 \
    --env NVSHMEM_DISABLE_NVLS 1
  ;;
*)
  sed -n '2,10p' "$0" >&2
  exit 2
  ;;
esac
