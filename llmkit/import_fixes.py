"""Act when a third-party module is imported, whoever imports it and when; and the fixes llmkit applies that way.

``after_import(name, action)`` runs ``action(module)`` right after ``name`` is imported (at once if it already is).
It is how the card emulation caps torch in every process (``llmkit.card``) and how llmkit fixes gptqmodel's import:
gptqmodel keeps the ImportError of its optional backends in module globals (``gguf_cpp._LLAMA_CPP_IMPORT_ERROR``
when llama-cpp-python is not installed), traceback included. When gptqmodel is first imported inside a call that
holds a model (peft's ``get_peft_model`` imports it to look for GPTQ layers; ``from_pretrained`` of a GPTQ model
does too), that traceback keeps the call's frames and so the whole model alive after ``del``: 14.25 GiB stayed on
the GPU after a LoRA fine-tune of a 7B. ``forget_gptqmodel_import_tracebacks`` drops those tracebacks (the
exceptions and their messages stay).

>>> forget_gptqmodel_import_tracebacks(); forget_gptqmodel_import_tracebacks()
>>> sum(isinstance(f, _AfterImport) and f.name in GPTQMODEL_MODULES_KEEPING_ERRORS for f in sys.meta_path) <= 3
True
"""

from __future__ import annotations

import importlib.abc
import sys
from types import ModuleType
from typing import Callable

# gptqmodel 7.6 and 7.7: the modules whose globals keep an optional backend's import error
GPTQMODEL_MODULES_KEEPING_ERRORS = ("gptqmodel.nn_modules.qlinear.gguf_cpp", "gptqmodel.utils.vllm", "gptqmodel.utils.sglang")


def after_import(name: str, action: Callable[[ModuleType], None]) -> None:
    """Run ``action(module)`` right after the module ``name`` is executed; at once if it is already imported. Once
    per (name, action), however often it is called.

    >>> seen = []
    >>> after_import("json", seen.append); seen[0].__name__
    'json'
    """
    if name in sys.modules:
        action(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and (f.name, f.action) == (name, action) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, action))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader that the other finders return for ``name``, so that the module's own
    loader runs and then ``action``. It stays in place until the module is really executed: a mere look-up
    (``importlib.util.find_spec("torch")``, as transformers' ``is_torch_available`` does) must not use it up."""

    def __init__(self, name: str, action: Callable[[ModuleType], None]):
        self.name, self.action = name, action

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        spec = None
        for finder in (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec")):
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_act(module):
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            exec_module(module)
            self.action(module)

        spec.loader.exec_module = exec_then_act
        return spec


def forget_gptqmodel_import_tracebacks() -> None:
    """Drop the tracebacks of the import errors that gptqmodel keeps in module globals, as soon as those modules
    are imported (see the module's docstring: they keep a freed model alive).

    >>> forget_gptqmodel_import_tracebacks()
    """
    for name in GPTQMODEL_MODULES_KEEPING_ERRORS:
        after_import(name, _drop_tracebacks)


def _drop_tracebacks(module: ModuleType) -> None:
    """Set ``__traceback__`` to None on every exception in the module's globals and on the exceptions chained to it.

    >>> m = ModuleType("m")
    >>> try:
    ...     import no_such_module_here
    ... except ImportError as error:
    ...     m.ERROR = error
    >>> _drop_tracebacks(m); m.ERROR.__traceback__ is None
    True
    """
    for value in list(vars(module).values()):
        while isinstance(value, BaseException):
            value.__traceback__ = None
            value = value.__cause__ or value.__context__
