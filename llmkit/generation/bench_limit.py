"""The decode speed a memory system allows, measured in the same run as the backends it judges.

Decoding one token per sequence reads every weight once, so a step cannot be faster than the weight bytes over the
memory bandwidth; ``llmkit bench`` measures that bandwidth with a large copy on the model's device (bytes read plus
bytes written, as ``benchmarks/`` counts it) and reports each backend's tokens/s as a fraction of
``prompts x limit_steps_per_s``. The KV cache and activations are left out, so the limit is a ceiling that grows
less reachable as the batch or the context grows; the strict limit counts one embedding row per token instead of
the whole table (only that row is read).

>>> fraction_of_limit(tokens_per_s=140.0, prompts=1, limit_steps_per_s=280.0)
0.5
"""

from __future__ import annotations

import time


def copy_bandwidth_gb_s(device: str = "cuda", n_bytes: int = 2**30, repeats: int = 10) -> float:
    """Median copy bandwidth of ``device`` in GB/s, counting the bytes read plus the bytes written.

    >>> copy_bandwidth_gb_s("cpu", n_bytes=2**24, repeats=3) > 0
    True
    """
    import torch

    cuda = device.startswith("cuda")
    src = torch.ones(n_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    seconds = [_timed_copy(dst, src) for _ in range(repeats)]
    del src, dst
    if cuda:
        torch.cuda.empty_cache()  # hand the buffers back: memory measured after this must not see them
    return round(2 * n_bytes / sorted(seconds)[len(seconds) // 2] / 1e9, 1)


def _timed_copy(dst, src) -> float:
    """Seconds of one copy: CUDA events on a GPU (no launch or synchronisation time counted), a clock on the CPU."""
    import torch

    if dst.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - start


def bandwidth_limit(weights_bytes: int, embedding_bytes: int, device: str = "cuda") -> dict:
    """The decode steps per second that ``device``'s measured copy bandwidth allows for these weights.

    >>> row = bandwidth_limit(weights_bytes=2**24, embedding_bytes=2**20, device="cpu")
    >>> row["strict_limit_steps_per_s"] > row["limit_steps_per_s"] > 0
    True
    """
    bandwidth = copy_bandwidth_gb_s(device, n_bytes=2**30 if device.startswith("cuda") else 2**28)
    return {"device": device, "copy_bandwidth_gb_s": bandwidth, "weights_bytes": weights_bytes,
            "limit_steps_per_s": round(bandwidth * 1e9 / weights_bytes, 1),
            "strict_limit_steps_per_s": round(bandwidth * 1e9 / (weights_bytes - embedding_bytes), 1)}


def fraction_of_limit(tokens_per_s: float, prompts: int, limit_steps_per_s: float) -> float:
    """Generated tokens/s as a fraction of the limit for ``prompts`` sequences decoded together.

    >>> fraction_of_limit(3290.7, 25, 280.5)
    0.469
    """
    return round(tokens_per_s / (prompts * limit_steps_per_s), 3)
