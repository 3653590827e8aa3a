"""GPU memory needed to run a model for inference, from its config.json alone (no weights, no GPU needed).

``estimate("Qwen/Qwen2-7B-Instruct", context=8192)`` works before any download (llmkit ships the published
config.json numbers of the course's models); ``estimate("/path/to/model")`` reads the directory's config.json
and, for GPTQ checkpoints, its ``quantization_config``. The result splits into

* ``weights_gib``  -- every tensor at its stored width: 16-bit embeddings, LM head, norms and biases; the decoder
  layers' linear weights at 16 bits, or packed to 4/8 bits plus per-group fp16 scales and packed zeros;
* ``kv_cache_gib`` -- 2 (K and V) x layers x kv_heads x head_dim x 2 bytes x context x batch;
* ``overhead_gib`` -- CUDA context, cuBLAS workspace, GPTQ dequantization scratch, the prefill activation peak
  and the logits (each term has a one-line reason at its constant or in ``_overhead_terms``).

The model is checked against published peak-memory measurements (``PUBLISHED_MEASUREMENTS``, tests/test_memory.py).

>>> e = estimate("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", context=4096)
>>> e["quant"], 40 < e["total_gib"] < 44, e["verdicts"]["48"]["verdict"]
('gptq-int4', True, 'fits')
"""

from __future__ import annotations

import copy
import json
import math
import os
import reprlib
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import BadInput

GIB = 2**30
CARD_SIZES_GIB = [24, 40, 48, 80, 141]  # RTX 4090 / A100-40G / L40S, A6000 / A100-80G, H100 / H200
QUANTS = ("bf16", "fp16", "int8", "int4", "gptq-int4", "gptq-int8")
TIGHT_HEADROOM = 0.10  # "fits, tight": less than 10% of the card left over
MAX_SPLIT_GPUS = 64  # verdicts look for a device_map split over at most this many cards (a node has 8)

# --- overhead constants, each with the reason it exists ---------------------------------------------------
CUDA_CONTEXT_GIB = 0.5  # CUDA context + torch's kernel images: held outside PyTorch's allocator, seen by nvidia-smi
CUBLAS_WORKSPACE_GIB = 1 / 16  # cuBLAS/cuBLASLt workspaces (tens of MiB per stream) + small buffers (masks, rope freqs)
MLP_ACTIVATIONS = 3  # prefill peak in one MLP: act(gate(x)), up(x) and their product, each [tokens, intermediate]
HIDDEN_ACTIVATIONS = 4  # ... plus residual stream, normed input, attention output and MLP output, each [tokens, hidden]
LOGITS_BYTES = 2 + 4  # lm_head writes 16-bit logits, generate() upcasts a copy to fp32 before sampling
ATTENTION_BIAS = {"qwen2": True, "xverse": False, "llama": False, "mistral": False}  # q/k/v biases by model_type

_DTYPE_QUANT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
_QUANT_BITS = {"bf16": 16, "fp16": 16, "fp32": 32, "int8": 8, "int4": 4, "gptq-int8": 8, "gptq-int4": 4}

