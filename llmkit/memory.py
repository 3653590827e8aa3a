"""First-order GPU memory estimate from a model's config facts (weights + KV cache + fixed overhead).

A simple version for notebook 00; the models issue refines it (activations, GPTQ details, measurements).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
CUDA_OVERHEAD_GIB = 1.5  # CUDA context, cuBLAS workspace, allocator slack
CARD_SIZES_GIB = [24, 40, 48, 80, 141]


@dataclass(frozen=True)
class ModelFacts:
    """The config.json numbers that decide memory, plus how the checkpoint stores its linear weights."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    weight_bits: int = 16  # 4 for GPTQ-Int4 checkpoints
    group_size: int = 128

    def linear_params(self) -> int:
        """Parameters in the decoder layers' linear projections (what GPTQ quantizes)."""
        head_dim = self.hidden // self.heads
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    def embedding_params(self) -> int:
        """Embedding and LM head parameters (never quantized)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


# Published config.json values of the course's models.
COURSE_MODELS = [
    ModelFacts("Qwen/Qwen2-7B-Instruct", 3584, 18944, 28, 28, 4, 152064),
    ModelFacts("Qwen/Qwen2-72B-Instruct", 8192, 29568, 80, 64, 8, 152064),
    ModelFacts("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", 8192, 29568, 80, 64, 8, 152064, weight_bits=4),
    ModelFacts("Qwen/Qwen1.5-7B-Chat-GPTQ-Int4", 4096, 11008, 32, 32, 32, 151936, weight_bits=4),
    ModelFacts("xverse/XVERSE-7B-Chat", 4096, 11008, 32, 32, 32, 100534),
]


def weights_gib(model: ModelFacts) -> float:
    """Weight memory: 16-bit embeddings; linear weights at ``weight_bits`` plus an fp16 scale and a packed
    zero point per group of ``group_size`` input channels.

    >>> round(weights_gib(COURSE_MODELS[0]), 1)  # Qwen2-7B-Instruct in bf16: 15.2 GB = 14.2 GiB
    14.2
    """
    linear = model.linear_params()
    if model.weight_bits >= 16:
        linear_bytes = linear * 2
    else:
        linear_bytes = linear * model.weight_bits / 8 + linear / model.group_size * (2 + model.weight_bits / 8)
    return (linear_bytes + model.embedding_params() * 2) / GIB


def kv_cache_gib(model: ModelFacts, tokens: int = 4096, batch: int = 1) -> float:
    """fp16 key and value cache for ``tokens`` of context in each of ``batch`` sequences.

    >>> round(kv_cache_gib(COURSE_MODELS[0], tokens=4096), 2)
    0.22
    """
    head_dim = model.hidden // model.heads
    return 2 * model.layers * model.kv_heads * head_dim * 2 * tokens * batch / GIB


def estimate_gib(model: ModelFacts, tokens: int = 4096, batch: int = 1) -> float:
    """Total inference memory: weights + KV cache + CUDA overhead.

    >>> 40 < estimate_gib(COURSE_MODELS[2]) < 48  # Qwen2-72B-Instruct-GPTQ-Int4
    True
    """
    return weights_gib(model) + kv_cache_gib(model, tokens, batch) + CUDA_OVERHEAD_GIB


def fit_table(tokens: int = 4096, cards: list[float] | None = None) -> list[dict]:
    """For each course model: estimated GiB and whether it fits each card size (GiB).

    >>> row = fit_table()[0]; row["model"], row["fits_24"]
    ('Qwen/Qwen2-7B-Instruct', True)
    """
    cards = cards or CARD_SIZES_GIB
    rows = []
    for model in COURSE_MODELS:
        need = estimate_gib(model, tokens)
        row = {"model": model.name, "estimate_gib": round(need, 1)}
        row.update({f"fits_{card:g}": need <= card for card in cards})
        rows.append(row)
    return rows
