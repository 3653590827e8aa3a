"""``pick_model``: the one line at the top of every notebook that chooses a real model or its stand-in."""

from __future__ import annotations

import os

from llmkit.standins import STANDINS, standin_for, standin_path

STANDIN_ENV = "LLMKIT_STANDIN"


class NoStandInError(LookupError):
    """Stand-in mode was asked for a real model that has no stand-in."""


def standin_mode() -> bool:
    """True when ``LLMKIT_STANDIN`` is set to 1/true/yes (CI sets it; learners on a GPU leave it unset).

    >>> os.environ.pop("LLMKIT_STANDIN", None); standin_mode()
    False
    """
    return os.environ.get(STANDIN_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def banner(model_id: str, kind: str, path, hint: str | None = None) -> str:
    """The line that tells a reader the answers come from a tiny test model, and how to get the real one.

    >>> "STAND-IN" in banner("Qwen/Qwen2-7B-Instruct", "qwen2-chat", "/tmp/x")
    True
    """
    hint = hint or f"Unset {STANDIN_ENV} on a GPU machine to use the real model."
    return (
        f"[llmkit] STAND-IN MODE: {model_id} is replaced by the tiny test model '{kind}' ({path}).\n"
        f"[llmkit] Its answers come from a 2-layer model trained for seconds, not from a real LLM. {hint}"
    )


def pick_model(model_id: str) -> str:
    """Return ``model_id`` unchanged, or in stand-in mode the path of the matching tiny local model.

    In stand-in mode a model without a stand-in raises ``NoStandInError``: never a silent substitute.

    >>> os.environ.pop("LLMKIT_STANDIN", None); pick_model("Qwen/Qwen2-7B-Instruct")
    'Qwen/Qwen2-7B-Instruct'
    """
    if not standin_mode():
        return model_id
    kind = standin_for(model_id)
    if kind is None:
        raise NoStandInError(
            f"{STANDIN_ENV}=1 but llmkit has no stand-in for {model_id!r}. Stand-ins exist for: "
            + "; ".join(f"{k} ← {', '.join(s.stands_for)}" for k, s in STANDINS.items())
            + f". Unset {STANDIN_ENV} to use the real model."
        )
    path = standin_path(kind)
    print(banner(model_id, kind, path))
    return str(path)


DEFAULT_STANDIN = "qwen2-chat"


def model_or_default(model_id: str | None, hint: str) -> str:
    """What a command should load: ``pick_model(model_id)``, or with no model named the ``qwen2-chat``
    stand-in, announced with a banner that ends with ``hint`` (how to name a real model).

    >>> model_or_default("Qwen/Qwen2-7B-Instruct", hint="") == pick_model("Qwen/Qwen2-7B-Instruct")
    True
    """
    if model_id:
        return pick_model(model_id)
    from llmkit.standins import standin_path

    path = str(standin_path(DEFAULT_STANDIN))
    print(banner("the default model", DEFAULT_STANDIN, path, hint=hint))
    return path

