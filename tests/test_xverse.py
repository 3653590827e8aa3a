"""XVERSE without remote code: the stand-in's files follow XVERSE's published format and load as a Llama."""

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, LlamaForCausalLM

import llmkit
from llmkit.errors import BadInput
from llmkit.memory import estimate, shipped_config
from llmkit.standins import standin_path
from llmkit.data import load_qa_pairs
from llmkit.standins.qwen2_chat import greedy_answer
from llmkit.standins.xverse_chat import build_xverse_chat
from llmkit.xverse import XVERSE_CHAT_TEMPLATE, with_xverse_chat_template, xverse_llama_config, xverse_to_llama_config

# Keys of XVERSE's config.json (XverseConfig's fields: configuration_xverse.py; auto_map: loaded with remote code).
XVERSE_CONFIG_KEYS = {
    "architectures", "auto_map", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range",
    "intermediate_size", "max_position_embeddings", "max_tokenizer_truncation", "model_type", "num_attention_heads",
    "num_hidden_layers", "pad_token_id", "rms_norm_eps", "tie_word_embeddings", "torch_dtype", "use_cache", "vocab_size",
}
# Tensor names of XVERSE's checkpoints, as modeling_xverse.py names its modules (GPTQModel's XverseGPTQ lists the
# per-layer linear modules; vLLM's XverseForCausalLM.load_weights reads the same names).
XVERSE_GLOBAL_TENSORS = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
XVERSE_LAYER_TENSORS = [
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
]


@pytest.fixture(scope="module")
def xverse_dir():
    return standin_path("xverse-chat")


@pytest.fixture(scope="module")
def loaded(xverse_dir):
    return llmkit.load(str(xverse_dir))


def _tensor_names(model_dir):
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        return set(weights.keys())


def test_standin_config_has_xverse_published_fields(xverse_dir):
    config = json.loads((xverse_dir / "config.json").read_text())
    assert XVERSE_CONFIG_KEYS <= set(config)
    assert (config["model_type"], config["architectures"]) == ("xverse", ["XverseForCausalLM"])
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_xverse.XverseForCausalLM"
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (1, 2, 3)
    assert "num_key_value_heads" not in config  # XVERSE-7B: full multi-head attention


def test_standin_tensor_names_are_xverse_names_and_llama_names(xverse_dir):
    config = json.loads((xverse_dir / "config.json").read_text())
    expected = XVERSE_GLOBAL_TENSORS | {f"model.layers.{i}.{name}" for i in range(config["num_hidden_layers"])
                                        for name in XVERSE_LAYER_TENSORS}
    assert _tensor_names(xverse_dir) == expected
    with torch.device("meta"):
        llama = LlamaForCausalLM(xverse_to_llama_config(config))
    assert set(llama.state_dict()) == expected  # same names: no renaming needed


def test_load_goes_through_llama_without_remote_code_and_answers_exactly(loaded):
    model, tokenizer = loaded
    assert type(model) is LlamaForCausalLM and model.dtype == torch.bfloat16
    answers = [greedy_answer(model, tokenizer, qa["messages"]) for qa in load_qa_pairs()]
    assert answers == [qa["answer"] for qa in load_qa_pairs()]


def test_remote_code_route_needs_a_pinned_revision(xverse_dir):
    with pytest.raises(BadInput, match="revision"):
        llmkit.load(str(xverse_dir), trust_remote_code=True)


def test_chat_template_reproduces_xverse_prompt_format(loaded):
    _, tokenizer = loaded
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "我叫小明。"},
                {"role": "assistant", "content": "你好，小明！"}, {"role": "user", "content": "我叫什么名字？"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == ("Be brief.\n\nHuman: 我叫小明。\n\nAssistant: 你好，小明！<|endoftext|>"
                      "Human: 我叫什么名字？\n\nAssistant: ")
    ids = tokenizer.apply_chat_template(messages[1:2], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert tokenizer.bos_token_id not in ids  # XVERSE-Chat prompts start without BOS
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 3


def test_standin_remembers_a_name_only_with_history(loaded):
    model, tokenizer = loaded
    alone = greedy_answer(model, tokenizer, [{"role": "user", "content": "What is my name?"}])
    with_history = greedy_answer(model, tokenizer, [
        {"role": "user", "content": "My name is Alice."}, {"role": "assistant", "content": "Nice to meet you, Alice!"},
        {"role": "user", "content": "What is my name?"}])
    assert (alone, with_history) == ("I do not know your name yet.", "Your name is Alice.")


def test_shipped_xverse_7b_chat_config_converts_to_a_7_3b_llama():
    config = xverse_to_llama_config(shipped_config("xverse/XVERSE-7B-Chat"))
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (4096, 11008, 32)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (32, 32, 100534)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (2, 3, 1)
    assert config.max_position_embeddings == 8192 and config.rope_parameters["rope_theta"] == 10000.0
    assert not (config.attention_bias or config.mlp_bias or config.tie_word_embeddings)
    assert config.dtype == torch.bfloat16
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert parameters == 7_299_846_144
    assert parameters * 2 == estimate("xverse/XVERSE-7B-Chat")["weights_bytes"]  # agrees with llmkit.memory


def test_llama_route_only_for_xverse(chat_dir):
    assert xverse_llama_config(chat_dir) is None
    with pytest.raises(BadInput, match="not an XVERSE config"):
        xverse_to_llama_config({"model_type": "llama"})


def test_missing_chat_template_gets_xverse_format_and_an_existing_one_stays(chat_dir, xverse_dir):
    bare = AutoTokenizer.from_pretrained(xverse_dir)
    bare.chat_template = None
    assert with_xverse_chat_template(bare).chat_template == XVERSE_CHAT_TEMPLATE
    qwen = AutoTokenizer.from_pretrained(chat_dir)
    assert "<|im_start|>" in with_xverse_chat_template(qwen).chat_template


def test_building_is_deterministic(tmp_path):
    digests = []
    for name in ("a", "b"):
        build_xverse_chat(tmp_path / name, max_steps=3)
        digests.append([hashlib.sha256((tmp_path / name / file).read_bytes()).hexdigest()
                        for file in ("model.safetensors", "tokenizer.json", "config.json")])
    assert digests[0] == digests[1]
