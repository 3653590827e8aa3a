"""Applies ``LLMKIT_CARD_GB`` (``llmkit.card``) in any Python process started with ``llmkit.card.child_env()``:
when torch is imported, the allocator cap is queued to run as CUDA initialises. Nothing happens without CUDA."""

import importlib.abc
import importlib.util
import os
import sys


def _cap() -> None:
    from llmkit.card import apply

    apply()


class _CapWhenTorchLoads(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_and_queue(module):
                exec_module(module)
                module.cuda._lazy_call(_cap)  # runs once CUDA is initialised, or now if it already is

            spec.loader.exec_module = exec_and_queue
        return spec


if os.environ.get("LLMKIT_CARD_GB", "").strip():
    sys.meta_path.insert(0, _CapWhenTorchLoads())