# --- published config.json facts of the course's models ---------------------------------------------------
# Only the fields that decide memory (plus what AutoConfig needs to rebuild the architecture). Sources:
#   [Q2-7B]  config.json of Qwen/Qwen2-7B-Instruct, as repeated by fine-tunes that name it as _name_or_path
#            (huggingface.co/ZiyiYe/Con-J-Qwen2-7B/blob/0eb531e/config.json); the published 7.62B params and 15.23 GB
#            of bf16 weights agree with these numbers (tests/test_memory.py recomputes both).
#   [Q2-72B] config.json of Qwen/Qwen2-72B-Instruct as repeated by huggingface.co/neuralmagic/Qwen2-72B-Instruct-
#            quantized.w8a8 and huggingface.co/ellamind/qwen2-72b-instruct-awq-de (_name_or_path = the Qwen repo).
#   [Q2-72B-GPTQ] bits/group_size/desc_act/sym/damp_percent: quantize_config.json of the copy
#            huggingface.co/psyche/Qwen2-72B-Instruct-GPTQ-Int4 (same 11 shards as the Qwen repo).
#            NOT CONFIRMED from Qwen's own config.json: intermediate_size 29696. Qwen padded the 72B MLP from 29568
#            to 29696 (= 232 groups of 128) in its quantized 72B checkpoints so that vLLM can split them 8 ways
#            (commit "pad intermediate_size to 29696" in Qwen/Qwen2-VL-72B-Instruct-GPTQ-Int4/-Int8/-AWQ); the
#            shard sizes listed for Qwen/Qwen2-72B-Instruct-GPTQ-Int4 (trees 6b82a33/09b3178: 3.94+3.92+4+4+3.92+4+4+
#            3.92+4+3.46, shard 11 = 2.49 GB = the fp16 lm_head, read from the copy Enfint/Qwen2-72B-Instruct-GPTQ-Int4;
#            41.65 GB in all) match 29696 (41.61 GB computed) better than 29568 (41.49 GB).
#   [Q1.5-7B] config.json of Qwen/Qwen1.5-7B-Chat (huggingface.co/Qwen/Qwen1.5-7B-Chat/blob/c893e33/config.json);
#            the GPTQ-Int4 checkpoint has the same architecture. NOT CONFIRMED from Qwen's own GPTQ config.json:
#            group_size 128, desc_act false, sym true (the values of Qwen's other GPTQ-Int4 releases and of
#            third-party GPTQ quantizations of this model), torch_dtype float16 (every GPTQ release is fp16).
#   [XV-7B]  config.json of xverse/XVERSE-7B (via huggingface.co/helenai/xverse-XVERSE-7B-ov, _name_or_path
#            xverse/XVERSE-7B). NOT CONFIRMED that XVERSE-7B-Chat's config.json is identical (the chat models of
#            the XVERSE family share their base model's architecture); no num_key_value_heads (= full multi-head
#            attention); q/k/v without bias is from the LLaMA-style modeling_xverse.py, not a config field.
_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0, "bos_token_id": 151643, "eos_token_id": 151645, "use_sliding_window": False}
_GPTQ_INT4_G128 = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
                   "damp_percent": 0.01, "true_sequential": True}

SHIPPED_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen2-7B-Instruct": {  # [Q2-7B]
        **_QWEN2, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
        "max_position_embeddings": 32768, "max_window_layers": 28, "torch_dtype": "bfloat16"},
    "Qwen/Qwen2-72B-Instruct": {  # [Q2-72B]
        **_QWEN2, "hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
        "max_position_embeddings": 32768, "max_window_layers": 80, "torch_dtype": "bfloat16"},
    "Qwen/Qwen2-72B-Instruct-GPTQ-Int4": {  # [Q2-72B] + [Q2-72B-GPTQ]
        **_QWEN2, "hidden_size": 8192, "intermediate_size": 29696, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
        "max_position_embeddings": 32768, "max_window_layers": 80, "torch_dtype": "float16",
        "quantization_config": dict(_GPTQ_INT4_G128)},
    "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4": {  # [Q1.5-7B]
        **_QWEN2, "eos_token_id": 151643, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 151936,
        "tie_word_embeddings": False, "max_position_embeddings": 32768, "max_window_layers": 28,
        "torch_dtype": "float16", "quantization_config": dict(_GPTQ_INT4_G128)},
    "xverse/XVERSE-7B-Chat": {  # [XV-7B]
        "architectures": ["XverseForCausalLM"], "model_type": "xverse", "hidden_act": "silu", "rms_norm_eps": 1e-06,
        "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 100534, "tie_word_embeddings": False,
        "max_position_embeddings": 8192, "torch_dtype": "bfloat16"},
}

