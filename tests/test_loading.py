import pytest
import torch
from transformers import AutoConfig

import llmkit
from llmkit import loading
from llmkit.errors import BadInput
from llmkit.hub import ModelNotFound
from llmkit.standins.qwen2_chat import greedy_answer


@pytest.fixture
def model_dir_with_qwen(tmp_path, monkeypatch, chat_dir):
    """$LLMKIT_MODEL_DIR/Qwen/Qwen2-7B-Instruct holds the stand-in, as a learner's ./models would."""
    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen2-7B-Instruct").symlink_to(chat_dir, target_is_directory=True)
    monkeypatch.setenv("LLMKIT_MODEL_DIR", str(tmp_path))
    return tmp_path


def test_load_resolves_a_model_id_through_locate(model_dir_with_qwen):
    model, tokenizer = llmkit.load("Qwen/Qwen2-7B-Instruct")
    assert model.dtype == torch.float32 and not getattr(model.config, "trust_remote_code", False)  # the stand-in stores float32
    assert greedy_answer(model, tokenizer, [{"role": "user", "content": "你好"}]) == "你好！我是 llmkit 的小测试模型。"


def test_load_gptq_goes_through_gptqmodel(gptq_dir):
    model, tokenizer = llmkit.load(str(gptq_dir))
    assert type(model.model.layers[0].self_attn.q_proj).__module__.startswith("gptqmodel.")
    assert greedy_answer(model, tokenizer, [{"role": "user", "content": "Hello"}]) == "Hello! I am the tiny llmkit test model."


def test_missing_model_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    with pytest.raises(ModelNotFound, match="llmkit download Org/NotThere"):
        llmkit.load("Org/NotThere")


def test_refuses_before_loading_when_it_will_not_fit(chat_dir, monkeypatch):
    monkeypatch.setattr(loading, "free_memory_gib", lambda max_memory=None: (0.01, "free memory of 1 GPU(s)"))
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("from_pretrained must not run when the model will not fit"))
    with pytest.raises(loading.WontFit, match=r"needs about .* GiB but the free memory of 1 GPU\(s\) is 0.0 GiB"):
        loading.load(str(chat_dir))


def test_force_loads_anyway(chat_dir, monkeypatch):
    monkeypatch.setattr(loading, "free_memory_gib", lambda max_memory=None: (0.01, "free memory of 1 GPU(s)"))
    model, _ = loading.load(str(chat_dir), force=True)
    assert model.config.model_type == "qwen2"


def test_trust_remote_code_needs_a_pinned_revision(chat_dir):
    with pytest.raises(BadInput, match="pin it with revision"):
        loading.load(str(chat_dir), trust_remote_code=True)
    with pytest.warns(UserWarning, match="running the repository's own Python code"):
        loading.load(str(chat_dir), trust_remote_code=True, revision="abc123")


@pytest.mark.parametrize("dtype, quant, cuda, bf16, expected", [
    ("bfloat16", None, True, True, torch.bfloat16),
    ("bfloat16", None, True, False, torch.float16),       # pre-Ampere GPU
    ("float16", {"quant_method": "gptq", "bits": 4}, True, True, torch.bfloat16),  # Marlin runs bf16: no fp16 overflow
    ("float16", {"quant_method": "gptq", "bits": 4}, True, False, torch.float16),  # pre-Ampere: ExLlama, fp16 only
    ("bfloat16", None, False, False, torch.bfloat16),     # CPU keeps the checkpoint dtype
])
def test_choose_dtype(dtype, quant, cuda, bf16, expected):
    config = AutoConfig.for_model("qwen2", dtype=dtype)
    if quant:
        config.quantization_config = quant
    assert loading.choose_dtype(config, cuda=cuda, bf16_supported=bf16)[0] == expected


@pytest.mark.parametrize("quant, cuda, capability, backend, expected", [
    ({"quant_method": "gptq", "bits": 4}, True, (9, 0), "auto", "marlin"),  # Hopper: not Machete (downloads CUTLASS)
    ({"quant_method": "gptq", "bits": 4}, True, (8, 9), "auto", "marlin"),
    ({"quant_method": "gptq", "bits": 4}, True, (7, 5), "auto", None),      # Turing: gptqmodel's own choice
    ({"quant_method": "gptq", "bits": 4}, False, None, "auto", None),       # CPU
    ({"quant_method": "gptq", "bits": 8}, True, (9, 0), "machete", "machete"),
    (None, True, (9, 0), "auto", None),                                     # not GPTQ
])
def test_gptq_backend_config(quant, cuda, capability, backend, expected):
    config = AutoConfig.for_model("qwen2")
    if quant:
        config.quantization_config = quant
    chosen = loading.gptq_backend_config(config, cuda=cuda, capability=capability, backend=backend)
    assert (chosen.backend if chosen else None) == expected
    if chosen:
        assert chosen.bits == quant["bits"]


def test_gptq_backend_reaches_gptqmodel(gptq_dir, capsys):
    model, _ = llmkit.load(str(gptq_dir), gptq_backend="torch")  # the CPU's own choice is TorchAtenLinear
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "TorchLinear"
    # the printed call shows the kernel llmkit chose, not an opaque GPTQConfig(...)
    assert "quantization_config=GPTQConfig(bits=4, backend='torch')" in capsys.readouterr().err


def test_printed_call_shows_the_gptq_arguments_llmkit_chose():
    config = AutoConfig.for_model("qwen2")
    config.quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    chosen = loading.gptq_backend_config(config, cuda=True, capability=(9, 0))
    call = loading.from_pretrained_call("/m/Qwen2-72B-Instruct-GPTQ-Int4", {"dtype": torch.bfloat16, "device_map": "auto",
                                                                             "quantization_config": chosen})
    assert call == ("AutoModelForCausalLM.from_pretrained('/m/Qwen2-72B-Instruct-GPTQ-Int4', dtype=torch.bfloat16, "
                    "device_map='auto', quantization_config=GPTQConfig(bits=4, backend='marlin'))")
    llama = AutoConfig.for_model("llama")  # a model config (XVERSE's route) stays short
    assert loading.from_pretrained_call("/m/x", {"config": llama}).endswith("config=LlamaConfig(...))")


def test_a_split_counts_each_cards_own_overhead():
    from llmkit.memory import estimate

    need = estimate("Qwen/Qwen2-72B-Instruct", context=4096)
    one, _ = loading.split_need_gib(need, 1)
    two, each = loading.split_need_gib(need, 2)
    assert one == need["total_gib"] and len(each) == 2 and two > one and max(each) < one
    assert loading.gpus_used("auto", 2) == 2 and loading.gpus_used("balanced", 4) == 4
    assert loading.gpus_used("cuda:1", 2) == 1 and loading.gpus_used({"model": "cpu"}, 2) == 1
