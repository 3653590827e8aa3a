"""Chat with a chat-template model through the plain transformers API (load, template, generate, decode)."""

from __future__ import annotations

import torch
from transformers import TextStreamer


def generate_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 256, stream: bool = False, **generate_kwargs) -> str:
    """The assistant's reply to ``messages`` (the model's own generation_config unless overridden).

    With ``stream=True`` the tokens are also printed as they are generated.

    >>> generate_reply(model, tokenizer, [{"role": "user", "content": "你好"}], do_sample=False)  # doctest: +SKIP
    '你好！我是 llmkit 的小测试模型。'
    """
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = inputs.to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **generate_kwargs)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
