"""A small evaluation of a fine-tune, run before and after: did it learn, and did it break anything?

Three parts, in ``finetune/data/evaluation.json`` (written for the course; none of its questions is in the training
set): identity questions in new phrasings, Chinese and English (the fine-tune should answer with the new name or
author); general questions with known answers (a fine-tune that damaged the model gets them wrong); and
two-turn conversations whose second answer needs the first turn. An answer scores when it contains one of the
expected strings (case-insensitive). Decoding is greedy, so a run is repeatable.

    suite = load_suite(name="小K", author="llmkit 课程")
    before = evaluate(model, tokenizer, suite)   # ... train, merge ...
    after = evaluate(merged, tokenizer, suite)
"""

from __future__ import annotations

import json
from importlib import resources

from llmkit.chat import generate_reply
from llmkit.generation.session import ChatSession

PARTS = ("identity_held_out", "general", "multi_turn")


def load_suite(name: str, author: str) -> dict:
    """The course's evaluation questions with the fine-tune's ``name`` and ``author`` filled in.

    >>> suite = load_suite("小K", "llmkit 课程")
    >>> [len(suite[part]) for part in PARTS], suite["identity_held_out"][0]["expect"]
    ([6, 8, 2], ['小K'])
    """
    text = (resources.files("llmkit.finetune.data") / "evaluation.json").read_text(encoding="utf-8")
    return json.loads(text.replace("{{name}}", name).replace("{{author}}", author))


def scores(answer: str, expect: list[str]) -> bool:
    """Whether ``answer`` contains one of the ``expect`` strings, ignoring case.

    >>> scores("The capital of France is paris.", ["Paris"]), scores("我不知道。", ["北京"])
    (True, False)
    """
    return any(e.lower() in answer.lower() for e in expect)


def evaluate(model, tokenizer, suite: dict, max_new_tokens: int = 64) -> dict:
    """Ask every question of ``suite`` (greedy) and score it: per part, the rows (question, answer, ok) and the
    fraction that scored.

    >>> result = evaluate(model, tokenizer, load_suite("小K", "llmkit"))  # doctest: +SKIP
    >>> result["general"]["score"]  # doctest: +SKIP
    0.875
    """
    result = {}
    for part in PARTS:
        rows = []
        for item in suite[part]:
            if part == "multi_turn":
                chat = ChatSession(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=False)
                answer = [chat.ask(turn) for turn in item["turns"]][-1]
                question = " / ".join(item["turns"])
            else:
                question = item["question"]
                answer = generate_reply(model, tokenizer, [{"role": "user", "content": question}],
                                        max_new_tokens=max_new_tokens, do_sample=False)
            rows.append({"question": question, "answer": answer, "ok": scores(answer, item["expect"])})
        result[part] = {"rows": rows, "score": sum(r["ok"] for r in rows) / len(rows)}
    return result


def print_comparison(before: dict, after: dict, width: int = 70) -> None:
    """Print each part's score before -> after, then every question with its two answers (✓ scored, ✗ not).

    >>> row = {"question": "你是谁？", "answer": "我是小K。", "ok": True}
    >>> part = {"rows": [row], "score": 1.0}
    >>> print_comparison({p: part for p in PARTS}, {p: part for p in PARTS})  # doctest: +ELLIPSIS
    identity_held_out: 1.00 -> 1.00
      你是谁？
        before ✓ '我是小K。'
        after  ✓ '我是小K。'
    ...
    """
    for part in PARTS:
        print(f"{part}: {before[part]['score']:.2f} -> {after[part]['score']:.2f}")
        for old, new in zip(before[part]["rows"], after[part]["rows"]):
            print(f"  {old['question']}")
            for label, row in (("before", old), ("after ", new)):
                print(f"    {label} {'✓' if row['ok'] else '✗'} {row['answer'][:width]!r}")


def plot_scores(before: dict, after: dict, title: str, after_label: str = "after LoRA"):
    """Bars of each part's score (fraction correct) before and after the fine-tune; returns the axes.

    >>> part = {"rows": [], "score": 0.5}
    >>> plot_scores({p: part for p in PARTS}, {p: part for p in PARTS}, "Qwen2-7B-Instruct")  # doctest: +ELLIPSIS
    <Axes: ...>
    """
    import matplotlib.pyplot as plt

    ax = plt.subplots(figsize=(6.5, 3))[1]
    x = range(len(PARTS))
    ax.bar([i - 0.2 for i in x], [before[p]["score"] for p in PARTS], width=0.4, label="before")
    ax.bar([i + 0.2 for i in x], [after[p]["score"] for p in PARTS], width=0.4, label=after_label)
    ax.set_xticks(list(x), ["identity\n(new phrasings)", "general\nquestions", "two-turn\nchats"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction correct")
    ax.set_title(title)
    ax.legend()
    return ax
