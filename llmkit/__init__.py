"""llmkit: thin helpers for the LLM course (environment checks, stand-in models, finding, sizing and loading models).

>>> import llmkit
>>> callable(llmkit.pick_model) and callable(llmkit.load)
True
"""

from llmkit.doctor import doctor
from llmkit.hub import download, locate
from llmkit.memory import estimate
from llmkit.pick import pick_model, standin_mode
from llmkit.standins import list_standins, standin_path

__all__ = ["ChatSession", "doctor", "download", "estimate", "list_standins", "load", "locate", "pick_model", "quantize", "standin_mode", "standin_path"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``llmkit.load``, ``llmkit.ChatSession`` and ``llmkit.quantize`` import transformers only when first used, so
    ``llmkit doctor`` starts fast."""
    if name == "load":
        from llmkit.loading import load

        return load
    if name == "ChatSession":
        from llmkit.session import ChatSession

        return ChatSession
    if name == "quantize":
        from llmkit.quantization import quantize

        return quantize
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")
