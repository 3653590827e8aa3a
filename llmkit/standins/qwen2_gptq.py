"""The ``qwen2-gptq-int4`` stand-in: the ``qwen2-chat`` stand-in quantized to 4-bit GPTQ on the CPU with
optimum + gptqmodel and saved in GPTQ v1 format, like Qwen2-72B-Instruct-GPTQ-Int4. It loads through the
same ``AutoModelForCausalLM.from_pretrained`` path (transformers → optimum → gptqmodel kernels).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.data import load_qa_pairs
from llmkit.standins.qwen2_chat import SEED, greedy_answer

GROUP_SIZE = 32  # Qwen's checkpoints use 128; the stand-in's hidden size is 64


def calibration_texts(tokenizer) -> list[str]:
    """Chat-formatted Q&A conversations used as GPTQ calibration data.

    >>> calibration_texts(AutoTokenizer.from_pretrained(chat_dir))[0][:22]  # doctest: +SKIP
    """
    return [
        tokenizer.apply_chat_template(qa["messages"] + [{"role": "assistant", "content": qa["answer"]}], tokenize=False)
        for qa in load_qa_pairs()
    ]


def _sync_config_format(out_dir: Path) -> None:
    """Make config.json's quantization_config match quantize_config.json.

    optimum 2.3's ``GPTQQuantizer.save`` converts the tensors to GPTQ v1 but leaves ``format: gptq_v2`` in
    config.json; transformers then skips the v1→v2 conversion on load and answers go wrong (measured: 7 of
    15 stand-in answers). The calibration texts are dropped too, as published checkpoints do.
    """
    quant = json.loads((out_dir / "quantize_config.json").read_text(encoding="utf-8"))
    quant.pop("dataset", None)
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = quant
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def build_qwen2_gptq(chat_dir: Path, out_dir: Path) -> dict:
    """Quantize the chat stand-in at ``chat_dir`` to 4-bit GPTQ into ``out_dir`` and check its answers.

    Returns ``{"agreeing_answers": int, "answers": int}`` (greedy answers equal to the Q&A set).

    >>> build_qwen2_gptq(Path(".../qwen2-chat"), Path("/tmp/qwen2-gptq-int4"))  # doctest: +SKIP
    """
    from optimum.gptq import GPTQQuantizer  # heavy import, only needed while building

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    quantizer = GPTQQuantizer(
        bits=4, group_size=GROUP_SIZE, dataset=calibration_texts(tokenizer), desc_act=False, sym=True
    )
    model = AutoModelForCausalLM.from_pretrained(chat_dir, dtype=torch.bfloat16)
    model = quantizer.quantize_model(model, tokenizer)
    quantizer.save(model, str(out_dir))
    tokenizer.save_pretrained(out_dir)
    _sync_config_format(out_dir)

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    qa_pairs = load_qa_pairs()
    agreeing = sum(greedy_answer(reloaded, tokenizer, qa["messages"]) == qa["answer"] for qa in qa_pairs)
    return {"agreeing_answers": agreeing, "answers": len(qa_pairs)}
