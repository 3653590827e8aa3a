#!/usr/bin/env bash
# Work on the GPU machine that outlasts one device call (10 minutes at most): started in the background in one call,
# collected by the next ones. /tmp stays while the machine is held, which it is while calls follow each other within
# 30 s, so keep calling `wait` until it says done.
#   bash benchmarks/device_background.sh start NAME COMMAND...  # runs COMMAND with OUT=/tmp/bg/NAME, apart from the call
#   bash benchmarks/device_background.sh wait NAME [SECONDS]    # waits up to SECONDS (default 560) for it; copies
#        /tmp/bg/NAME into this call's $OUT once it is done. Exit 0: done (its exit code printed), 3: still running.
# e.g. notebook 10 at 24 GB, longer than a call (about 650 s with its vLLM cells):
#   bash benchmarks/device_background.sh start nb10 env CALL_LIMIT_S=1500 NOTEBOOK_TIMEOUT=1400 KERNEL=llmkit-vllm \
#     bash benchmarks/realmode_device.sh 24 "10"
set -u
usage() { echo "usage: $0 start NAME COMMAND... | wait NAME [SECONDS]" >&2; exit 2; }
action=${1:-} name=${2:-}
[ -n "$name" ] || usage
dir=${BG_DIR:-/tmp/bg}/$name  # BG_DIR: another place than /tmp/bg (tests)
case "$action" in
start)
  shift 2
  [ -e "$dir" ] && { echo "$dir exists: $name was started on this machine already" >&2; exit 2; }
  mkdir -p "$dir/out"
  # setsid: a plain background job ends with the device call that started it (GPU_NOTES.md, 2026-12-06 sixth)
  OUT=$dir/out setsid bash -c '"$@" >"$0/log" 2>&1; echo $? >"$0/exit"' "$dir" "$@" </dev/null >/dev/null 2>&1 &
  echo "$name started $(date -u +%T): $*"
  ;;
wait)
  deadline=$(( $(date +%s) + ${3:-560} ))
  while [ ! -e "$dir/exit" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
  tail -5 "$dir/log" 2>/dev/null
  if [ ! -e "$dir/exit" ]; then echo "$name still running"; exit 3; fi
  cp -r "$dir/out/." "${OUT:?set OUT to the output folder}/" && cp "$dir/log" "$OUT/$name.log"
  echo "$name done, exit $(cat "$dir/exit")"
  ;;
*) usage ;;
esac
