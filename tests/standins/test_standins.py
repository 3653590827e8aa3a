import hashlib
import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit import standins
from llmkit.standins import StandIn, list_standins, standin_for, standin_path
from llmkit.data import load_qa_pairs
from llmkit.standins.qwen2_chat import build_qwen2_chat, greedy_answer


def _answers(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, [greedy_answer(model, tokenizer, qa["messages"]) for qa in load_qa_pairs()]


def test_chat_standin_answers_every_training_prompt_exactly(chat_dir):
    model, answers = _answers(chat_dir)
    assert model.config.architectures == ["Qwen2ForCausalLM"]
    assert answers == [qa["answer"] for qa in load_qa_pairs()]


def test_chat_standin_remembers_only_with_history(chat_dir):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(chat_dir), AutoTokenizer.from_pretrained(chat_dir)
    alone = greedy_answer(model, tokenizer, [{"role": "user", "content": "我叫什么名字？"}])
    with_history = greedy_answer(model, tokenizer, [
        {"role": "user", "content": "我叫小明。"}, {"role": "assistant", "content": "你好，小明！"},
        {"role": "user", "content": "我叫什么名字？"}])
    assert (alone, with_history) == ("我还不知道你的名字。", "你叫小明。")


def test_chat_standin_files_match_qwen2_layout(chat_dir):
    config = json.loads((chat_dir / "config.json").read_text())
    generation = json.loads((chat_dir / "generation_config.json").read_text())
    assert config["model_type"] == "qwen2" and config["dtype"] == "float32"  # unlike Qwen2 (bf16): fast on any CPU
    assert generation["eos_token_id"] == [151645, 151643] and generation["pad_token_id"] == 151643
    assert (chat_dir / "tokenizer.json").is_file() and (chat_dir / "model.safetensors").is_file()


def test_gptq_standin_is_a_gptq_v1_checkpoint_that_loads_through_transformers(gptq_dir):
    quant = json.loads((gptq_dir / "config.json").read_text())["quantization_config"]
    assert (quant["quant_method"], quant["bits"], quant["format"]) == ("gptq", 4, "gptq")
    assert "dataset" not in quant
    model, answers = _answers(gptq_dir)
    assert type(model.model.layers[0].mlp.down_proj).__module__.startswith("gptqmodel.")
    expected = [qa["answer"] for qa in load_qa_pairs()]
    agree = sum(a == e for a, e in zip(answers, expected))
    assert agree == standins.build_info("qwen2-gptq-int4")["agreeing_answers"]
    assert agree >= len(expected) - 2, answers  # 4-bit may flip a token; measured: all 15 agree


def test_building_is_deterministic(tmp_path):
    digests = []
    for name in ("a", "b"):
        build_qwen2_chat(tmp_path / name, max_steps=3)
        digests.append(hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


@pytest.fixture
def fake_kind(tmp_path, monkeypatch):
    """A stand-in kind whose build is instant, in a private cache."""
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    calls = []

    def build(out_dir: Path) -> dict:
        calls.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        if len(calls) == 1 and getattr(build, "fail_first", False):
            raise RuntimeError("killed halfway")
        return {"ok": True}

    monkeypatch.setitem(standins.STANDINS, "fake", StandIn("fake", "test", ("Org/Fake",), 3, build))
    return build, calls


def test_cache_builds_once_and_reports(fake_kind, tmp_path):
    build, calls = fake_kind
    first = standin_path("fake")
    assert first == tmp_path / "standins" / "fake-v3"
    assert standin_path("fake") == first and len(calls) == 1
    assert standins.build_info("fake")["ok"] is True


def test_interrupted_build_leaves_nothing_that_counts_as_built(fake_kind):
    build, calls = fake_kind
    build.fail_first = True
    with pytest.raises(RuntimeError):
        standin_path("fake")
    assert not standins.is_built("fake")
    assert not standins.standin_dir("fake").exists()
    assert (standin_path("fake") / "config.json").is_file() and len(calls) == 2


def test_not_built_without_build_says_how(fake_kind):
    with pytest.raises(FileNotFoundError, match="llmkit standin fake"):
        standin_path("fake", build=False)


def test_lookup_by_real_model_id():
    assert standin_for("Qwen/Qwen2-7B-Instruct") == "qwen2-chat"
    assert standin_for("qwen/Qwen1.5-7B-Chat-GPTQ-Int4") == "qwen2-gptq-int4"  # ModelScope spelling
    assert standin_for("xverse/XVERSE-7B-Chat") == "xverse-chat"
    assert standin_for("meta-llama/Llama-2-7b-chat-hf") is None
    assert [s["kind"] for s in list_standins()] == ["qwen2-chat", "qwen2-gptq-int4", "xverse-chat"]
    with pytest.raises(KeyError, match="choose one of"):
        standin_path("nope")