# --- published peak-memory measurements ------------------------------------------------------------------
# Qwen's speed benchmarks: batch 1, generate exactly 2048 new tokens after a prompt of `prompt` tokens, on one
# A100 80GB, FlashAttention 2; memory is torch.cuda.max_memory_allocated() in GiB (the Qwen2.5 script
# examples/speed-benchmark/speed_benchmark_transformers.py; the Qwen2 page names no script) -- so it excludes the
# CUDA context. Rows that needed several GPUs are left out (the sum of per-GPU peaks taken at different moments
# is not one state of memory, and device_map="auto" may offload: 72B BF16 on 2 GPUs reports less than its weights).
# Qwen2 page (transformers 4.38.2): generate() still computed logits for every prompt position and each layer kept
# a rotary cos/sin cache -> estimate(..., legacy_transformers=True). Qwen2.5 page (transformers 4.46.0, last-token
# logits only): Qwen2.5-7B-Instruct and Qwen2.5-72B-Instruct-GPTQ-Int4 have the config.json numbers of the shipped
# Qwen2 models named in `facts` (same hidden/intermediate/layers/heads/kv heads/vocab; same 11-shard GPTQ listing).
# No Qwen1.5 or XVERSE transformers memory measurements were found.
# Not published, so not in the table: llmkit's own check on an H200 (torch 2.11, transformers 5.17, SDPA, random
# full-shape Qwen2-7B-Instruct in bf16, 256 new tokens; 64 after the 30720 prompt): max_memory_allocated 14.28 /
# 15.02 / 17.32 / 19.99 GiB for prompts 1 / 4096 / 16384 / 30720, estimate without CUDA context 14.26 / 15.02 /
# 17.31 / 19.96. nvidia-smi-visible use there was 0.70-0.76 GiB above torch's reserved memory (the CUDA context on
# that CUDA 13 stack), and the allocator reserved up to 1.7 GiB more than it had allocated at the 30k prompt.
QWEN2_SPEED = "https://qwen.readthedocs.io/en/v2.0/benchmark/speed_benchmark.html"
QWEN25_SPEED = ("https://github.com/QwenLM/Qwen2.5/blob/010c37c33b13a1ac59944b349620e13404efe97d/"
                "docs/source/benchmark/speed_benchmark.rst")
GENERATED = 2048


def _rows(model, facts, quant, measured_by_prompt, source, legacy):
    return [{"model": model, "facts": facts, "quant": quant, "prompt": prompt, "context": prompt + GENERATED,
             "measured_gib": gib, "source": source, "legacy_transformers": legacy}
            for prompt, gib in measured_by_prompt.items()]


PUBLISHED_MEASUREMENTS: list[dict] = [
    *_rows("Qwen/Qwen2-7B-Instruct", "Qwen/Qwen2-7B-Instruct", "bf16",
           {1: 14.92, 6144: 20.26, 14336: 27.71, 30720: 42.62}, QWEN2_SPEED, True),
    *_rows("Qwen/Qwen2-7B-Instruct-GPTQ-Int8", "Qwen/Qwen2-7B-Instruct", "gptq-int8",
           {1: 8.97, 6144: 14.31, 14336: 21.76, 30720: 36.67}, QWEN2_SPEED, True),
    *_rows("Qwen/Qwen2-7B-Instruct-GPTQ-Int4", "Qwen/Qwen2-7B-Instruct", "gptq-int4",
           {1: 6.06, 6144: 11.40, 14336: 18.86, 30720: 33.76}, QWEN2_SPEED, True),
    *_rows("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "gptq-int4",
           {1: 41.80, 6144: 47.90, 14336: 57.79}, QWEN2_SPEED, True),
    *_rows("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2-7B-Instruct", "bf16",
           {1: 14.38, 6144: 15.38, 14336: 16.91, 30720: 19.97}, QWEN25_SPEED, False),
    *_rows("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8", "Qwen/Qwen2-7B-Instruct", "gptq-int8",
           {1: 8.42, 6144: 9.43, 14336: 10.96, 30720: 14.01}, QWEN25_SPEED, False),
    *_rows("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "Qwen/Qwen2-7B-Instruct", "gptq-int4",
           {1: 5.52, 6144: 6.52, 14336: 8.05, 30720: 11.11}, QWEN25_SPEED, False),
    *_rows("Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4", "Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "gptq-int4",
           {1: 39.91, 6144: 42.50, 14336: 46.86}, QWEN25_SPEED, False),
]


