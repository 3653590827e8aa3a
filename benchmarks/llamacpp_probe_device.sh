#!/usr/bin/env bash
# One GPU call for notebook 09's crashes (benchmarks/llamacpp_crash_probe.py): llama-cpp-python's CUDA build, a
# 2-layer Qwen2 with random weights and Qwen2-7B-Instruct's real config and tokenizer as a small GGUF (loads in a
# second), every probe variant, and the dynamic linker's bindings of the Agg extension where it crashes.
#   bash benchmarks/llamacpp_probe_device.sh .whl .whlz      # results under $OUT
set -u
export LLAMA_BUILD=1 LLMKIT_STANDIN=0
source benchmarks/device_setup.sh "$@"
python3 -m llmkit.cli rehearse Qwen/Qwen2-7B-Instruct >"$OUT/rehearse.log" 2>&1 || { tail -5 "$OUT/rehearse.log"; exit 1; }
mkdir -p /tmp/probe
python3 - <<'PY' || exit 1
import torch
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from llmkit.deploy import gguf

real = snapshot_download("Qwen/Qwen2-7B-Instruct", local_files_only=True)
config = AutoConfig.from_pretrained(real)
config.update({"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
               "num_key_value_heads": 2, "layer_types": config.layer_types[:2]})
AutoModelForCausalLM.from_config(config, dtype=torch.float16).save_pretrained("/tmp/probe/small")
AutoTokenizer.from_pretrained(real).save_pretrained("/tmp/probe/small")
print("GGUF:", gguf.convert("/tmp/probe/small", "/tmp/probe/model-f16.gguf", overwrite=True))
PY
until grep -q "llama build exit" /tmp/lcpw.log 2>/dev/null; do sleep 5; done
tail -1 /tmp/lcpw.log
source benchmarks/device_setup.sh  # installs the wheel just built, registers the llama.cpp kernel
python3 benchmarks/llamacpp_crash_probe.py /tmp/probe/model-f16.gguf --out "$OUT/llamacpp_crash_probe.json"
# which libraries the Agg extension's symbols were bound to, when it is imported after llama_cpp
rm -f /tmp/ldd.*
LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/ldd timeout 60 python3 -c "import llama_cpp; import matplotlib.backends.backend_agg"
echo "exit $?"
grep -h "file=.*_backend_agg" /tmp/ldd.* | grep -v "to /lib/x86_64-linux-gnu/lib\(c\|m\|stdc++\|gcc_s\)\.so\|/python3" \
  | head -200 >"$OUT/agg_bindings.txt"
tail -q -n 25 /tmp/ldd.* >"$OUT/ld_debug_tail.txt"
echo "bindings of Agg to other libraries: $(wc -l <"$OUT/agg_bindings.txt")"
