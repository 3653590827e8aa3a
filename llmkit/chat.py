"""The chat template both ways, through the plain transformers API: a model's reply to a conversation (template,
generate, decode), and a conversation plus its answer as token ids and training labels."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TextStreamer

from llmkit.errors import LlmkitError

FP16_MAX = 65504  # the largest finite float16
IGNORE_INDEX = -100  # label value the loss skips (prompt and padding tokens)


class NonFiniteLogits(LlmkitError):
    """The model's logits became NaN or infinite during generation; nothing was added to the conversation.

    >>> "65504" in str(NonFiniteLogits.for_dtype(torch.float16, step=1))
    True
    """

    @classmethod
    def for_dtype(cls, dtype: torch.dtype, step: int) -> "NonFiniteLogits":
        """The error for a model computing in ``dtype`` whose logits broke at new token ``step`` (1 = first).

        >>> print(NonFiniteLogits.for_dtype(torch.float32, step=3))
        the model's logits became NaN/inf at new token 3 while computing in torch.float32: ...
        """
        start = f"the model's logits became NaN/inf at new token {step} while computing in {dtype}: "
        if dtype == torch.float16:
            return cls(start + f"float16 holds at most {FP16_MAX} and the activations overflowed (what makes fp16 "
                       "and GPTQ models answer '!!!!'). Load the model in bfloat16 (GPUs of compute capability >= "
                       "8.0: llmkit.load(..., dtype=torch.bfloat16), llmkit chat --dtype bfloat16) or in float32 "
                       "(dtype=torch.float32, --dtype float32).")
        return cls(start + "the weights may be damaged or badly quantized. Check the folder with llmkit locate, "
                   "download it again, or load it in float32 (dtype=torch.float32, llmkit chat --dtype float32).")


class FiniteLogitsGuard(LogitsProcessor):
    """A logits processor that raises ``NonFiniteLogits`` instead of letting NaN/inf scores decode as garbage.

    It runs after generate's own processors, which set filtered tokens to -inf: so NaN, +inf or a row without
    any finite score is the failure. One cheap check per new token.

    >>> guard = FiniteLogitsGuard(torch.float16, prompt_length=1)
    >>> guard(torch.tensor([[0]]), torch.tensor([[0.5, -float("inf")]]))
    tensor([[0.5000,   -inf]])
    >>> guard(torch.tensor([[0]]), torch.tensor([[float("nan"), 1.0]]))
    Traceback (most recent call last):
    ...
    llmkit.chat.NonFiniteLogits: the model's logits became NaN/inf at new token 1 while computing in torch.float16: ...
    """

    def __init__(self, dtype: torch.dtype, prompt_length: int):
        self.dtype, self.prompt_length = dtype, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        broken = (scores.isnan() | scores.isposinf()).any() | ~scores.isfinite().any(dim=-1).all()
        if broken:
            raise NonFiniteLogits.for_dtype(self.dtype, input_ids.shape[1] - self.prompt_length + 1)
        return scores


class CallbackStreamer(TextStreamer):
    """A ``TextStreamer`` that hands each finished piece of the reply to ``on_token`` instead of printing it.

    >>> streamer = CallbackStreamer(tokenizer, lambda text: print(text, end=""))  # doctest: +SKIP
    >>> _ = model.generate(**inputs, streamer=streamer)  # doctest: +SKIP
    你好！我是 llmkit 的小测试模型。
    """

    def __init__(self, tokenizer, on_token: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_token = on_token

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Pass a non-empty piece on (``TextStreamer`` decides when a word or character is complete).

        >>> CallbackStreamer(tokenizer, print).on_finalized_text("你好")  # doctest: +SKIP
        你好
        """
        if text:
            self.on_token(text)


def generate_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 256,
                   on_token: Callable[[str], None] | None = None, **generate_kwargs) -> str:
    """The assistant's reply to ``messages`` (the model's own generation_config unless overridden).

    With ``on_token`` each new piece of text is passed to it as it is generated; the pieces add up to the reply.
    Logits that turn NaN/inf (fp16 overflow) raise ``NonFiniteLogits`` instead of decoding as "!!!!".

    >>> generate_reply(model, tokenizer, [{"role": "user", "content": "你好"}], do_sample=False)  # doctest: +SKIP
    '你好！我是 llmkit 的小测试模型。'
    >>> pieces = []
    >>> _ = generate_reply(model, tokenizer, [{"role": "user", "content": "你好"}], on_token=pieces.append)  # doctest: +SKIP
    >>> "".join(pieces)  # doctest: +SKIP
    '你好！我是 llmkit 的小测试模型。'
    """
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = inputs.to(model.device)
    streamer = CallbackStreamer(tokenizer, on_token) if on_token else None
    prompt_length = inputs["input_ids"].shape[1]
    processors = LogitsProcessorList([*(generate_kwargs.pop("logits_processor", None) or []),
                                      FiniteLogitsGuard(model.dtype, prompt_length)])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer,
                                logits_processor=processors, **generate_kwargs)
    return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)


def encode_example(tokenizer, messages: list[dict], answer: str) -> tuple[list, list]:
    """Token ids of one chat-formatted example and its labels (loss only on the answer and the end-of-turn token,
    the tokenizer's eos: <|im_end|> for Qwen2).

    >>> from llmkit.standins.tokenizer import build_qwen2_tokenizer
    >>> ids, labels = encode_example(build_qwen2_tokenizer(), [{"role": "user", "content": "你好"}], "好")
    >>> labels[-2:] == ids[-2:] and labels[0] == IGNORE_INDEX
    True
    """
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    answer_ids = tokenizer.encode(answer) + [tokenizer.eos_token_id]
    return list(prompt_ids) + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids
