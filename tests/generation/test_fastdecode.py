"""GraphDecoder must produce exactly the tokens of plain greedy ``generate`` (CPU: the same steps, eagerly)."""

import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llmkit
from llmkit.generation.bench import GREEDY
from llmkit.generation.fastdecode import GraphDecoder, greedy_generate
from llmkit.generation.grouped_attention import GROUPED_SDPA

QUESTIONS = ["你好", "Who are you? Tell me more, please.", "1+1=?"]


def left_padded(tokenizer, questions, width=None):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in questions]
    padding = {"padding": "max_length", "max_length": width} if width else {"padding": True}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where llmkit.load puts the model
    return tokenizer(texts, return_tensors="pt", padding_side="left", **padding).to(device)


def reference(model, tokenizer, batch, new_tokens):
    out = model.generate(**batch, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id, **GREEDY)
    return out[:, batch["input_ids"].shape[1]:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_left_padded_equals_generate(chat_dir, dtype):
    model, tokenizer = llmkit.load(str(chat_dir), dtype=dtype)
    batch = left_padded(tokenizer, QUESTIONS)
    assert (batch["attention_mask"] == 0).any(), "the test needs padding"
    ours = greedy_generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=20)
    assert ours.shape == (3, 20)
    assert torch.equal(ours, reference(model, tokenizer, batch, 20))
    assert tokenizer.decode(ours[0], skip_special_tokens=True) == "你好！我是 llmkit 的小测试模型。"


def test_decoder_is_reused_for_other_prompts_and_checks_its_size(chat_dir):
    model, tokenizer = llmkit.load(str(chat_dir))
    decoder = GraphDecoder(model, batch_size=1, max_len=64)
    captured = []
    for question in ["你好", "我叫小明，你好"]:  # different prompt lengths through the same buffers
        batch = left_padded(tokenizer, [question])
        assert torch.equal(decoder.generate(batch["input_ids"], batch["attention_mask"], 12),
                           reference(model, tokenizer, batch, 12))
        captured.append("capture_s" in decoder.timings)  # the timings are the last call's
    assert captured == [model.device.type == "cuda", False]  # the step graph is captured once, on CUDA only
    assert {"prefill_s", "decode_s"} <= set(decoder.timings)
    with pytest.raises(ValueError, match="make a GraphDecoder of that size"):
        decoder.generate(batch["input_ids"], batch["attention_mask"], 64)


@pytest.mark.parametrize("rows", [1, 3])
def test_captured_prefill_replays_other_prompts_of_the_same_shape(chat_dir, rows):
    """capture_prefill: the prompt's forward pass captured once per prompt shape (on CUDA) and replayed for other
    prompts of that shape, the same tokens as generate(); on the CPU the prefill stays eager."""
    model, tokenizer = llmkit.load(str(chat_dir))
    first = left_padded(tokenizer, QUESTIONS[:rows])
    width = first["input_ids"].shape[1]
    other = left_padded(tokenizer, ["Hi", "1+1=?", "你好"][:rows], width=width)  # same shape, other tokens and padding
    assert not torch.equal(first["input_ids"], other["input_ids"])
    with GraphDecoder(model, rows, width + 10, capture_prefill=True) as decoder:
        for batch in (first, other, first):
            assert torch.equal(decoder.generate(batch["input_ids"], batch["attention_mask"], 10),
                               reference(model, tokenizer, batch, 10))
        assert len(decoder.prefill_graphs) == (1 if model.device.type == "cuda" else 0)


def test_compiled_prefill_equals_generate_and_compiles_once_per_prompt_shape(chat_dir):
    """compile_prefill: the prompt's forward pass through the compiled model too (a graph per prompt shape on
    CUDA); the same tokens as generate(), left padding included, for a second prompt of the same shape."""
    model, tokenizer = llmkit.load(str(chat_dir))
    first = left_padded(tokenizer, QUESTIONS)
    other = left_padded(tokenizer, ["Hi", "1+1=?", "你好"], width=first["input_ids"].shape[1])
    torch._dynamo.reset()
    with GraphDecoder(model, 3, first["input_ids"].shape[1] + 10, compile_small_ops=True, fuse_projections=True,
                      capture_prefill=True, compile_prefill=True) as decoder:
        assert decoder.compile_prefill
        for batch in (first, other):
            assert torch.equal(decoder.generate(batch["input_ids"], batch["attention_mask"], 10),
                               reference(model, tokenizer, batch, 10))
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames >= 2, "the prompt's forward pass was not compiled beside the step"
    assert not GraphDecoder(model, 1, 8, compile_prefill=True).compile_prefill  # only with compile_small_ops


