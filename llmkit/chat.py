"""Chat with a chat-template model through the plain transformers API (load, template, generate, decode)."""

from __future__ import annotations

from typing import Callable

import torch
from transformers import TextStreamer


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
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **generate_kwargs)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