@dataclass(frozen=True)
class ModelFacts:
    """The config.json numbers that decide memory, and how the checkpoint stores its linear weights."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    max_positions: int = 32768
    torch_dtype: str = "bfloat16"
    quantization: dict | None = None  # a GPTQ checkpoint's quantization_config

    @classmethod
    def from_config(cls, config: dict, name: str = "model") -> "ModelFacts":
        """Read the memory facts from a config.json dict (``text_config`` of multimodal models too).

        >>> ModelFacts.from_config(shipped_config("Qwen/Qwen2-7B-Instruct")).kv_heads
        4
        """
        if "text_config" in config:
            if not isinstance(config["text_config"], dict):
                raise BadInput(f"{name}: config.json field text_config must be an object, got "
                               f"{reprlib.repr(config['text_config'])}")
            config, where = config["text_config"], "text_config."
        else:
            where = ""
        facts = {attr: _whole(config, key, name, where) for attr, key in REQUIRED_FIELDS.items()}
        hidden, heads = facts["hidden"], facts["heads"]
        if hidden < heads and config.get("head_dim") is None:
            raise BadInput(f"{name}: config.json field {where}hidden_size={hidden} is smaller than "
                           f"num_attention_heads={heads} and there is no head_dim")
        model_type = str(config.get("model_type", ""))
        return cls(name=name, **facts,
                   kv_heads=_whole(config, "num_key_value_heads", name, where, default=heads),
                   head_dim=_whole(config, "head_dim", name, where, default=hidden // heads),
                   tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                   attention_bias=bool(config.get("attention_bias", ATTENTION_BIAS.get(model_type, False))),
                   max_positions=_whole(config, "max_position_embeddings", name, where, default=0),
                   torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
                   quantization=_quantization(config.get("quantization_config"), name, where))

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in_features, out_features) of one decoder layer's q, k, v, o, gate, up and down projections.

        >>> ModelFacts.from_config(shipped_config("Qwen/Qwen2-7B-Instruct")).linear_shapes()[1]
        (3584, 512)
        """
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(self.hidden, q_out), (self.hidden, kv_out), (self.hidden, kv_out), (q_out, self.hidden),
                (self.hidden, self.intermediate), (self.hidden, self.intermediate), (self.intermediate, self.hidden)]

    def default_quant(self) -> str:
        """The checkpoint's own storage: GPTQ bits from quantization_config, else its torch_dtype.

        >>> ModelFacts.from_config(shipped_config("Qwen/Qwen2-72B-Instruct-GPTQ-Int4")).default_quant()
        'gptq-int4'
        """
        q = self.quantization or {}
        method = str(q.get("quant_method", "")).lower()
        bits = q.get("bits") or q.get("w_bit") or (4 if q.get("load_in_4bit") else 8 if q.get("load_in_8bit") else None)
        if bits in (4, 8):
            return f"gptq-int{bits}" if method == "gptq" else f"int{bits}"
        return _DTYPE_QUANT.get(self.torch_dtype.replace("torch.", ""), "bf16")

    def param_count(self) -> int:
        """Parameters as the unquantized model has them (what "7.6B" on a model card counts).

        >>> round(ModelFacts.from_config(shipped_config("Qwen/Qwen2-72B-Instruct")).param_count() / 1e9, 1)
        72.7
        """
        linear = sum(i * o for i, o in self.linear_shapes())
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.attention_bias else 0
        norms = 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.layers * (linear + bias + norms) + self.hidden


REQUIRED_FIELDS = {"hidden": "hidden_size", "intermediate": "intermediate_size", "layers": "num_hidden_layers",
                   "heads": "num_attention_heads", "vocab": "vocab_size"}
MAX_FIELD = 2**31 - 1  # no real config.json number comes near: a bigger one is garbage (and would overflow floats)
_REQUIRED = object()