def test_compiled_step_with_gptq_layers_behind_an_opaque_op(gptq_dir):
    model, tokenizer = llmkit.load(str(gptq_dir))
    batch = left_padded(tokenizer, QUESTIONS[:2])
    expected = reference(model, tokenizer, batch, 10)
    decoder = GraphDecoder(model, batch_size=2, max_len=batch["input_ids"].shape[1] + 10, compile_small_ops=True)
    assert torch.equal(decoder.generate(batch["input_ids"], batch["attention_mask"], 10), expected)
    layer = model.model.layers[0].mlp.down_proj
    assert hasattr(layer, "llmkit_eager_forward")
    assert torch.equal(reference(model, tokenizer, batch, 10), expected)  # plain generate still works while patched
    with GraphDecoder(model, batch_size=2, max_len=batch["input_ids"].shape[1] + 10, compile_small_ops=True) as second:
        assert torch.equal(second.generate(batch["input_ids"], batch["attention_mask"], 10), expected)
    assert hasattr(layer, "llmkit_eager_forward")  # the first decoder still uses the patch
    decoder.close()
    assert not hasattr(layer, "llmkit_eager_forward") and "forward" not in vars(layer)  # the model as it was
    assert torch.equal(reference(model, tokenizer, batch, 10), expected)
    del second, decoder  # closing twice (here by the garbage collector) changes nothing
    assert "forward" not in vars(layer)
    dropped = GraphDecoder(model, batch_size=2, max_len=batch["input_ids"].shape[1] + 10, compile_small_ops=True)
    assert hasattr(layer, "llmkit_eager_forward")
    del dropped  # never closed: restored when it is collected
    gc.collect()
    assert not hasattr(layer, "llmkit_eager_forward")


