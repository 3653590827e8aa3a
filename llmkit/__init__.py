"""llmkit: thin helpers for the LLM course (environment checks, stand-in models, finding, sizing and loading models).

The package is layered; a module imports only from its own unit and from lower layers (``tests/test_layers.py``
checks every import, and that no module uses another's private ``_names``):

1. base: ``errors`` (what llmkit raises and the exit codes), ``safe_output`` (never overwrite, never half-write),
   ``import_fixes`` (acting when a third-party module is imported);
2. core, used by every stage: ``hub`` (locating, verifying, downloading models), ``memory`` (estimates from
   config.json), ``card`` (emulating a card size), ``loading`` (``llmkit.load``), ``xverse``, ``chat`` (one reply
   through the chat template), ``quantization`` (``llmkit.quantize``), ``pick`` (real model or stand-in),
   ``data`` (the course's Q&A set) and ``standins`` (tiny models for CPUs, full-shape rehearsal checkpoints);
3. ``environment`` (facts, ``llmkit doctor``, a notebook's needs per card) and ``generation`` (chat sessions, fast
   decoding, speed benchmarks);
4. ``finetune`` (LoRA: data, training, memory, LLaMA-Factory, evaluation), ``deploy`` (servers, GGUF, the
   chatbot) and ``cluster`` (Slurm);
5. ``cli`` (one thin command per task, importing heavy libraries only when it runs) and this package's own API.

>>> import llmkit
>>> callable(llmkit.pick_model) and callable(llmkit.load) and callable(llmkit.preflight)
True
"""

from llmkit.hub import download, locate, pin_hf_home

pin_hf_home()  # before anything imports gptqmodel, whose tokenicer would move the Hugging Face cache to /tmp

from llmkit.environment.env import quiet_torchao_on_cpu_torch  # noqa: E402
from llmkit.environment.cuda_toolkit import use_venv_toolkit  # noqa: E402
from llmkit.import_fixes import forget_gptqmodel_import_tracebacks  # noqa: E402

quiet_torchao_on_cpu_torch()
forget_gptqmodel_import_tracebacks()  # else a model in the call that first imports gptqmodel outlives its `del`
use_venv_toolkit()  # nvcc from NVIDIA's wheels for gptqmodel's kernel builds, where setup.sh installed them

from llmkit.environment.doctor import doctor  # noqa: E402  (after pin_hf_home)
from llmkit.environment.preflight import preflight  # noqa: E402
from llmkit.memory import estimate  # noqa: E402
from llmkit.pick import pick_model, standin_mode  # noqa: E402
from llmkit.standins import list_standins, standin_path  # noqa: E402

__all__ = ["ChatSession", "doctor", "download", "estimate", "list_standins", "load", "locate", "pick_model", "preflight", "quantize", "standin_mode", "standin_path"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``llmkit.load``, ``llmkit.ChatSession`` and ``llmkit.quantize`` import transformers only when first used, so
    ``llmkit doctor`` starts fast."""
    if name == "load":
        from llmkit.loading import load

        return load
    if name == "ChatSession":
        from llmkit.generation.session import ChatSession

        return ChatSession
    if name == "quantize":
        from llmkit.quantization import quantize

        return quantize
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")
