"""Card-size emulation: make a big GPU behave as a 24 GB (RTX 4090), 40 GB or 80 GB (A100) card.

One setting, ``LLMKIT_CARD_GB=24`` (or 40, 80, any size up to the real card's label), does two things:

- PyTorch's caching allocator of every Python process is capped at that size minus the CUDA context, so a
  model or a batch that would not fit the smaller card runs out of memory as it would there. llmkit applies the
  cap itself (``pick_model``, ``load``); other Python processes started with ``child_env()``'s environment
  (servers, the chatbot) apply it through a ``sitecustomize`` hook when they first initialise CUDA.
- ``torch.cuda.mem_get_info`` (and ``torch.accelerator.get_memory_info``) report the emulated card: total is its
  size, free is that size minus what every process on the real GPU uses. llmkit's fit checks and the doctor read
  it, and so do the libraries that size themselves from free memory (transformers' continuous batching sizes its KV
  cache that way, vLLM its ``gpu_memory_utilization`` share of the card; on a real 24 GB card they would find about
  8 GiB free beside a 7B model, not the big GPU's 120).

It is how the course's real mode is rehearsed on one big GPU (``llmkit rehearse``); a learner's own 24 GB card
needs no setting.

>>> os.environ.pop(CARD_ENV, None); card_gib() is None
True
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from llmkit import import_fixes
from llmkit.errors import BadInput

CARD_ENV = "LLMKIT_CARD_GB"
GIB = 2**30
# What a process takes on the GPU outside PyTorch's allocator (CUDA context, cuBLAS workspace): 0.70-0.76 GiB with
# torch 2.11 / CUDA 13 on an H200 for a plain model, 0.9 GiB in notebook 05's run (nvidia-smi 24.15 GiB beside a
# 23.25 GiB allocator cap). The allocator gets the card minus this, so an emulated card is not more generous than a real one.
CONTEXT_GIB = 1.0
# A card sold as N GB shows CUDA a little less than N GiB (an 80 GB A100 or H100: 79.2 GiB; a 40 GB A100: 39.4;
# an RTX 4090: 24.0): asking for the size of the card one has, within this share, emulates that card itself.
LABEL_TOLERANCE = 0.025
HOOK_DIR = Path(__file__).with_name("card_hook")


def card_gib(value: str | None = None) -> float | None:
    """The emulated card size in GiB from ``value`` (default: ``LLMKIT_CARD_GB``), or None when it is not set.

    >>> os.environ[CARD_ENV] = "24"; card_gib()
    24.0
    >>> os.environ[CARD_ENV] = "huge"; card_gib()
    Traceback (most recent call last):
    ...
    llmkit.errors.BadInput: LLMKIT_CARD_GB='huge' is not a card size: set it to the GB of the card to emulate (24 for an RTX 4090, 40 or 80 for an A100), or unset it to use the whole GPU
    >>> del os.environ[CARD_ENV]
    """
    text = (os.environ.get(CARD_ENV, "") if value is None else value).strip()
    if not text:
        return None
    try:
        size = float(text)
    except ValueError:
        size = 0.0
    if not 1 <= size <= 4096:
        raise BadInput(f"{CARD_ENV}={text!r} is not a card size: set it to the GB of the card to emulate (24 for an "
                       "RTX 4090, 40 or 80 for an A100), or unset it to use the whole GPU")
    return size


def effective_gib(card: float, real_total_bytes: int) -> float:
    """The size in GiB that emulating a ``card``-GB card means on a GPU of ``real_total_bytes``: ``card`` itself on a
    bigger GPU, the GPU's own size where ``card`` is its label (an 80 GB H100 shows CUDA 79.2 GiB).

    >>> effective_gib(24, 140 * GIB), effective_gib(80, 79 * GIB)
    (24, 79.0)
    >>> effective_gib(200, 140 * GIB)
    Traceback (most recent call last):
    ...
    llmkit.errors.BadInput: LLMKIT_CARD_GB=200 is larger than this GPU (140.0 GiB): emulate a smaller card or unset it
    """
    real = real_total_bytes / GIB
    if card > real * (1 + LABEL_TOLERANCE):
        raise BadInput(f"{CARD_ENV}={card:g} is larger than this GPU ({real:.1f} GiB): emulate a smaller card or unset it")
    return min(card, real)


def allocator_fraction(card: float, real_total_bytes: int) -> float:
    """The fraction of the real card PyTorch's allocator may use so that, with the CUDA context, the process
    stays inside a ``card``-GiB card (``effective_gib``).

    >>> round(allocator_fraction(24, 140 * GIB), 4)
    0.1643
    """
    return (effective_gib(card, real_total_bytes) - CONTEXT_GIB) / (real_total_bytes / GIB)


def apply() -> float | None:
    """Emulate the ``LLMKIT_CARD_GB`` card in this process and in Python processes started from it; returns the
    size, or None when it is unset. Where torch is already imported the cap is set now (if there is a GPU); otherwise
    when torch is first imported, so a process that never uses torch (llama.cpp's) does not load it. Safe to call again.

    >>> os.environ.pop(CARD_ENV, None); apply() is None
    True
    """
    card = card_gib()
    if card is None:
        return None
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]  # Python processes started from here are capped too
    if "torch" in sys.modules:
        _cap(sys.modules["torch"])
    else:
        install_import_hook()
    return card


def install_import_hook() -> None:
    """Cap the allocator as soon as torch is imported and CUDA starts (``torch.cuda._lazy_call``); what the
    ``sitecustomize`` on ``child_env()``'s ``PYTHONPATH`` calls in every Python process.

    >>> install_import_hook(); install_import_hook()
    """
    import_fixes.after_import("torch", _queue_cap)


def _queue_cap(torch) -> None:
    """Report the emulated card now, not when CUDA starts: the first ``mem_get_info`` call may be what starts CUDA
    (transformers' continuous batching sizes its cache with it), and that call would see the whole GPU; cap the
    allocator once CUDA is initialised, or now if it is."""
    _emulate_mem_get_info(torch)
    torch.cuda._lazy_call(lambda: _cap(torch))


def _cap(torch) -> None:
    """Cap the allocator of every visible GPU and make ``torch.cuda.mem_get_info`` report the emulated card."""
    card = card_gib()
    if card is None or not torch.cuda.is_available():
        return
    for index in range(torch.cuda.device_count()):
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(card, total), index)
    _emulate_mem_get_info(torch)


def _emulate_mem_get_info(torch) -> None:
    """Make ``torch.cuda.mem_get_info`` and ``torch.accelerator.get_memory_info`` (what vLLM sizes itself with) report
    the emulated card (``emulate``); once, whether or not CUDA started."""
    if card_gib() is None or hasattr(torch.cuda.mem_get_info, "__wrapped__"):
        return
    torch.cuda.mem_get_info = torch.cuda.memory.mem_get_info = _emulated(torch.cuda.mem_get_info)
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "get_memory_info"):
        accelerator.get_memory_info = _emulated(accelerator.get_memory_info)
        if hasattr(accelerator, "memory"):
            accelerator.memory.get_memory_info = accelerator.get_memory_info


def _emulated(real):
    """``real`` (a (free, total) query) as the emulated card reports it."""
    @functools.wraps(real)
    def emulated_memory_info(device=None):
        return emulate(*real(device), card_gib())

    return emulated_memory_info


def emulate(free_bytes: int, total_bytes: int, card: float | None = None) -> tuple[int, int]:
    """(free, total) as the emulated card would report them: total is the card (never more than the real GPU), free
    is the card minus what every process on the real GPU uses (never below 0). Unchanged when no card is emulated.

    >>> emulate(130 * GIB, 140 * GIB, card=24) == (14 * GIB, 24 * GIB)
    True
    >>> emulate(70 * GIB, 79 * GIB, card=80) == (70 * GIB, 79 * GIB)  # an 80 GB card's label on an 80 GB card
    True
    >>> emulate(100 * GIB, 140 * GIB, card=None) == (100 * GIB, 140 * GIB)
    True
    """
    if card is None:
        return free_bytes, total_bytes
    card_bytes = min(int(card * GIB), total_bytes)
    used = total_bytes - free_bytes
    return max(0, card_bytes - used), card_bytes


def mem_get_info(index: int = 0) -> tuple[int, int]:
    """``torch.cuda.mem_get_info(index)`` as the emulated card would report it (see ``emulate``).

    >>> mem_get_info()  # doctest: +SKIP
    (24877219840, 25769803776)
    """
    import torch

    free, total = _real_mem_get_info(torch)(index)
    return emulate(free, total, card_gib())


def _real_mem_get_info(torch):
    """torch's own ``mem_get_info``, also after ``apply`` replaced it (``functools.wraps`` keeps it as ``__wrapped__``)."""
    return getattr(torch.cuda.mem_get_info, "__wrapped__", torch.cuda.mem_get_info)


def child_env(env: dict | None = None) -> dict:
    """A copy of ``env`` (default: this process's environment) whose Python processes apply the card cap when they
    initialise CUDA (the ``sitecustomize`` hook on ``PYTHONPATH``). Unchanged when no card is emulated.

    >>> child_env({"LLMKIT_CARD_GB": "24"})["PYTHONPATH"].endswith("card_hook")
    True
    """
    env = dict(os.environ if env is None else env)
    if not env.get(CARD_ENV, "").strip():
        return env
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(HOOK_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK_DIR)] + paths)
    return env