def test_fused_projections_equal_generate_share_and_give_the_layers_back(chat_dir):
    """fuse_projections: one product for q, k and v and one for gate and up while a decoder lives; the same tokens;
    then the model as it was."""
    model, tokenizer = llmkit.load(str(chat_dir))
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    n_parameters = sum(p.numel() for p in model.parameters())
    batch = left_padded(tokenizer, QUESTIONS)
    expected = reference(model, tokenizer, batch, 16)
    first = GraphDecoder(model, batch_size=3, max_len=batch["input_ids"].shape[1] + 16, fuse_projections=True)
    assert type(attention.k_proj) is not torch.nn.Linear and type(mlp.up_proj) is not torch.nn.Linear  # fused
    for fused in (attention.q_proj, mlp.gate_proj):
        storages = {layer.weight.untyped_storage().data_ptr() for layer in fused.originals}
        assert len(storages) == 1  # views of one tensor
    assert sum(p.numel() for p in model.parameters()) == n_parameters  # views, counted once, nothing copied
    assert torch.equal(first.generate(batch["input_ids"], batch["attention_mask"], 16), expected)
    with GraphDecoder(model, batch_size=3, max_len=batch["input_ids"].shape[1] + 16, fuse_projections=True) as second:
        assert torch.equal(second.generate(batch["input_ids"], batch["attention_mask"], 16), expected)
    assert type(attention.k_proj) is not torch.nn.Linear  # the first decoder still uses the fusion
    assert torch.equal(first.generate(batch["input_ids"], batch["attention_mask"], 16), expected)
    first.close()
    layers = [getattr(attention, name) for name in ("q_proj", "k_proj", "v_proj")]
    layers += [getattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")]
    assert all(type(layer) is torch.nn.Linear for layer in layers)
    assert len({layer.weight.untyped_storage().data_ptr() for layer in layers}) == 6  # weights of their own again
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    assert torch.equal(reference(model, tokenizer, batch, 16), expected)
    with GraphDecoder(model, batch_size=3, max_len=batch["input_ids"].shape[1] + 16, fuse_projections=True,
                      compile_small_ops=True) as compiled:  # hf-fast's path: torch.compile traces the fused product
        assert torch.equal(compiled.generate(batch["input_ids"], batch["attention_mask"], 16), expected)


def test_fused_projections_called_in_another_order_fail_clearly(chat_dir, monkeypatch):
    """A model whose MLP calls up before gate would get gate's slice for up: it must stop, not decode garbage."""
    model, tokenizer = llmkit.load(str(chat_dir))
    mlp_class = type(model.model.layers[0].mlp)
    monkeypatch.setattr(mlp_class, "forward",
                        lambda self, x: self.down_proj(self.up_proj(x) * self.act_fn(self.gate_proj(x))))
    batch = left_padded(tokenizer, QUESTIONS[:1])
    with GraphDecoder(model, 1, batch["input_ids"].shape[1] + 4, fuse_projections=True) as decoder:
        with pytest.raises(RuntimeError, match="up_proj did not follow gate_proj.*fuse_projections=False"):
            decoder.generate(batch["input_ids"], batch["attention_mask"], 4)


class MarlinLinear(torch.nn.Module):
    """Stands in for gptqmodel's GPTQ Marlin layer (there is no Marlin on a CPU): ``qweight`` [in, out] and ``scales``
    [1, out] as buffers with the output last, as Marlin's packed tiles have it; y = x @ qweight * scales."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features, self.bias = linear.in_features, linear.out_features, None
        self.bits, self.group_size, self._marlin_tile_padding, self.adapter = 4, 128, None, None
        self.register_buffer("qweight", linear.weight.detach().t().contiguous())
        weight = linear.weight  # on the GPU in a GPU run: every buffer beside it
        ones = torch.ones(1, linear.out_features, dtype=weight.dtype, device=weight.device)
        self.register_buffer("scales", ones)
        self.register_buffer("g_idx", torch.empty(0, dtype=torch.int32, device=weight.device))

    def forward(self, x):
        return x @ self.qweight * self.scales


MarlinLinear.__module__ = "gptqmodel.nn_modules.qlinear.marlin"  # where fastdecode recognises Marlin layers


def test_marlin_layers_fuse_behind_the_op_and_are_given_back():
    """GPTQ Marlin layers of one setting fuse like plain ones (their packed tensors side by side along the output
    dimension) and the fused product goes behind the compiled step's opaque op; the same tokens; then the layers as
    they were, each with tensors of its own. On a GPU, decode_profile_gpu.py's fused variants compare real Marlin's
    fused product with the separate layers (fused_qkv_relative_error)."""
    from llmkit.generation.fastdecode import FUSED_GROUPS
    from llmkit.standins import standin_path

    model, tokenizer = llmkit.load(str(standin_path("xverse-chat")))  # q, k, v: 64 wide each, gate and up 256
    for layer in model.model.layers:
        for module, names in zip((layer.self_attn, layer.mlp), FUSED_GROUPS):
            for name in names:
                setattr(module, name, MarlinLinear(getattr(module, name)))
    batch = left_padded(tokenizer, QUESTIONS[:2])
    expected = reference(model, tokenizer, batch, 12)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    attention = model.model.layers[0].self_attn
    with GraphDecoder(model, 2, batch["input_ids"].shape[1] + 12, fuse_projections=True,
                      compile_small_ops=True) as decoder:
        fused = attention.q_proj
        assert type(fused.product) is MarlinLinear and fused.product.out_features == 3 * 64
        assert hasattr(fused.product, "llmkit_eager_forward")  # compiled around, not traced
        storages = {layer.qweight.untyped_storage().data_ptr() for layer in (*fused.originals, fused.product)}
        assert len(storages) == 1  # views of the product's tensor: nothing held twice
        assert torch.equal(decoder.generate(batch["input_ids"], batch["attention_mask"], 12), expected)
    layers = [attention.q_proj, attention.k_proj, attention.v_proj]
    assert all(type(layer) is MarlinLinear and layer.qweight.is_contiguous() for layer in layers)
    assert len({layer.qweight.untyped_storage().data_ptr() for layer in layers}) == 3
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)


def test_llama_architecture_too(tmp_path):
    """Llama's forward builds its mask without Qwen2's shortcut: the decoder's 4-D mask must work there too."""
    from llmkit.standins import standin_path

    model, tokenizer = llmkit.load(str(standin_path("xverse-chat")))  # loads as LlamaForCausalLM
    assert type(model).__name__ == "LlamaForCausalLM"
    batch = left_padded(tokenizer, ["你好", "What is the capital of France?"])
    ours = greedy_generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=12)
    assert torch.equal(ours, reference(model, tokenizer, batch, 12))
    with GraphDecoder(model, 2, batch["input_ids"].shape[1] + 12, fuse_projections=True) as fused:  # Llama: no bias
        assert type(model.model.layers[0].self_attn.v_proj) is not torch.nn.Linear
        assert type(model.model.layers[0].mlp.up_proj) is not torch.nn.Linear
        assert torch.equal(fused.generate(batch["input_ids"], batch["attention_mask"], 12), ours)


