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


def pick_model(model_id: str, download: bool = False) -> str:
    """The model a notebook loads: in real mode the folder ``llmkit.locate`` finds for ``model_id`` (an explicit
    path, ``LLMKIT_MODEL_DIR``, the ModelScope cache, a SCOW share or the Hugging Face cache), in stand-in mode
    the path of the matching tiny local model. Under ``LLMKIT_CARD_GB`` it also caps the GPU (``llmkit.card``).

    A model that is not on this machine raises ``ModelNotFound`` with the download command, or with
    ``download=True`` is downloaded after its size is printed (``llmkit.download``: resumable, verified).
    In stand-in mode a model without a stand-in raises ``NoStandInError``: never a silent substitute.

    >>> os.environ.pop("LLMKIT_STANDIN", None); pick_model("/no/such/model")
    Traceback (most recent call last):
    ...
    llmkit.hub.locating.ModelNotFound: model '/no/such/model' is not on this machine. Searched:
      - path /no/such/model
    """
    from llmkit import card

    card.apply()
    if not standin_mode():
        return str(_real_model(model_id, download))
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


def _real_model(model_id: str, download: bool):
    from llmkit.hub import ModelNotFound, download as fetch, locate

    try:
        found = locate(model_id)
    except ModelNotFound:
        if not download:
            raise
    else:
        if found.where != "path":
            print(f"[llmkit] {model_id}: found in the {found.where}: {found.path}")
        return found.path
    size = download_size_gb(model_id)
    print(f"[llmkit] {model_id} is not on this machine: downloading"
          + (f" about {size:.1f} GB" if size else "") + " (resumable; run the cell again if it stops)")
    return fetch(model_id)


def download_size_gb(model_id: str) -> float | None:
    """About how many GB a course model's weights are on the hub (from llmkit's shipped config), else None.

    >>> round(download_size_gb("Qwen/Qwen2-7B-Instruct"), 1), download_size_gb("Org/Unknown")
    (15.2, None)
    """
    from llmkit.errors import BadInput
    from llmkit.memory import estimate

    try:
        return estimate(model_id)["weights_bytes"] / 1e9
    except BadInput:
        return None


DEFAULT_STANDIN = "qwen2-chat"


def model_or_default(model_id: str | None, hint: str) -> str:
    """What a command should load: ``pick_model(model_id)``, or with no model named the ``qwen2-chat``
    stand-in, announced with a banner that ends with ``hint`` (how to name a real model).

    >>> model_or_default("/no/such/model", hint="")
    Traceback (most recent call last):
    ...
    llmkit.hub.locating.ModelNotFound: model '/no/such/model' is not on this machine. Searched:
      - path /no/such/model
    """
    if model_id:
        return pick_model(model_id)
    from llmkit.standins import standin_path

    path = str(standin_path(DEFAULT_STANDIN))
    print(banner("the default model", DEFAULT_STANDIN, path, hint=hint))
    return path

