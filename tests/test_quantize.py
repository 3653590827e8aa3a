"""llmkit.quantize: weight-only int8/int4 with torchao, or the model's own quantize(); refuses what it cannot do."""

import pytest
import torch
from torchao.utils import TorchAOBaseTensor
from transformers import AutoModelForCausalLM

import llmkit
from llmkit import quantization
from llmkit.errors import BadInput
from llmkit.standins import standin_path
from llmkit.data import load_qa_pairs


def _fresh_xverse():
    return llmkit.load(str(standin_path("xverse-chat")))


@pytest.fixture(scope="module")
def reports():
    reports = {}
    for bits in (8, 4):
        model, tokenizer = _fresh_xverse()
        reports[bits] = (llmkit.quantize(model, bits, tokenizer=tokenizer), model)
    return reports


def test_llmkit_quantize_is_the_function():
    assert llmkit.quantize is quantization.quantize


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_shrinks_the_decoder_linears_only(reports, bits):
    report, model = reports[bits]
    assert report.bits == bits and report.method.startswith("torchao ")
    assert report.quantized.startswith("14 linear layers")  # 2 layers x (q, k, v, o, gate, up, down)
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj.weight, TorchAOBaseTensor)
    assert isinstance(layer.mlp.down_proj.weight, TorchAOBaseTensor)
    assert not isinstance(model.lm_head.weight, TorchAOBaseTensor)
    assert not isinstance(model.model.embed_tokens.weight, TorchAOBaseTensor)
    assert report.library_bytes_after == report.bytes_after < report.bytes_before


def test_quantize_prints_the_torchao_call_it_makes(capsys):
    model, _ = _fresh_xverse()
    llmkit.quantize(model, 4)
    printed = capsys.readouterr().err
    assert ("[llmkit] torchao.quantization.quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=64), "
            "filter_fn=<the decoder's 14 nn.Linear layers>)") in printed


def test_memory_and_quality_numbers_are_sane(reports):
    int8, int4 = reports[8][0], reports[4][0]
    linear_bytes = 2 * 2 * (4 * 64 * 64 + 3 * 64 * 256)  # bf16 weights of the 14 linears
    assert 0.40 < (int8.bytes_before - int8.bytes_after) / linear_bytes <= 0.50  # 8 of 16 bits, minus scales
    assert 0.60 < (int4.bytes_before - int4.bytes_after) / linear_bytes <= 0.75  # 12 of 16 bits, minus scales+zeros
    for report in (int8, int4):
        assert report.answers_total == len(load_qa_pairs())
        assert 1 < report.perplexity_before <= report.perplexity_after * 1.01
        assert report.perplexity_after < report.perplexity_before * 1.1
    assert int8.answers_agreeing == int8.answers_total
    assert int4.answers_agreeing >= int4.answers_total - 1  # measured: all 15 agree
    assert int4.perplexity_after >= int8.perplexity_after


def test_quantized_model_still_chats(reports):
    model, tokenizer = reports[4][1], _fresh_xverse()[1]
    chat = llmkit.ChatSession(model, tokenizer, max_new_tokens=48, do_sample=False)
    assert chat.ask("我叫小明。") == "你好，小明！"
    assert chat.ask("我叫什么名字？") == "你叫小明。"


class ModelWithOwnQuantize(torch.nn.Module):
    """Like XVERSE's remote code: ``quantize(bits)`` replaces the weights and returns the model."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(64, 64, bias=False)
        self.calls = []

    def quantize(self, bits):
        self.calls.append(bits)
        self.proj.weight = torch.nn.Parameter(self.proj.weight.to(torch.int8), requires_grad=False)
        return self


def test_model_with_its_own_quantize_gets_it_called(capsys):
    model = ModelWithOwnQuantize()
    report = llmkit.quantize(model, 4)
    assert model.calls == [4]
    assert report.method == "the model's own quantize(4)" and "own quantize" in capsys.readouterr().out
    assert (report.bytes_before, report.bytes_after) == (64 * 64 * 4, 64 * 64)
    assert report.perplexity_before is None and report.answers_agreeing is None  # no tokenizer given


@pytest.mark.parametrize("bits", [3, 16, "4"])
def test_bad_bits_are_refused(bits):
    with pytest.raises(BadInput, match="choose 4 or 8"):
        llmkit.quantize(torch.nn.Linear(64, 64), bits)


def test_gptq_model_is_refused(gptq_dir):
    model = AutoModelForCausalLM.from_pretrained(gptq_dir)
    with pytest.raises(BadInput, match="gptq-quantized checkpoint"):
        llmkit.quantize(model, 4)


def test_quantizing_twice_is_refused(reports):
    with pytest.raises(BadInput, match="torchao-quantized already"):
        llmkit.quantize(reports[8][1], 4)


def test_int4_needs_divisible_layer_widths_and_torchao_needs_linears():
    with pytest.raises(BadInput, match="divisible by 32"):
        llmkit.quantize(torch.nn.Sequential(torch.nn.Linear(48, 64)), 4)
    with pytest.raises(BadInput, match="no nn.Linear"):
        llmkit.quantize(torch.nn.Sequential(torch.nn.Embedding(8, 8)), 8)