def test_the_decode_profile_benchmark_runs_on_the_cpu(tmp_path):
    """benchmarks/decode_profile_gpu.py (issue 18's profile) on the stand-in: every CPU-side measurement is there."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "decode_profile_gpu.py"), "--batch", "1", "2",
                           "--out", str(out)], env={**os.environ, "LLMKIT_STANDIN": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["batches"]
    assert [r["batch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["step_s"] > 0 and row["argmax_s"] > 0 and row["prefill_s"] > 0 and row["prefill_captured_s"] > 0
        assert row["variants"]["fused"]["step_s"] > 0
        assert row["variants"]["fused"]["first_call_s"] > 0 and row["variants"]["fused"]["prefill_s"] > 0
        assert 0 <= row["variants"]["fused"]["fused_qkv_relative_error"] < 1e-3
        assert set(row["step_s_by_max_len"]) == {"128", "512", "2048"}


@pytest.mark.parametrize("choice,compiled", [("eager", False), ("sdpa-efficient", False), ("sdpa-efficient", True),
                                             ("eager", True), (None, True), ("grouped-matmul", False),
                                             ("grouped-matmul", True), ("grouped-flex", True),
                                             ("grouped-sdpa", True)])
def test_the_profiles_attention_variants_decode_the_same_and_are_undone(chat_dir, choice, compiled):
    """decode_profile_gpu.py's attention variants: other attention kernels, the same tokens, the model left as it was;
    a compiled step on SDPA groups the query heads (llmkit.generation.grouped_attention; hf-fast's path)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from decode_profile_gpu import PROFILE_ATTENTION, attention, profile_attention_name

    model, tokenizer = llmkit.load(str(chat_dir))
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped heads, as in Qwen2-7B
    batch = left_padded(tokenizer, QUESTIONS)
    before = model.config._attn_implementation
    expected = ("eager" if choice == "eager" else profile_attention_name(choice) if choice in PROFILE_ATTENTION
                else GROUPED_SDPA if compiled else before)
    with attention(model, choice), GraphDecoder(model, 3, batch["input_ids"].shape[1] + 12, fuse_projections=True,
                                                compile_small_ops=compiled) as decoder:
        assert model.config._attn_implementation == expected
        ours = decoder.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=12)
    assert model.config._attn_implementation == before
    assert torch.equal(ours, reference(model, tokenizer, batch, 12))
    with pytest.raises(ValueError, match="unknown attention choice"), attention(model, "flash"):
        pass


def test_compiled_decoders_of_other_sizes_are_compiled_for_their_own_shapes(chat_dir):
    """A second compiled decoder (other batch size and length) in the same process is not turned into a
    dynamic-shape graph by torch.compile's automatic dynamic shapes (its kernels would be slower, e.g. batch 25 after
    batch 1 in one benchmark process)."""
    logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    records, handler, level = [], logging.Handler(), logger.level
    handler.emit = records.append
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        model, tokenizer = llmkit.load(str(chat_dir))
        for rows, length in ((1, 24), (2, 20)):
            ids = torch.randint(100, 1000, (rows, 8))
            with GraphDecoder(model, rows, length, compile_small_ops=True, fuse_projections=True) as decoder:
                assert decoder.generate(ids, torch.ones_like(ids), max_new_tokens=3).shape == (rows, 3)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert records, "torch's shape log said nothing: the check below would prove nothing"
    assert not [r.getMessage() for r in records if "as dynamic" in r.getMessage()]
