"""LoRA / QLoRA training memory: adapter count against peft itself, peaks against the H100 measurements."""

import json
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from llmkit.cli import main
from llmkit.errors import BadInput
from llmkit.memory import load_facts
from llmkit.finetune.train_memory import adapter_params, estimate_training

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "lora_gpu_h100.json"


def test_adapter_count_equals_what_peft_trains(chat_dir):
    model = AutoModelForCausalLM.from_pretrained(chat_dir)
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert adapter_params(load_facts(chat_dir), 8) == trainable


@pytest.mark.parametrize("row", json.loads(RESULTS.read_text())["results"],
                         ids=lambda r: f"{r['method']}-checkpointing-{r['gradient_checkpointing']}")
def test_estimate_is_within_10_percent_of_the_measured_peak(row):
    est = estimate_training("Qwen/Qwen2-7B-Instruct", row["method"], rank=8, seq_len=row["seq_len"],
                            batch=row["batch"], gradient_checkpointing=row["gradient_checkpointing"])
    allocator_part = est["total_gib"] - 0.5  # the CUDA context is outside PyTorch's allocator
    assert abs(allocator_part / row["peak_allocated_gib"] - 1) < 0.10


def test_checkpointing_and_qlora_reduce_memory():
    full = estimate_training("Qwen/Qwen2-7B-Instruct", "lora", seq_len=1024, gradient_checkpointing=False)
    ckpt = estimate_training("Qwen/Qwen2-7B-Instruct", "lora", seq_len=1024)
    qlora = estimate_training("Qwen/Qwen2-7B-Instruct", "qlora", seq_len=1024)
    assert qlora["weights_gib"] < ckpt["weights_gib"] / 1.9 and ckpt["activations_gib"] < full["activations_gib"] / 10
    assert qlora["verdicts"]["24"]["verdict"] == "fits"


@pytest.mark.parametrize("kwargs, message", [({"method": "full"}, "method must be one of"),
                                             ({"seq_len": 0}, "must be positive")])
def test_bad_training_requests(kwargs, message):
    with pytest.raises(BadInput, match=message):
        estimate_training("Qwen/Qwen2-7B-Instruct", **kwargs)


def test_estimate_command_train(capsys):
    assert main(["estimate", "Qwen/Qwen2-7B-Instruct", "--train", "qlora", "--batch", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "qlora" and data["batch"] == 4 and data["gradient_checkpointing"] is True
