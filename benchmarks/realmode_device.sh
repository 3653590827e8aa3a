#!/usr/bin/env bash
# One real-mode call on the GPU machine, in one command (inline commands there went wrong: GPU_NOTES.md, fourth session):
# install the carried wheels, write the rehearsal checkpoints the notebooks need, run them one at a time at one card
# size (the emulated card counts every process on the GPU, so never two at once), results and executed notebooks
# under $OUT (packed into logs_<CARD>gb.tar.gz at the end, beside realmode_<CARD>gb.json).
#   bash benchmarks/realmode_device.sh CARD_GB "NN NN ..." [WHEEL_FOLDER ...]
#   e.g. LLMKIT_COMMIT=abc1234 bash benchmarks/realmode_device.sh 24 "06 09" .whl .whlz
# CALL_LIMIT_S (default 590): the device call's timeout_s. Each notebook's time limit is cut to what is left of it, so
# that a notebook stopped by its limit is still written and recorded (a call killed at its limit records nothing).
# KERNEL=NAME runs them in that Jupyter kernel (10 in the vLLM kernel that benchmarks/vllm_device.sh registers).
# With 09 (llama.cpp) in the list and no llama-cpp-python wheel built on this machine yet, it builds one in the
# background first (about 5 min, GPU_NOTES.md) and runs 09 last, once the build is done. LLAMA_BUILD=1 with a list
# without 09 starts that build for the next call on the same (still held) machine.
set -u
call_start=$(date +%s)
card=$1 notebooks=$2
shift 2
export LLMKIT_STANDIN=0 PIP_NO_INDEX=1  # PIP_NO_INDEX: LLaMA-Factory's install fails at once here (no network)
with_09=; case " $notebooks " in *" 09 "*) with_09=1 ;; esac
[ -n "$with_09" ] && export LLAMA_BUILD=1  # LLAMA_BUILD=1 without 09 starts the build for a later call
source benchmarks/device_setup.sh "$@"

# 03 alone does not load Qwen2-7B: leave its 15 GB out, the 72B checkpoint (41.6 GB) needs the 64 GiB disk
models=; [ -n "$(echo " $notebooks " | sed 's/ 03 / /g' | tr -d ' ')" ] && models="Qwen/Qwen2-7B-Instruct"
case " $notebooks " in *" 03 "*) models="$models Qwen/Qwen2-72B-Instruct-GPTQ-Int4 Qwen/Qwen1.5-7B-Chat-GPTQ-Int4" ;; esac
case " $notebooks " in *" 04 "*) models="$models xverse/XVERSE-7B-Chat" ;; esac
# At most 8 files come back from $OUT (.library/device/README.md: a call with two cards' logs, executed notebooks and
# fault stacks brought none of its realmode_80gb.json): what is not a result file goes into one archive per card.
pack() {
  (cd "$OUT" && tar czf "logs_${card}gb.tar.gz" --remove-files -- *_"${card}"gb.log rehearse.log nb 2>/dev/null)
}
trap pack EXIT
start=$(date +%s)
# 03 loads GPTQ models: gptqmodel compiles its Marlin kernels (one per dtype) on first use, minutes each (03 at 80 GB
# hit its 300 s cell limit compiling them beside a llama.cpp build). A learner's notebook 00 (the doctor) has built
# the fp16 one before 03; without 00 in the list, build both here, beside the rehearsal, one process per dtype.
marlin=
case " $notebooks " in *" 03 "*) case " $notebooks " in *" 00 "*) ;; *)
  for dtype in bfloat16 float16; do
    python3 -c "import torch; from gptqmodel.utils.marlin import prewarm_marlin_extension as build
print('Marlin $dtype built:', build(torch.$dtype))" >"$OUT/marlin_${dtype}_${card}gb.log" 2>&1 &
    marlin="$marlin $!"
  done ;; esac ;; esac
# shellcheck disable=SC2086  # one argument per model id
python3 -m llmkit.cli rehearse $models >"$OUT/rehearse.log" 2>&1 || { tail -5 "$OUT/rehearse.log"; exit 1; }
echo "rehearsal checkpoints ($models): $(( $(date +%s) - start )) s"
if [ -n "$marlin" ]; then
  # shellcheck disable=SC2086  # one argument per process id
  wait $marlin
  echo "$(tail -qn1 "$OUT"/marlin_*_"${card}"gb.log | paste -sd' ') after $(( $(date +%s) - start )) s"
fi

run() {
  local limit=${NOTEBOOK_TIMEOUT:-480} left=$(( ${CALL_LIMIT_S:-590} - ($(date +%s) - call_start) - 20 ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 30 ]; then echo "$1 not started: ${left} s left of the call"; return; fi
  python3 benchmarks/realmode_gpu.py --cards "$card" --notebooks "$1" --out "$OUT" --keep "$OUT/nb" \
    --cell-timeout 300 --notebook-timeout "$limit" ${KERNEL:+--kernel "$KERNEL"} 2>&1 | tee "$OUT/$1_${card}gb.log" |
    grep -v "WARNING\|MissingIDField\|_validate(" | tail -2  # the whole log (kernels' stderr too) stays in $OUT
  # The machine's disk is 64 GiB: remove what a notebook wrote for the learner to keep (04's safetensors copy of
  # XVERSE 13.6 GiB, 07's merged model 14.9 GiB, the GGUF files 23.6 GiB), or the next notebook finds the disk full
  # (06 at 80 GB did, after 04 and the GGUF notebook). Its disk_written_gib is measured before this. 06's LoRA adapter (tens of MB,
  # notebooks/models/lora) stays: 07 reads it. KEEP_OUTPUTS=1 keeps everything (e.g. the f16 GGUF for
  # benchmarks/llamacpp_crash_probe.py).
  if [ "${KEEP_OUTPUTS:-0}" != 1 ]; then
    find notebooks/models -mindepth 1 -maxdepth 1 ! -name lora -exec rm -rf {} + 2>/dev/null
    rm -rf "$HOME/.cache/llmkit/gguf" /tmp/llmkit-0[678]-*
  fi
  echo "disk free after $1: $(df -h --output=avail / | tail -1)"
}
for number in $notebooks; do
  [ "$number" = 09 ] && continue
  run "$number"
done
if [ -n "$with_09" ]; then
  while ! grep -q "llama build exit" /tmp/lcpw.log 2>/dev/null && ! ls /tmp/lcpw/*.whl >/dev/null 2>&1; do sleep 5; done
  tail -1 /tmp/lcpw.log 2>/dev/null
  if ls /tmp/lcpw/*.whl >/dev/null 2>&1; then
    source benchmarks/device_setup.sh  # installs the built wheel and registers the llama.cpp notebook's kernel
    run 09
  else
    echo "09 not run: the llama-cpp-python build failed (/tmp/lcpw.log)"; tail -15 /tmp/lcpw.log
  fi
fi
