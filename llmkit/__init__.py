"""llmkit: thin helpers for the LLM course (environment checks, stand-in models, finding, sizing and loading models).

>>> import llmkit
>>> callable(llmkit.pick_model) and callable(llmkit.load)
True
"""

from llmkit.hub import download, locate, pin_hf_home

pin_hf_home()  # before anything imports gptqmodel, whose tokenicer would move the Hugging Face cache to /tmp

from llmkit.env import quiet_torchao_on_cpu_torch  # noqa: E402
from llmkit.cuda_toolkit import use_venv_toolkit  # noqa: E402
from llmkit.import_fixes import forget_gptqmodel_import_tracebacks  # noqa: E402

quiet_torchao_on_cpu_torch()
forget_gptqmodel_import_tracebacks()  # else a model in the call that first imports gptqmodel outlives its `del`
use_venv_toolkit()  # nvcc from NVIDIA's wheels for gptqmodel's kernel builds, where setup.sh installed them

from llmkit.doctor import doctor  # noqa: E402  (after pin_hf_home)
from llmkit.memory import estimate  # noqa: E402
from llmkit.pick import pick_model, standin_mode  # noqa: E402
from llmkit.standins import list_standins, standin_path  # noqa: E402

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
