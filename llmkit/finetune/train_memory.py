"""GPU memory for LoRA and QLoRA fine-tuning, from config.json alone (the training side of ``llmkit.estimate``).

The parts, each in bytes:
- ``weights``: the frozen base. LoRA: bf16. QLoRA: linear layers in NF4 (4 bits + one 8-bit absmax per
  64 weights + one fp32 per 256 absmax blocks, "double quantization"); embeddings, LM head and norms are
  not quantized, and ``peft.prepare_model_for_kbit_training`` upcasts them to fp32.
- ``adapters``: r x (in + out) per adapted linear layer, fp32 (peft keeps adapter weights in fp32 on a 16-bit
  base); ``gradients`` (fp32) and ``optimizer`` (AdamW: two fp32 states) of the adapters only.
- ``activations``: what autograd keeps for the backward pass, per token per layer (``_saved_per_token_layer``).
  With gradient checkpointing only each layer's input is kept.
- ``logits_or_recompute``: the LM head's output for every position, its fp32 copy for the loss, the saved
  log-softmax and the gradient; with gradient checkpointing, the larger of that and one recomputed layer
  (the logits are freed before the layers are recomputed).
- ``fixed``: CUDA context, cuBLAS workspace, QLoRA's bf16 dequantization buffer.

Checked against measurements on an H100 in ``benchmarks/results/lora_gpu_h100.json``.

>>> e = estimate_training("Qwen/Qwen2-7B-Instruct", method="qlora", seq_len=512)
>>> e["method"], 5 < e["total_gib"] < 12
('qlora', True)
"""

from __future__ import annotations

import os

from llmkit.errors import BadInput
from llmkit.memory import CUBLAS_WORKSPACE_GIB, CUDA_CONTEXT_GIB, GIB, ModelFacts, weight_parts, load_facts, verdicts

METHODS = ("lora", "qlora")
NF4_BITS_PER_WEIGHT = 4 + 8 / 64 + 32 / (64 * 256)  # 4-bit codes, 8-bit absmax per 64, fp32 per 256 absmax
ADAPTER_BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weight + fp32 gradient + AdamW exp_avg and exp_avg_sq (fp32)
LOGITS_BYTES = {2: 2 + 4 + 4 + 4,  # bf16 head: 16-bit logits, fp32 copy for the loss, saved log-softmax, fp32 grad
                4: 4 + 4 + 4}  # fp32 head (QLoRA): fp32 logits, saved log-softmax, gradient
# Bytes per activation: bf16 for LoRA. For QLoRA prepare_model_for_kbit_training makes embeddings and norms fp32,
# so the residual stream and every layer's output are fp32 (bitsandbytes casts each 4-bit matmul's result back
# to its input's dtype); only the matmuls themselves run in bf16.
ACT_BYTES = {"lora": 2, "qlora": 4}


def _saved_per_token_layer(facts: ModelFacts, lora_dropout: bool, act: int) -> float:
    """Bytes autograd keeps per token in one decoder layer of a frozen base with LoRA on every linear
    (``act``: bytes per activation).

    - each RMSNorm upcasts its input to fp32 and keeps it (2 norms x 4 bytes x hidden);
    - LoRA's A matrices need their inputs: the normed input of q/k/v (shared), the attention output (o_proj),
      the normed input of gate/up (shared), the MLP product (down_proj);
    - attention (SDPA, memory-efficient) keeps q, k, v and its output; no prompt^2 scores;
    - the MLP keeps gate (SiLU's input), SiLU(gate) and up for the product's backward;
    - with lora_dropout > 0 each adapted layer also keeps its dropped input and the mask (1 byte).
    """
    h, kv, inter = facts.hidden, facts.kv_heads * facts.head_dim, facts.intermediate
    q = facts.heads * facts.head_dim
    norms = 2 * 4 * h
    lora_inputs = act * (h + q + h + inter)
    attention = act * (q + 2 * kv + q)
    mlp = act * 3 * inter
    dropout = (act + 1) * (3 * h + q + 2 * h + inter) if lora_dropout else 0
    return norms + lora_inputs + attention + mlp + dropout


def adapter_params(facts: ModelFacts, rank: int) -> int:
    """LoRA parameters with ``rank`` on every linear layer of every decoder layer: r x (in + out) each.

    >>> round(adapter_params(load_facts("Qwen/Qwen2-7B-Instruct"), 8) / 1e6, 1)
    20.2
    """
    return facts.layers * sum(rank * (i + o) for i, o in facts.linear_shapes())


def estimate_training(model: str | os.PathLike | ModelFacts, method: str = "lora", rank: int = 8, seq_len: int = 512,
                      batch: int = 1, gradient_checkpointing: bool = True, lora_dropout: float = 0.05) -> dict:
    """Peak GPU memory of one LoRA / QLoRA training step on ``batch`` sequences of ``seq_len`` tokens.

    >>> e = estimate_training("Qwen/Qwen2-7B-Instruct", "lora", seq_len=512, gradient_checkpointing=False)
    >>> round(e["weights_gib"], 1), e["verdicts"]["24"]["verdict"]
    (14.2, 'fits')
    """
    if method not in METHODS:
        raise BadInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if min(rank, seq_len, batch) < 1:
        raise BadInput(f"rank, seq_len and batch must be positive (got {rank}, {seq_len}, {batch})")
    facts = load_facts(model)
    parts = weight_parts(facts, "bf16")
    if method == "lora":
        weights = parts["embeddings"] + parts["head"] + facts.layers * parts["layer"]
        dequant = 0
    else:
        linear = sum(i * o for i, o in facts.linear_shapes()) * NF4_BITS_PER_WEIGHT / 8
        dense_params = (parts["embeddings"] + parts["head"]) / 2 + facts.layers * (parts["layer"] / 2 - sum(
            i * o for i, o in facts.linear_shapes()))
        weights = facts.layers * linear + dense_params * 4  # fp32 after prepare_model_for_kbit_training
        dequant = max(i * o for i, o in facts.linear_shapes()) * 2  # one weight dequantized to bf16 per matmul
    tokens, act = seq_len * batch, ACT_BYTES[method]
    per_layer = _saved_per_token_layer(facts, lora_dropout > 0, act) * tokens
    logits = tokens * facts.vocab * LOGITS_BYTES[act]
    if gradient_checkpointing:  # only layer inputs are kept; the loss's logits are freed before layers are recomputed
        activations, transient = facts.layers * act * facts.hidden * tokens, max(logits, per_layer)
    else:
        activations, transient = facts.layers * per_layer, logits
    terms = {
        "weights": weights,
        "adapters_grads_optimizer": adapter_params(facts, rank) * ADAPTER_BYTES_PER_PARAM,
        "activations": activations,
        "logits_or_recompute": transient,
        "fixed": (CUDA_CONTEXT_GIB + CUBLAS_WORKSPACE_GIB) * GIB + dequant,
    }
    total = sum(terms.values())
    result = {"model": facts.name, "method": method, "rank": rank, "seq_len": seq_len, "batch": batch,
              "gradient_checkpointing": gradient_checkpointing, "lora_dropout": lora_dropout,
              "adapter_params": adapter_params(facts, rank), "total_gib": round(total / GIB, 3),
              **{f"{k}_gib": round(v / GIB, 3) for k, v in terms.items()}}
    result["verdicts"] = verdicts(result)  # one card each: data-parallel training does not split the model
    return result
