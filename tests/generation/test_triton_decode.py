"""llmkit.generation.triton_decode's kernels under Triton's interpreter, so that they run on a CPU too: against SDPA
on the same grouped shapes, eagerly and inside ``torch.compile``, in one pass and split over slices of the cache."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (requirements.txt)")

# TRITON_INTERPRET is read when a kernel is defined, so the kernels run in a process that sets it before importing
INTERPRETED = r"""
import json, sys
import torch
from llmkit.generation.triton_decode import grouped_decode_attention, splits_for

torch.manual_seed(0)
cases = []
for batch, kv_heads, groups, dim, length, padded in json.loads(sys.argv[1]):
    query = torch.randn(batch, kv_heads, groups, dim, dtype=torch.float16)  # fp16: the interpreter lacks bf16
    key, value = (torch.randn(batch, kv_heads, length, dim, dtype=torch.float16) for _ in range(2))
    mask = torch.zeros(batch, 1, 1, length, dtype=torch.float16)
    mask[0, ..., :padded] = float("-inf")  # the first row left-padded (a whole slice of the cache, where split)
    mask[..., length * 3 // 4:] = torch.finfo(torch.float16).min  # the cache's unfilled tail
    expected = torch.nn.functional.scaled_dot_product_attention(
        query.float(), key.float(), value.float(), attn_mask=mask.float(), scale=dim ** -0.5)
    eager = grouped_decode_attention(query, key, value, mask, dim ** -0.5, 132)
    compiled = torch.compile(lambda q, k, v, m: grouped_decode_attention(q, k, v, m, dim ** -0.5, 132) * 2,
                             fullgraph=True)(query, key, value, mask)
    torch.library.opcheck(torch.ops.llmkit.grouped_decode_attention.default,
                          (query, key, value, mask, dim ** -0.5, 132))
    cases.append({"splits": splits_for(batch * kv_heads, length, 132), "dtype": str(eager.dtype),
                  "shape": list(eager.shape), "contiguous": eager.is_contiguous(),
                  "eager_error": (eager.float() - expected).abs().max().item(),
                  "compiled_error": (compiled.float() / 2 - expected).abs().max().item()})
print(json.dumps(cases))
"""


def test_the_decode_kernels_equal_sdpa_under_the_interpreter():
    cases = [[25, 4, 7, 128, 192, 7], [1, 2, 7, 64, 200, 70], [2, 2, 4, 32, 300, 130]]
    ran = subprocess.run([sys.executable, "-c", INTERPRETED, json.dumps(cases)], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    results = json.loads(ran.stdout.strip().splitlines()[-1])
    assert [r["splits"] for r in results] == [1, 4, 5]  # one pass for 100 (row, key/value head) pairs, else merged
    for (batch, kv_heads, groups, dim, *_), r in zip(cases, results):
        assert r["shape"] == [batch, kv_heads, groups, dim] and r["contiguous"] and r["dtype"] == "torch.float16"
        assert r["eager_error"] < 2e-3 and r["compiled_error"] < 2e-3, r
