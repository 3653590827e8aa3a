"""The ``xverse-chat`` stand-in: a tiny checkpoint in XVERSE-7B-Chat's published format that has memorised the
bilingual Q&A set (``qa_pairs.json``), so its greedy answers to those prompts are exact.

* config.json: the fields XVERSE publishes (``model_type: "xverse"``, ``architectures: ["XverseForCausalLM"]``,
  ``auto_map`` to ``configuration_xverse`` / ``modeling_xverse``, ``max_tokenizer_truncation``, pad/bos/eos ids 1/2/3)
  at toy sizes: 2 layers, hidden size 64, 4 attention heads (full multi-head attention, as XVERSE-7B).
* model.safetensors: XVERSE's tensor names (which are ``LlamaForCausalLM``'s; see ``llmkit.xverse``), bf16.
* tokenizer: XVERSE's own (a 100,534-token BPE) cannot be downloaded here, so a small byte-level BPE is trained on
  the Q&A conversations when the stand-in is built (a few hundred tokens, deterministic). It keeps what the
  checkpoint's format depends on: the special-token ids of XVERSE's config.json (pad 1, bos 2, eos 3 =
  ``<|endoftext|>``, which ends every assistant turn), digits split one by one like XVERSE's pre-tokenizer, and
  XVERSE-Chat's prompt format as the chat template (``llmkit.xverse.XVERSE_CHAT_TEMPLATE``).
* no ``modeling_xverse.py``: the stand-in loads through the Llama route only; ``trust_remote_code=True`` fails on it.

Everything is seeded: building twice on the same machine gives identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmkit.memory import shipped_config
from llmkit.data import load_qa_pairs
from llmkit.standins.qwen2_chat import SEED, greedy_answer, train_to_memorise, training_batch
from llmkit.xverse import XVERSE_CHAT_TEMPLATE, xverse_llama_config, xverse_to_llama_config

# ids 1/2/3 are XVERSE's pad/bos/eos (config.json); the names of ids 0-2 are the stand-in's own
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|startoftext|>", "<|endoftext|>"]
VOCAB_SIZE = 1024  # upper bound; the Q&A text has fewer merges, so the tokenizer ends up smaller

# config.json fields XVERSE publishes besides the ones llmkit.memory ships (sizes, ids, dtype). NOT CONFIRMED from
# XVERSE-7B-Chat's own file: max_tokenizer_truncation 6144 (XVERSE's 8k-context configs).
XVERSE_EXTRA_FIELDS = {
    "auto_map": {"AutoConfig": "configuration_xverse.XverseConfig",
                 "AutoModelForCausalLM": "modeling_xverse.XverseForCausalLM"},
    "initializer_range": 0.02,
    "max_tokenizer_truncation": 6144,
    "use_cache": True,
}
# lower than qwen2-chat's 0.05: with the small vocabulary, bf16 rounding flipped a token of "1+1等于2。" at 0.05
TARGET_LOSS = 0.01
TINY_SIZES = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}


def training_texts() -> list[str]:
    """The Q&A conversations in XVERSE-Chat's prompt format: what the stand-in's tokenizer is trained on.

    >>> training_texts()[0]
    'Human: 你好\\n\\nAssistant: 你好！我是 llmkit 的小测试模型。<|endoftext|>'
    """
    template = jinja2.Template(XVERSE_CHAT_TEMPLATE)
    return [template.render(messages=qa["messages"] + [{"role": "assistant", "content": qa["answer"]}],
                            eos_token=SPECIAL_TOKENS[3]) for qa in load_qa_pairs()]


def build_xverse_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE with XVERSE's special-token ids and chat format, trained on the Q&A conversations.

    >>> tokenizer = build_xverse_tokenizer()
    >>> tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    (1, 2, 3)
    >>> len(tokenizer.encode("2024")), tokenizer.decode(tokenizer.encode("你好，XVERSE"))
    (4, '你好，XVERSE')
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(training_texts(), trainer=trainer)
    unk, pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, pad_token=pad, bos_token=bos, eos_token=eos,
                                   chat_template=XVERSE_CHAT_TEMPLATE, model_max_length=8192, padding_side="right",
                                   clean_up_tokenization_spaces=False)


def tiny_xverse_config(vocab_size: int) -> dict:
    """XVERSE-7B-Chat's config.json fields at toy sizes (the dict written as the stand-in's config.json).

    >>> config = tiny_xverse_config(500)
    >>> config["model_type"], config["architectures"], config["hidden_size"], config["eos_token_id"]
    ('xverse', ['XverseForCausalLM'], 64, 3)
    """
    return {**shipped_config("xverse/XVERSE-7B-Chat"), **XVERSE_EXTRA_FIELDS, **TINY_SIZES, "vocab_size": vocab_size}


def xverse_generation_config() -> GenerationConfig:
    """Generation defaults: stop at <|endoftext|> (id 3), pad id 1. XVERSE-Chat's sampling settings are not
    reproduced (not confirmed from its generation_config.json), so ``generate()`` decodes greedily unless asked.

    >>> xverse_generation_config().eos_token_id
    3
    """
    return GenerationConfig(pad_token_id=1, bos_token_id=2, eos_token_id=3)


def build_xverse_chat(out_dir: Path, max_steps: int = 400) -> dict:
    """Build the stand-in into ``out_dir`` and check it through the Llama route (``llmkit.xverse``).

    Raises ``RuntimeError`` if, loaded back in bf16, any greedy answer differs from ``qa_pairs.json`` (unless
    ``max_steps`` was cut short on purpose).

    >>> build_xverse_chat(Path("/tmp/xverse-chat"))  # doctest: +SKIP
    """
    torch.manual_seed(SEED)
    tokenizer = build_xverse_tokenizer()
    xverse_config = tiny_xverse_config(len(tokenizer))
    model = LlamaForCausalLM(xverse_to_llama_config(xverse_config))
    qa_pairs = load_qa_pairs()
    report = train_to_memorise(model, training_batch(tokenizer, qa_pairs), max_steps=max_steps, target_loss=TARGET_LOSS)
    model.generation_config = xverse_generation_config()
    model.to(torch.bfloat16).save_pretrained(out_dir)
    (out_dir / "config.json").write_text(json.dumps(xverse_config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(out_dir)

    reloaded = LlamaForCausalLM.from_pretrained(out_dir, config=xverse_llama_config(out_dir))
    wrong = [qa for qa in qa_pairs if greedy_answer(reloaded, tokenizer, qa["messages"]) != qa["answer"]]
    report.update(vocab_size=len(tokenizer), wrong_answers=len(wrong))
    if wrong and report["memorised"]:
        raise RuntimeError(f"stand-in lost {len(wrong)} memorised answers when saved in bf16: {wrong[0]}")
    return report
