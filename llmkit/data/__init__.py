"""The course's own bilingual Q&A set (``qa_pairs.json``), shared by the stages that need fixed questions with known
answers: the stand-ins memorise it, ``llmkit.quantize`` measures perplexity and compares answers on it."""

from __future__ import annotations

import json
from importlib import resources


def load_qa_pairs() -> list[dict]:
    """The Q&A set: ``[{"messages": [...], "answer": str}, ...]``, single- and multi-turn, Chinese and English.

    >>> load_qa_pairs()[0]["messages"][0]["content"]
    '你好'
    """
    return json.loads((resources.files("llmkit.data") / "qa_pairs.json").read_text(encoding="utf-8"))
