"""Tiny offline stand-in models, built on first use and cached, so every notebook runs without weights.

``standin_path("qwen2-chat")`` builds (once) and returns the model directory; ``list_standins()`` says what
exists. The cache lives in ``$LLMKIT_HOME/standins`` (default ``~/.cache/llmkit/standins``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

BUILD_INFO = "llmkit_standin.json"  # written last: its presence marks a complete build


@dataclass(frozen=True)
class StandIn:
    """One stand-in kind: what it imitates and how to build it into a directory."""

    kind: str
    summary: str
    stands_for: tuple[str, ...]
    recipe_version: int
    build: Callable[[Path], dict]


def _build_chat(out_dir: Path) -> dict:
    from llmkit.standins.qwen2_chat import build_qwen2_chat

    return build_qwen2_chat(out_dir)


def _build_gptq(out_dir: Path) -> dict:
    from llmkit.standins.qwen2_gptq import build_qwen2_gptq

    return build_qwen2_gptq(standin_path("qwen2-chat"), out_dir)


def _build_xverse(out_dir: Path) -> dict:
    from llmkit.standins.xverse_chat import build_xverse_chat

    return build_xverse_chat(out_dir)


STANDINS: dict[str, StandIn] = {
    s.kind: s
    for s in [
        StandIn(
            "qwen2-chat",
            "tiny Qwen2ForCausalLM, real Qwen2 tokenizer and chat template, memorised bilingual Q&A (float32)",
            ("Qwen/Qwen2-7B-Instruct", "Qwen/Qwen2-72B-Instruct", "Qwen/Qwen2-0.5B-Instruct", "Qwen/Qwen2-1.5B-Instruct"),
            # v2: LM head untied from the embeddings, as in Qwen2-7B/72B (LoRA on it merges cleanly);
            # v3: stored in float32, not bf16 (qwen2_chat.build_qwen2_chat says why)
            3,
            _build_chat,
        ),
        StandIn(
            "qwen2-gptq-int4",
            "qwen2-chat quantized to 4-bit GPTQ (v1 format) with optimum + gptqmodel on the CPU",
            ("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "Qwen/Qwen2-7B-Instruct-GPTQ-Int4", "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4"),
            2,  # v2: made from qwen2-chat v2
            _build_gptq,
        ),
        StandIn(
            "xverse-chat",
            "tiny checkpoint in XVERSE's format (model_type xverse, Llama tensor names), small BPE with XVERSE's "
            "special ids and chat format, memorised bilingual Q&A (bf16)",
            ("xverse/XVERSE-7B-Chat", "xverse/XVERSE-13B-Chat"),
            1,
            _build_xverse,
        ),
    ]
}


def llmkit_home() -> Path:
    """Where llmkit keeps what it builds (stand-ins, LLaMA-Factory's venv): ``$LLMKIT_HOME``, default ``~/.cache/llmkit``.

    >>> llmkit_home().name in ("llmkit", os.environ.get("LLMKIT_HOME", "llmkit").rstrip("/").split("/")[-1])
    True
    """
    return Path(os.environ.get("LLMKIT_HOME") or Path.home() / ".cache" / "llmkit").expanduser()


def cache_root() -> Path:
    """Where stand-ins are cached: ``$LLMKIT_HOME/standins``, default ``~/.cache/llmkit/standins``.

    >>> cache_root().name
    'standins'
    """
    return llmkit_home() / "standins"


def _get(kind: str) -> StandIn:
    if kind not in STANDINS:
        raise KeyError(f"unknown stand-in {kind!r}; choose one of: {', '.join(STANDINS)}")
    return STANDINS[kind]


def standin_dir(kind: str) -> Path:
    """The directory a stand-in is (or will be) cached in; the recipe version is part of the name.

    >>> standin_dir("qwen2-chat").name
    'qwen2-chat-v3'
    """
    return cache_root() / f"{kind}-v{_get(kind).recipe_version}"


def is_built(kind: str) -> bool:
    """Whether the stand-in is complete in the cache (an interrupted build does not count).

    >>> isinstance(is_built("qwen2-chat"), bool)
    True
    """
    return (standin_dir(kind) / BUILD_INFO).is_file()


def standin_path(kind: str, build: bool = True) -> Path:
    """Return the stand-in's model directory, building it first if needed (atomic, one builder at a time).

    >>> path = standin_path("qwen2-chat")  # doctest: +SKIP
    >>> (path / "config.json").exists()  # doctest: +SKIP
    True
    """
    spec, final = _get(kind), standin_dir(kind)
    if is_built(kind):
        return final
    if not build:
        raise FileNotFoundError(f"stand-in {kind!r} is not built yet; run: llmkit standin {kind}")
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if is_built(kind):  # another process finished it while we waited
            return final
        staging = final.with_name(final.name + f".building-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        started = time.perf_counter()
        report = spec.build(staging)
        info = {"kind": kind, "recipe_version": spec.recipe_version, "build_seconds": round(time.perf_counter() - started, 1)}
        (staging / BUILD_INFO).write_text(json.dumps({**info, **report}, indent=2), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)  # a stale, incomplete folder from an interrupted build
        os.replace(staging, final)
    return final


def build_info(kind: str) -> dict:
    """What the build of a cached stand-in reported (steps, loss, answers checked, seconds).

    >>> build_info("qwen2-chat")["kind"]  # doctest: +SKIP
    'qwen2-chat'
    """
    return json.loads((standin_path(kind) / BUILD_INFO).read_text(encoding="utf-8"))


def list_standins() -> list[dict]:
    """One dict per stand-in kind: kind, summary, the real models it stands for, whether it is built, its path.

    >>> [s["kind"] for s in list_standins()]
    ['qwen2-chat', 'qwen2-gptq-int4', 'xverse-chat']
    """
    return [
        {"kind": s.kind, "summary": s.summary, "stands_for": list(s.stands_for), "built": is_built(s.kind),
         "path": str(standin_dir(s.kind))}
        for s in STANDINS.values()
    ]


def standin_for(model_id: str) -> str | None:
    """The stand-in kind that imitates a real model id (case-insensitive, ModelScope ids too), else None.

    >>> standin_for("qwen/Qwen2-72B-Instruct-GPTQ-Int4")
    'qwen2-gptq-int4'
    """
    wanted = model_id.strip().lower()
    for spec in STANDINS.values():
        if wanted in (m.lower() for m in spec.stands_for):
            return spec.kind
    return None
