"""grouped_query_sdpa keeps the key/value heads as they are in a compiled decode step, where transformers' SDPA
attention repeats them for every query head (llmkit.generation.grouped_attention)."""

import pytest
import torch

import llmkit
from llmkit.generation import grouped_attention
from llmkit.generation.fastdecode import GraphDecoder


def key_heads_seen(model, monkeypatch) -> set[tuple[int, int]]:
    """(query heads or groups, key heads) of every one-token SDPA call in a compiled decoder's steps."""
    seen, real = set(), torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, **kwargs):
        if query.shape[2] <= model.config.num_attention_heads // model.config.num_key_value_heads:
            seen.add((query.shape[1], key.shape[1]))
        return real(query, key, value, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    if model.device.type == "cuda":  # there llmkit.generation.triton_decode's kernel takes the grouped step
        from llmkit.generation import triton_decode

        kernel = triton_decode.grouped_decode_attention

        def spy_kernel(query, key, *args):
            seen.add((query.shape[1], key.shape[1]))
            return kernel(query, key, *args)

        monkeypatch.setattr(triton_decode, "grouped_decode_attention", spy_kernel)
    ids = torch.randint(100, 1000, (2, 8), device=model.device)
    with GraphDecoder(model, 2, 20, compile_small_ops=True) as decoder:
        decoder.generate(ids, torch.ones_like(ids), max_new_tokens=3)
        during = model.config._attn_implementation
    torch._dynamo.reset()
    assert during == grouped_attention.GROUPED_SDPA
    return seen


def test_a_compiled_decode_step_attends_with_the_caches_own_key_value_heads(chat_dir, monkeypatch):
    model, _ = llmkit.load(str(chat_dir))
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    assert heads > kv_heads and model.config._attn_implementation == "sdpa"
    assert key_heads_seen(model, monkeypatch) == {(kv_heads, kv_heads)}  # not (heads, heads): K and V not repeated
    assert model.config._attn_implementation == "sdpa"  # the model's own attention again after the decoder


def test_a_model_on_eager_attention_keeps_it_in_a_compiled_decoder(chat_dir):
    model, _ = llmkit.load(str(chat_dir))
    model.set_attn_implementation("eager")
    with GraphDecoder(model, 1, 12, compile_small_ops=True):
        assert model.config._attn_implementation == "eager"
    torch._dynamo.reset()


def test_grouped_heads_equal_repeated_heads_with_a_padding_mask():
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 8, 1, 16), torch.randn(3, 2, 6, 16), torch.randn(3, 2, 6, 16)
    mask = torch.zeros(3, 1, 1, 6)
    mask[0, ..., :2] = torch.finfo(torch.float32).min  # a left-padded row
    layer = type("Attention", (), {"num_key_value_groups": 4})()
    ours = grouped_attention.grouped_query_sdpa(layer, query, key, value, mask, scaling=0.25)[0]
    repeated = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(4, dim=1), value.repeat_interleave(4, dim=1), attn_mask=mask, scale=0.25)
    torch.testing.assert_close(ours, repeated.transpose(1, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton decode kernel runs on CUDA GPUs")
@pytest.mark.parametrize("batch,kv_heads,groups,dim,length", [(25, 4, 7, 128, 192), (1, 4, 7, 128, 4096),
                                                               (3, 2, 4, 64, 100)])
def test_the_triton_decode_kernel_equals_sdpa(batch, kv_heads, groups, dim, length):
    """llmkit.generation.triton_decode against SDPA with K and V repeated: left padding and an unfilled cache tail
    masked, in one pass (25 rows) and with the keys split over thread blocks (4096 keys at batch 1; 3 rows)."""
    from llmkit.generation.triton_decode import grouped_decode_attention

    torch.manual_seed(0)
    query = torch.randn(batch, 1, kv_heads * groups, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    key, value = (torch.randn(batch, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = torch.zeros(batch, 1, 1, length, device="cuda", dtype=torch.bfloat16)
    mask[0, ..., :7] = torch.finfo(torch.bfloat16).min  # the first row left-padded
    mask[..., length * 3 // 4:] = torch.finfo(torch.bfloat16).min  # the cache's unfilled tail
    expected = torch.nn.functional.scaled_dot_product_attention(
        query.float(), key.float().repeat_interleave(groups, 1), value.float().repeat_interleave(groups, 1),
        attn_mask=mask.float())
    ours = grouped_decode_attention(query.reshape(batch, kv_heads, groups, dim), key, value, mask, dim ** -0.5,
                                    torch.cuda.get_device_properties(0).multi_processor_count)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.reshape(batch, kv_heads * groups, 1, dim).float(), expected, atol=2e-2, rtol=2e-2)
    # a custom operator torch.compile can place: its fake (shape-only) implementation agrees with the kernel
    torch.library.opcheck(torch.ops.llmkit.grouped_decode_attention.default,
                          (query.reshape(batch, kv_heads, groups, dim), key, value, mask, dim ** -0.5, 132))
