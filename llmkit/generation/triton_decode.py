"""The decode step's attention in Triton (flash decoding): one query token per row, its query heads grouped by
key/value head, the keys split over thread blocks where the rows alone do not fill the GPU.

cuDNN's SDPA kernel took about 15 us per layer for the 25-row step of Qwen2-7B (0.42 ms of a 6.6 ms step, H100,
``decode_profile_prefill_h100.json``) for about 3 us of cache bytes. Here each program takes one (row, key/value head)
pair's grouped query heads as the rows of one tile (7 heads padded to 16) and the cache (a single pass) or, with few
pairs, a slice of it; a second kernel then merges the slices' partial softmax sums.

``llmkit.generation.grouped_attention`` sends a compiled decode step's attention here on CUDA GPUs. With it
``llmkit bench --backend hf-fast`` on an H100 went from 6.48 to 6.04 ms per 25-row step of Qwen2-7B (3903.6 tok/s,
80.5% of the bandwidth limit) and to 171.9 tok/s at batch 1 (``benchmarks/results/bench_seed_triton_h100.json``,
``bench_batch1_triton_h100.json``); with the merge kernel, 3916.5 tok/s and 173.0 at batch 1
(``bench_seed_merge_h100.json``, ``bench_batch1_merge_h100.json``). Beside vLLM in one run (the kernel as a custom
operator): 3908.6 against 3971.1 tok/s, with vLLM's prefix cache on, which let its timed runs reuse the warm-up's
prompts (``bench_seed_hf_fast_vllm_custom_op_h100.json``; ``llmkit bench`` turns the cache off since).

On a CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported;
fp16, as the interpreter lacks bf16): ``tests/generation/test_triton_decode.py`` checks them there against SDPA.

>>> out = grouped_decode_attention(query, key, value, mask, scale, multiprocessors=132)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _partial_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, acc_ptr, stats_ptr, out_ptr, length, chunk, scale,
                    stride_qb, stride_qh, stride_qg, stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
                    stride_mb, heads_kv, splits,
                    GROUPS: tl.constexpr, GROUPS_PAD: tl.constexpr, DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                    ONE_PASS: tl.constexpr):
    pair, split = tl.program_id(0), tl.program_id(1)
    b, h = pair // heads_kv, pair % heads_kv
    rows, cols = tl.arange(0, GROUPS_PAD), tl.arange(0, DIM)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qg + cols[None, :],
                mask=rows[:, None] < GROUPS, other=0.0)
    m_i = tl.full([GROUPS_PAD], -1e30, tl.float32)
    l_i = tl.zeros([GROUPS_PAD], tl.float32)
    acc = tl.zeros([GROUPS_PAD, DIM], tl.float32)
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        inside = n < end
        k = tl.load(k_ptr + b * stride_kb + h * stride_kh + n[:, None] * stride_kl + cols[None, :],
                    mask=inside[:, None], other=0.0)
        # fp32 throughout: torch.compile passes ``scale`` as a float64 constant, which would promote the scores
        s = (tl.dot(q, tl.trans(k)) * scale).to(tl.float32)
        s += tl.load(mask_ptr + b * stride_mb + n, mask=inside, other=float("-inf")).to(tl.float32)[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        v = tl.load(v_ptr + b * stride_vb + h * stride_vh + n[:, None] * stride_vl + cols[None, :],
                    mask=inside[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    if ONE_PASS:  # the whole cache in this program: the normalised output, no merge
        out = acc / l_i[:, None]
        tl.store(out_ptr + (pair * GROUPS + rows[:, None]) * DIM + cols[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=rows[:, None] < GROUPS)
        return
    slot = pair * splits + split
    tl.store(acc_ptr + (slot * GROUPS_PAD + rows[:, None]) * DIM + cols[None, :], acc)
    tl.store(stats_ptr + (slot * 2 * GROUPS_PAD) + rows, m_i)
    tl.store(stats_ptr + (slot * 2 * GROUPS_PAD) + GROUPS_PAD + rows, l_i)


@triton.jit
def _merge_kernel(acc_ptr, stats_ptr, out_ptr, splits,
                  GROUPS: tl.constexpr, GROUPS_PAD: tl.constexpr, DIM: tl.constexpr):
    pair = tl.program_id(0)
    rows, cols = tl.arange(0, GROUPS_PAD), tl.arange(0, DIM)
    m_i = tl.full([GROUPS_PAD], -1e30, tl.float32)
    l_i = tl.zeros([GROUPS_PAD], tl.float32)
    acc = tl.zeros([GROUPS_PAD, DIM], tl.float32)
    for split in range(0, splits):  # each slice's running max, sum and weighted values, rescaled to a common max
        slot = pair * splits + split
        m = tl.load(stats_ptr + slot * 2 * GROUPS_PAD + rows)
        l = tl.load(stats_ptr + slot * 2 * GROUPS_PAD + GROUPS_PAD + rows)
        m_new = tl.maximum(m_i, m)
        alpha, beta = tl.exp(m_i - m_new), tl.exp(m - m_new)
        acc = acc * alpha[:, None] + tl.load(acc_ptr + (slot * GROUPS_PAD + rows[:, None]) * DIM + cols[None, :]) \
            * beta[:, None]
        l_i = l_i * alpha + l * beta
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + (pair * GROUPS + rows[:, None]) * DIM + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=rows[:, None] < GROUPS)


def splits_for(pairs: int, length: int, sms: int, block_n: int = 64) -> int:
    """How many slices of the cache each (row, key/value head) pair is split into: one where the pairs alone give
    half the streaming multiprocessors a program (no merge pass), else about two programs per multiprocessor, each
    at least one block of keys.

    >>> splits_for(pairs=100, length=192, sms=132), splits_for(pairs=4, length=4096, sms=132)
    (1, 64)
    """
    if 2 * pairs >= sms:
        return 1
    return max(1, min(triton.cdiv(length, block_n), triton.cdiv(2 * sms, pairs)))


@torch.library.custom_op("llmkit::grouped_decode_attention", mutates_args=())
def grouped_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                             scale: float, multiprocessors: int) -> torch.Tensor:
    """Attention of one query token per row: query [B, Hkv, G, D] (the G query heads of each key/value head),
    key and value [B, Hkv, L, D], ``mask`` additive [B, 1, 1, L] (0 where a row may attend, very negative or -inf
    where not); returns a new contiguous [B, Hkv, G, D] in the query's dtype. D: a power of two, at least 16
    (``grouped_attention.triton_fits``). ``multiprocessors``: the GPU's streaming multiprocessors (read outside
    ``torch.compile``'s trace: ``torch.cuda.get_device_properties``).

    A torch custom operator (``torch.ops.llmkit.grouped_decode_attention``): ``torch.compile`` calls it as one opaque
    node instead of tracing into the Triton kernel at every layer (``hf-fast``'s first start on a fresh H100: 53.1 s
    traced, 38.2 s as an operator: ``bench_seed_triton_h100.json``, ``bench_seed_custom_op_h100.json``).

    >>> out = grouped_decode_attention(query, key, value, mask, 128 ** -0.5, multiprocessors=132)  # doctest: +SKIP
    """
    batch, heads_kv, groups, dim = query.shape
    length = key.shape[2]
    block_n, groups_pad = 64, max(16, triton.next_power_of_2(groups))
    splits = splits_for(batch * heads_kv, length, multiprocessors, block_n)
    chunk = triton.cdiv(triton.cdiv(length, splits), block_n) * block_n
    splits = triton.cdiv(length, chunk)
    mask = mask.expand(batch, 1, 1, length).reshape(batch, length)  # a view for [B, 1, 1, L], a copy if broadcast
    if any(t.stride(-1) != 1 for t in (query, key, value, mask)):
        raise ValueError("grouped_decode_attention needs the last dimension of query, key, value and mask contiguous")
    out = torch.empty(batch, heads_kv, groups, dim, dtype=query.dtype, device=query.device)
    acc = torch.empty(batch * heads_kv, splits, groups_pad, dim, dtype=torch.float32, device=query.device)
    stats = torch.empty(batch * heads_kv, splits, 2, groups_pad, dtype=torch.float32, device=query.device)
    _partial_kernel[(batch * heads_kv, splits)](
        query, key, value, mask, acc, stats, out, length, chunk, scale,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), mask.stride(0), heads_kv, splits,
        GROUPS=groups, GROUPS_PAD=groups_pad, DIM=dim, BLOCK_N=block_n, ONE_PASS=splits == 1)
    if splits > 1:
        _merge_kernel[(batch * heads_kv,)](acc, stats, out, splits, GROUPS=groups, GROUPS_PAD=groups_pad, DIM=dim)
    return out


@grouped_decode_attention.register_fake
def _grouped_decode_attention_shape(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                                    scale: float, multiprocessors: int) -> torch.Tensor:
    return torch.empty_like(query, memory_format=torch.contiguous_format)