def _whole(config: dict, key: str, name: str, where: str = "", default=_REQUIRED, minimum: int = 1) -> int:
    """``config[key]`` as a whole number from ``minimum`` to MAX_FIELD (``default`` when missing or null), else
    ``BadInput`` naming the field.

    >>> _whole({"hidden_size": 64.0}, "hidden_size", "m")
    64
    >>> _whole({"hidden_size": -1}, "hidden_size", "m")
    Traceback (most recent call last):
    ...
    llmkit.errors.BadInput: m: config.json field hidden_size must be a whole number from 1 to 2147483647, got -1
    """
    value = config.get(key)
    if value is None:
        if default is _REQUIRED:
            raise BadInput(f"{name}: config.json lacks {where}{key} (needs {', '.join(REQUIRED_FIELDS.values())})")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (minimum <= value <= MAX_FIELD) \
            or value != int(value):
        raise BadInput(f"{name}: config.json field {where}{key} must be a whole number from {minimum} to "
                       f"{MAX_FIELD}, got {reprlib.repr(value)}")
    return int(value)


def _quantization(quant, name: str, where: str) -> dict | None:
    """A copy of a quantization_config dict with its bit width and group size checked, or None when there is none.

    >>> _quantization({"quant_method": "gptq", "bits": 4.0, "group_size": -1}, "m", "")
    {'quant_method': 'gptq', 'bits': 4, 'group_size': -1}
    """
    if not isinstance(quant, dict):
        return None
    where = f"{where}quantization_config."
    checked = {key: _whole(quant, key, name, where, default=None, minimum=-1)
               for key in ("bits", "w_bit", "group_size", "q_group_size") if quant.get(key) is not None}
    return {**quant, **checked}


def shipped_models() -> list[str]:
    """The model ids whose config.json facts ship with llmkit.

    >>> shipped_models()[0]
    'Qwen/Qwen2-7B-Instruct'
    """
    return list(SHIPPED_CONFIGS)


def shipped_config(model_id: str) -> dict:
    """A copy of the published config.json fields llmkit ships for ``model_id`` (case-insensitive).

    >>> shipped_config("qwen/qwen2-7b-instruct")["hidden_size"]
    3584
    """
    for name, config in SHIPPED_CONFIGS.items():
        if name.lower() == str(model_id).strip().lower():
            return copy.deepcopy(config)
    raise BadInput(f"unknown model {model_id!r}: not a model directory with a config.json and not one of "
                   f"llmkit's shipped ids ({', '.join(SHIPPED_CONFIGS)})")


def load_facts(model: str | os.PathLike | ModelFacts) -> ModelFacts:
    """Facts from a model directory (its config.json), a path to a config.json, or a shipped model id.

    >>> load_facts("Qwen/Qwen1.5-7B-Chat-GPTQ-Int4").quantization["group_size"]
    128
    >>> load_facts("/no/such/model")
    Traceback (most recent call last):
    ...
    llmkit.errors.BadInput: unknown model '/no/such/model': not a model directory with a config.json and not ...
    """
    if isinstance(model, ModelFacts):
        return model
    path = Path(model).expanduser()
    if path.is_dir() or (path.name == "config.json" and path.is_file()):
        config_file = path / "config.json" if path.is_dir() else path
        if not config_file.is_file():
            raise BadInput(f"{path} has no config.json: point at the model directory that holds it, "
                           f"or use a shipped id ({', '.join(SHIPPED_CONFIGS)})")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise BadInput(f"cannot read {config_file}: {error}") from None
        if not isinstance(config, dict):
            raise BadInput(f"{config_file} is not a JSON object")
        return ModelFacts.from_config(config, name=str(path if path.is_dir() else path.parent))
    return ModelFacts.from_config(shipped_config(str(model)), name=_shipped_name(str(model)))


def _shipped_name(model_id: str) -> str:
    return next(n for n in SHIPPED_CONFIGS if n.lower() == model_id.strip().lower())


def _quant_params(facts: ModelFacts, quant: str) -> tuple[int, int, bool]:
    """(bits, group_size, desc_act) for ``quant``; a checkpoint's own quantization_config supplies the group."""
    q = facts.quantization or {}
    group = int(q.get("group_size") or q.get("q_group_size") or 128)
    desc_act = bool(q.get("desc_act", False)) and quant.startswith("gptq")
    return _QUANT_BITS[quant], group, desc_act


