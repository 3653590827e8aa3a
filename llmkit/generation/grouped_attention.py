"""SDPA attention whose decode step groups the query heads by their key/value head, also under ``torch.compile``.

Qwen2 has fewer key/value heads than query heads (7B: 28 query heads share 4 key/value heads). For one query token
transformers' SDPA attention reshapes the query to [batch, key/value heads, query heads per key/value head, dim]
and attends to the cache's own keys and values (``pack_gqa``), but not while ``torch.compile`` traces it: there it
repeats every key and value head for each of its query heads (``repeat_kv``), a copy of the filled cache in every
layer and every step. ``GraphDecoder(compile_small_ops=True)`` compiles its step, so at batch 25 with a 192-token
cache that copy is about 1.9 GB written and read again per step next to 15 GB of weights (Qwen2-7B in bf16).
``GROUPED_SDPA`` is that attention with the grouping kept under ``torch.compile``; any other call (a prompt of
several tokens, models without grouped heads) goes to transformers' own SDPA attention unchanged. A compiled
``GraphDecoder`` switches a model to it while it decodes (H100, Qwen2-7B, 25 rows: 8.86 ms per step with K and V
repeated, 6.58 ms grouped: ``benchmarks/results/decode_profile_grouped_h100.json``). On a CUDA GPU with Triton the
grouped step runs ``llmkit.generation.triton_decode``'s flash-decoding kernel instead of SDPA's (on an H100 cuDNN's
kernel took about 15 us per layer for 25 rows and a 320-token cache, several times what its bytes take).

>>> model.set_attn_implementation(register())  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_SDPA = "llmkit_grouped_sdpa"
# CUDA device index: streaming multiprocessors, read by ``register()`` before torch.compile traces the step
_MULTIPROCESSORS: dict[int, int] = {}


def grouped_query_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention; one query token attends with its heads grouped by key/value head.

    Shapes as transformers passes them: query [batch, heads, 1, dim], key and value [batch, kv_heads, length, dim],
    the mask [batch, 1, 1, length] (shared by all heads); returns [batch, 1, heads, dim] as transformers' does.

    >>> q, kv = torch.randn(2, 8, 1, 16), torch.randn(2, 2, 5, 16)
    >>> layer = type("Attention", (), {"num_key_value_groups": 4})()
    >>> grouped_query_sdpa(layer, q, kv, kv, None)[0].shape
    torch.Size([2, 1, 8, 16])
    """
    if not is_grouped_decode_step(module, query, attention_mask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups, (batch, heads, _, dim) = module.num_key_value_groups, query.shape
    if (query.device.index in _MULTIPROCESSORS and attention_mask is not None and not dropout
            and triton_fits(dim)):
        from llmkit.generation.triton_decode import grouped_decode_attention

        grouped = grouped_decode_attention(query.reshape(batch, heads // groups, groups, dim), key, value,
                                           additive_mask(attention_mask, query.dtype),
                                           scaling if scaling is not None else dim ** -0.5,
                                           _MULTIPROCESSORS[query.device.index])
        return grouped.reshape(batch, 1, heads, value.shape[-1]), None
    return grouped_sdpa(query, key, value, attention_mask, groups, dropout, scaling)


def grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
                 groups: int, dropout: float = 0.0, scaling: float | None = None) -> tuple[torch.Tensor, None]:
    """``grouped_query_sdpa``'s grouped step on ``torch.nn.functional.scaled_dot_product_attention`` (its kernel
    on a CPU, or where Triton is missing).

    >>> q, kv = torch.randn(2, 8, 1, 16), torch.randn(2, 2, 5, 16)
    >>> grouped_sdpa(q, kv, kv, None, groups=4)[0].shape
    torch.Size([2, 1, 8, 16])
    """
    batch, heads, _, dim = query.shape
    grouped = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(batch, heads // groups, groups, dim), key, value, attn_mask=attention_mask, dropout_p=dropout,
        scale=scaling)  # [batch, kv_heads, groups, dim]: head h is row h // groups, h % groups, as repeat_kv orders them
    return grouped.reshape(batch, 1, heads, value.shape[-1]), None


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A mask to add to attention scores: a boolean one (True where a row may attend) as 0 / -inf, any other as is.

    >>> additive_mask(torch.tensor([True, False]), torch.float32)
    tensor([0., -inf])
    """
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def triton_fits(head_dim: int) -> bool:
    """Whether ``llmkit.generation.triton_decode``'s kernel takes heads of this size (a power of two, at least 16:
    its tiles); other models keep SDPA's kernel.

    >>> [triton_fits(d) for d in (128, 64, 80, 8)]
    [True, True, False, False]
    """
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def is_grouped_decode_step(module, query: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """True for one query token of a layer with grouped key/value heads and a mask shared by all heads: the call
    ``grouped_query_sdpa`` groups (any other goes to transformers' SDPA attention).

    >>> layer = type("Attention", (), {"num_key_value_groups": 4})()
    >>> [is_grouped_decode_step(layer, torch.randn(2, 8, tokens, 16), None) for tokens in (1, 3)]
    [True, False]
    """
    return (query.shape[2] == 1 and getattr(module, "num_key_value_groups", 1) > 1
            and (attention_mask is None or attention_mask.shape[1] == 1))


def register() -> str:
    """Make ``GROUPED_SDPA`` an attention implementation transformers knows (SDPA's masks); returns its name. With
    Triton and a CUDA GPU, the grouped step runs ``llmkit.generation.triton_decode``'s kernel from then on.

    >>> register()
    'llmkit_grouped_sdpa'
    """
    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        for index in range(torch.cuda.device_count()):
            _MULTIPROCESSORS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    AttentionInterface.register(GROUPED_SDPA, grouped_query_sdpa)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    return GROUPED_SDPA
