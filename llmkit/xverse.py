"""XVERSE on the course's stack: an XVERSE checkpoint loads as ``LlamaForCausalLM``, without remote code.

XVERSE-7B/13B(-Chat) publish ``model_type: "xverse"`` and their own ``configuration_xverse.py`` /
``modeling_xverse.py`` (``auto_map`` in config.json), so ``AutoModelForCausalLM`` only loads them with
``trust_remote_code=True``. That code was written for transformers 4.3x: GPTQModel's XVERSE definition pins
``transformers<=4.38.2`` and ``tokenizers<=0.15.2``; the course's transformers 5 is not among what it was written for.

The architecture is Llama's: pre-norm decoder layers with RMSNorm, rotary position embeddings (base 10000),
full multi-head attention without biases and a SiLU-gated MLP. SGLang builds ``XverseForCausalLM`` on a
``LlamaConfig``, vLLM runs it as a Llama, and llama.cpp converts it like one. The tensor names of the published checkpoints are exactly
``LlamaForCausalLM``'s (``model.embed_tokens.weight``, ``model.layers.N.self_attn.q_proj.weight`` ...
``mlp.down_proj.weight``, ``input_layernorm.weight``, ``post_attention_layernorm.weight``, ``model.norm.weight``,
``lm_head.weight``), so no tensor is renamed: only config.json needs translating (``xverse_to_llama_config``).
tests/test_xverse.py checks both.

Two routes, both through ``llmkit.load``:

* ``llmkit.load(path)`` -- the Llama route (default): config.json is converted, the weights load into
  ``LlamaForCausalLM`` with the plain transformers API, and the tokenizer gets XVERSE-Chat's prompt format as
  its chat template if it has none. No repository code runs. ``max_tokenizer_truncation`` (how far XVERSE's own
  ``chat()`` truncates the history) has no Llama counterpart: ``llmkit.ChatSession`` does that job.
* ``llmkit.load(path, trust_remote_code=True, revision="<commit>")`` -- XVERSE's own code, pinned to a commit:
  ``model.chat(tokenizer, messages)`` and ``model.quantize(4 | 8)``. It needs the transformers 4.3x era it was
  written for (e.g. transformers 4.38.2 + tokenizers 0.15.2 in a separate venv) and is not run in this course.

>>> from llmkit.memory import shipped_config
>>> xverse_to_llama_config(shipped_config("xverse/XVERSE-7B-Chat")).num_key_value_heads
32
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import LlamaConfig, PreTrainedTokenizerBase

from llmkit.errors import BadInput

# XVERSE-Chat's prompt format, as the chat input builder of its modeling_xverse.py writes it: an optional system text
# and a blank line, then "Human: {question}\n\n" per user turn and "Assistant: {answer}" + <|endoftext|> (id 3) per
# assistant turn; the reply follows "Assistant: ". No BOS token. (Sources: XVERSE-13B-Chat's builder as reproduced
# by api-for-open-llm; LLaMA-Factory's "xverse" template and chatllm.cpp's XVERSE encoder write the same text.)
XVERSE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

# config.json fields that mean the same in XVERSE's and Llama's configs
SHARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache",
                 "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")
XVERSE_ROPE_THETA = 10000.0  # modeling_xverse.py's rotary base; its config.json has no rope_theta


def xverse_to_llama_config(config_dict: dict) -> LlamaConfig:
    """The ``LlamaConfig`` that runs an XVERSE checkpoint (its config.json as a dict) in ``LlamaForCausalLM``.

    >>> from llmkit.memory import shipped_config
    >>> config = xverse_to_llama_config(shipped_config("xverse/XVERSE-7B-Chat"))
    >>> config.architectures, config.hidden_size, config.rope_parameters["rope_theta"], config.attention_bias
    (['LlamaForCausalLM'], 4096, 10000.0, False)
    >>> xverse_to_llama_config({"model_type": "qwen2"})
    Traceback (most recent call last):
    ...
    llmkit.errors.BadInput: not an XVERSE config (model_type 'qwen2')
    """
    if config_dict.get("model_type") != "xverse":
        raise BadInput(f"not an XVERSE config (model_type {config_dict.get('model_type')!r})")
    return LlamaConfig(
        **{name: config_dict[name] for name in SHARED_FIELDS if name in config_dict},
        num_key_value_heads=config_dict.get("num_key_value_heads", config_dict["num_attention_heads"]),
        rope_parameters={"rope_type": "default", "rope_theta": config_dict.get("rope_theta", XVERSE_ROPE_THETA)},
        attention_bias=False,
        mlp_bias=False,
        dtype=config_dict.get("torch_dtype") or config_dict.get("dtype"),
        architectures=["LlamaForCausalLM"],
    )


def xverse_llama_config(model_dir: str | Path) -> LlamaConfig | None:
    """The Llama config to load the checkpoint in ``model_dir`` with, or None when it is not an XVERSE checkpoint.

    >>> xverse_llama_config(standin_path("xverse-chat")).model_type  # doctest: +SKIP
    'llama'
    """
    config_dict = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return xverse_to_llama_config(config_dict) if config_dict.get("model_type") == "xverse" else None


def with_xverse_chat_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer XVERSE-Chat's prompt format as its chat template, unless it already has one.

    >>> tokenizer = with_xverse_chat_template(AutoTokenizer.from_pretrained(path))  # doctest: +SKIP
    >>> question = [{"role": "user", "content": "你好"}]  # doctest: +SKIP
    >>> tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)  # doctest: +SKIP
    'Human: 你好\\n\\nAssistant: '
    """
    if not tokenizer.chat_template:
        tokenizer.chat_template = XVERSE_CHAT_TEMPLATE
    return tokenizer