def _linear_bytes(in_f: int, out_f: int, bits: int, group: int, desc_act: bool) -> float:
    """Bytes of one linear weight: 16/32-bit dense, or packed ints + fp16 scales + packed zeros (+ g_idx)."""
    if bits >= 16:
        return in_f * out_f * bits / 8
    groups = math.ceil(in_f / group) if group > 0 else 1  # group_size -1: one group per output column
    packed = in_f * out_f * bits / 8  # qweight: `bits` per weight, packed into int32
    scales = groups * out_f * 2  # one fp16 scale per group of input channels, per output channel
    zeros = groups * out_f * bits / 8  # qzeros: one packed `bits`-wide zero point per scale
    g_idx = in_f * 4 if desc_act else 0  # act-order: int32 group index per input channel
    return packed + scales + zeros + g_idx


def weight_parts(facts: ModelFacts, quant: str) -> dict:
    """Bytes of the embeddings, the LM head (+ final norm), and one decoder layer, stored as ``quant``.

    >>> parts = weight_parts(load_facts("Qwen/Qwen2-7B-Instruct"), "bf16")
    >>> round(parts["embeddings"] / 2**30, 2)
    1.02
    """
    bits, group, desc_act = _quant_params(facts, quant)
    dense = 4 if quant == "fp32" else 2  # embeddings, lm_head, norms and biases stay 16-bit when quantized
    linear = sum(_linear_bytes(i, o, bits, group, desc_act) for i, o in facts.linear_shapes())
    bias = (facts.heads + 2 * facts.kv_heads) * facts.head_dim if facts.attention_bias else 0
    layer = linear + (bias + 2 * facts.hidden) * dense  # + input and post-attention RMSNorm weights
    embeddings = facts.vocab * facts.hidden * dense
    head = (0 if facts.tie_word_embeddings else embeddings) + facts.hidden * dense  # lm_head + final norm
    return {"embeddings": embeddings, "head": head, "layer": layer, "dense_bytes": dense}


def _overhead_terms(facts: ModelFacts, quant: str, prompt: int, batch: int, legacy: bool) -> dict:
    """Each overhead term in bytes, for the peak of prefill (``prompt`` tokens) plus decoding."""
    act = 4 if quant == "fp32" else 2
    quantized = _QUANT_BITS[quant] < 16
    return {
        # CUDA context: allocated by the driver when torch first touches the GPU, not by PyTorch's allocator
        "cuda_context": CUDA_CONTEXT_GIB * GIB,
        # cuBLAS/cuBLASLt workspaces and small persistent buffers allocated through PyTorch's caching allocator
        "cublas_workspace": CUBLAS_WORKSPACE_GIB * GIB,
        # GPTQ kernels (exllama/Marlin) dequantize the largest weight to fp16 for many-token matmuls in a scratch buffer
        "dequant_workspace": max(i * o for i, o in facts.linear_shapes()) * 2 if quantized else 0,
        # logits: the last position only (transformers >= 4.45 passes logits_to_keep=1), fp32 copy for sampling;
        # legacy transformers computed them for every prompt position in 16 bits and then upcast all to fp32
        "logits": batch * (prompt if legacy else 1) * facts.vocab * LOGITS_BYTES,
        # prefill: all prompt tokens go through each layer at once; the MLP's three [prompt, intermediate]
        # tensors plus a few [prompt, hidden] ones are the peak (flash/SDPA attention stores no prompt^2 scores)
        "prefill_activations": batch * prompt * (MLP_ACTIVATIONS * facts.intermediate
                                                 + HIDDEN_ACTIVATIONS * facts.hidden) * act,
        # legacy (transformers 4.38, as in Qwen2's benchmark): every attention layer kept its own rotary cos+sin
        # table of max_position_embeddings rows in the model dtype
        "rotary_cache": facts.layers * 2 * facts.max_positions * facts.head_dim * act if legacy else 0,
    }


def _overhead_sum(terms: dict) -> float:
    # logits and the layer activations never coexist: lm_head runs after the last layer's activations are freed
    fixed = terms["cuda_context"] + terms["cublas_workspace"] + terms["dequant_workspace"] + terms["rotary_cache"]
    return fixed + max(terms["logits"], terms["prefill_activations"])


def estimate(model: str | os.PathLike | ModelFacts, quant: str | None = None, context: int = 4096, batch: int = 1,
             *, prompt_tokens: int | None = None, legacy_transformers: bool = False) -> dict:
    """GPU memory for inference with ``context`` tokens (prompt + generated) in each of ``batch`` sequences.

    ``model``: a model directory, a path to its config.json, or a shipped id (``shipped_models()``).
    ``quant``: one of ``QUANTS``; default: the checkpoint's own (its GPTQ quantization_config, else torch_dtype).
    ``prompt_tokens``: tokens prefilled at once (default ``context``: the worst case, a full-length prompt).
    ``legacy_transformers``: model the transformers 4.38 of Qwen2's published benchmark: generate() computed
    logits for the whole prompt (16-bit + fp32; 4.45 added logits_to_keep) and each layer kept a rotary table.

    Returns weights_gib, kv_cache_gib, overhead_gib, total_gib, the overhead terms, and ``verdicts`` for each
    card in CARD_SIZES_GIB: "fits", "fits, tight" (under 10% headroom) or "does not fit" with the number of
    such cards needed when device_map="auto" splits the layers across GPUs.

    >>> e = estimate("Qwen/Qwen2-7B-Instruct", context=4096)
    >>> e["quant"], round(e["weights_gib"], 2), round(e["kv_cache_gib"], 3), e["verdicts"]["24"]["verdict"]
    ('bf16', 14.19, 0.219, 'fits')
    >>> estimate("Qwen/Qwen2-72B-Instruct")["verdicts"]["80"]
    {'verdict': 'does not fit', 'headroom_gib': -58.17, 'cards_needed': 2}
    """
    facts = load_facts(model)
    quant = (quant or facts.default_quant()).lower()
    if quant not in _QUANT_BITS:
        raise BadInput(f"unknown quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    if int(context) < 1 or int(batch) < 1:
        raise BadInput(f"context and batch must be positive (got context={context}, batch={batch})")
    prompt = int(context) if prompt_tokens is None else int(prompt_tokens)
    if not 1 <= prompt <= int(context):
        raise BadInput(f"prompt_tokens must be between 1 and context={context} (got {prompt_tokens})")
    parts = weight_parts(facts, quant)
    weights = parts["embeddings"] + parts["head"] + facts.layers * parts["layer"]
    per_layer_kv = 2 * facts.kv_heads * facts.head_dim * parts["dense_bytes"] * int(context) * int(batch)
    terms = _overhead_terms(facts, quant, prompt, int(batch), legacy_transformers)
    overhead = _overhead_sum(terms)
    kv = facts.layers * per_layer_kv
    result = {
        "model": facts.name, "quant": quant, "context": int(context), "batch": int(batch), "prompt_tokens": prompt,
        "legacy_transformers": bool(legacy_transformers), "params": facts.param_count(),
        "weights_bytes": int(round(weights)),
        "weights_gib": round(weights / GIB, 4), "kv_cache_gib": round(kv / GIB, 4),
        "overhead_gib": round(overhead / GIB, 4), "total_gib": round((weights + kv + overhead) / GIB, 4),
        "overhead_terms": {f"{k}_gib": round(v / GIB, 4) for k, v in terms.items()},
        "parts": {"layers": facts.layers, "embeddings_gib": round(parts["embeddings"] / GIB, 6),
                  "head_gib": round(parts["head"] / GIB, 6), "per_layer_weights_gib": round(parts["layer"] / GIB, 6),
                  "per_layer_kv_gib": round(per_layer_kv / GIB, 6)},
    }
    result["verdicts"] = verdicts(result)
    return result


def per_gpu_gib(estimate: dict, n_gpus: int) -> list[float]:
    """GiB on each GPU when device_map="auto" spreads the decoder layers evenly over ``n_gpus`` GPUs.

    Embeddings sit on the first GPU, the LM head and the logits on the last; every GPU has its own CUDA context,
    workspaces and the prefill activations of its layers. ``max(...)`` is what each card must hold.

    >>> e = estimate("Qwen/Qwen2-72B-Instruct", context=4096)
    >>> [round(g, 1) for g in per_gpu_gib(e, 2)]
    [69.8, 69.8]
    >>> round(per_gpu_gib(e, 1)[0], 2) == round(e["total_gib"], 2)
    True
    """
    n_gpus = int(n_gpus)
    parts, terms = estimate["parts"], estimate["overhead_terms"]
    layers = parts["layers"]
    if not 1 <= n_gpus <= layers:
        raise BadInput(f"n_gpus must be between 1 and the number of layers ({layers}), got {n_gpus}")
    fixed = terms["cuda_context_gib"] + terms["cublas_workspace_gib"] + terms["dequant_workspace_gib"]
    per_layer = parts["per_layer_weights_gib"] + parts["per_layer_kv_gib"] + terms["rotary_cache_gib"] / layers
    gpus = []
    for i in range(n_gpus):
        count = layers // n_gpus + (1 if i < layers % n_gpus else 0)
        need = fixed + count * per_layer + (parts["embeddings_gib"] if i == 0 else 0)
        transient = terms["prefill_activations_gib"]
        if i == n_gpus - 1:
            need += parts["head_gib"]
            transient = max(transient, terms["logits_gib"])
        gpus.append(need + transient)
    return gpus


def verdicts(estimate: dict, cards: list[float] | None = None) -> dict:
    """For each card size (GiB): "fits" / "fits, tight" / "does not fit", headroom, and cards needed if split.

    >>> verdicts(estimate("Qwen/Qwen2-7B-Instruct", context=4096))["24"]
    {'verdict': 'fits', 'headroom_gib': 8.49, 'cards_needed': 1}
    """
    out = {}
    for card in cards or CARD_SIZES_GIB:
        need = estimate["total_gib"]
        if need <= card * (1 - TIGHT_HEADROOM):
            verdict = "fits"
        elif need <= card:
            verdict = "fits, tight"
        else:
            verdict = "does not fit"
        most = min(estimate["parts"]["layers"], MAX_SPLIT_GPUS) if "parts" in estimate else 1  # no parts: no split
        needed = 1 if need <= card else next(
            (n for n in range(2, most + 1) if max(per_gpu_gib(estimate, n)) <= card), None)
        out[f"{card:g}"] = {"verdict": verdict, "headroom_gib": round(card - need, 2), "cards_needed": needed}
    return out


def fit_table(tokens: int = 4096, cards: list[float] | None = None) -> list[dict]:
    """For each shipped model at its own quantization: estimated GiB and whether it fits each card size (GiB).

    >>> row = fit_table()[0]; row["model"], row["fits_24"]
    ('Qwen/Qwen2-7B-Instruct', True)
    """
    cards = cards or CARD_SIZES_GIB
    rows = []
    for name in SHIPPED_CONFIGS:
        result = estimate(name, context=tokens)
        need = result["total_gib"]
        row = {"model": name, "quant": result["quant"], "estimate_gib": round(need, 1)}
        row.update({f"fits_{card:g}": need <= card for card in cards})
        rows.append(row)
    return rows


def check_published(tolerance: float = 0.10) -> list[dict]:
    """Estimate every row of PUBLISHED_MEASUREMENTS the way it was measured (max_memory_allocated, so without
    the CUDA context) and report the relative error.

    >>> all(abs(r["error"]) < 0.10 for r in check_published())
    True
    """
    rows = []
    for m in PUBLISHED_MEASUREMENTS:
        e = estimate(m["facts"], m["quant"], context=m["context"], prompt_tokens=m["prompt"],
                     legacy_transformers=m["legacy_transformers"])
        allocated = e["total_gib"] - e["overhead_terms"]["cuda_context_gib"]
        rows.append({**m, "estimate_gib": round(allocated, 2), "total_gib": round(e["total_gib"], 2),
                     "error": round((allocated - m["measured_gib"]) / m["measured_gib"], 4),
                     "within": abs(allocated - m["measured_gib"]) <= tolerance * m["measured_gib"]})
    return rows
