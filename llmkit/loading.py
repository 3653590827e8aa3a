"""``llmkit.load``: find a model on disk, check that it fits, then load it with the plain transformers API.

It adds these things to ``AutoModelForCausalLM.from_pretrained``: the model is resolved with
``llmkit.hub.locate`` (no hard-coded snapshot paths); an incomplete or corrupted folder, pickle-only weights and
a model that needs its own Python code are refused with a message saying what to do; the memory estimate is
compared with what is free *before* anything is loaded; and the dtype is chosen for the GPU (bf16 where
supported, fp16 otherwise).
"""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import convert_file_size_to_int
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from llmkit import card
from llmkit.errors import BadInput, LlmkitError
from llmkit.hub import Located, locate
from llmkit.memory import estimate, per_gpu_gib
from llmkit.xverse import with_xverse_chat_template, xverse_llama_config

GIB = 2**30


class WontFit(LlmkitError, RuntimeError):
    """The estimate says the model does not fit the free memory; nothing was loaded (CLI exit code 4)."""

    exit_code = 4


class IncompleteModel(LlmkitError):
    """The model folder is incomplete or corrupted (``llmkit.hub.verify_model_dir``); nothing was loaded (exit 1).

    >>> IncompleteModel("model.safetensors: truncated").exit_code
    1
    """


def check_complete(found: Located, model: str) -> None:
    """Raise ``IncompleteModel`` listing the problems ``locate`` found in the folder, and how to get it whole.

    >>> from llmkit.hub import Located
    >>> check_complete(Located(Path("/m"), "path", {"ok": False, "problems": ["config.json: missing"]}), "Org/M")
    Traceback (most recent call last):
    ...
    llmkit.loading.IncompleteModel: the model folder /m is incomplete or corrupted: config.json: missing. ...
    """
    if found.report["ok"]:
        return
    problems = "; ".join(found.report["problems"])
    raise IncompleteModel(
        f"the model folder {found.path} is incomplete or corrupted: {problems}. Nothing was loaded. "
        f"Download it again: {_download_command(model, found.path)} (it resumes an interrupted download; "
        "delete a damaged file first if it stays damaged)")


def _download_command(model: str, path: Path) -> str:
    """``llmkit download ID`` for a hub id, or for a Hugging Face cache snapshot the id it belongs to."""
    repo_folder = path.parent.parent.name
    if path.parent.name == "snapshots" and repo_folder.startswith("models--"):
        return "llmkit download " + repo_folder.removeprefix("models--").replace("--", "/")
    if not Path(model).expanduser().exists():
        return f"llmkit download {model}"
    return f"llmkit download ORG/NAME --local-dir {path}"


def check_weights_format(path: Path, allow_pickle: bool) -> bool:
    """Whether the folder has safetensors weights; raise ``BadInput`` when it has only pickle (``*.bin``)
    weights and ``allow_pickle`` is False: unpickling a file can run any code it carries.

    >>> check_weights_format(Path("/no/such/folder"), allow_pickle=False)
    False
    """
    safetensors = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    pickles = sorted(file.name for file in path.glob("*.bin"))
    if pickles and not safetensors and not allow_pickle:
        raise BadInput(
            f"{path} has only pickle weights ({', '.join(pickles)}): loading a pickle file can run any code it "
            "carries. Prefer a safetensors copy of this model (most hub repositories have one); pass "
            "allow_pickle=True (llmkit chat --allow-pickle) only if you trust its source.")
    return safetensors


def check_no_remote_code(path: Path) -> None:
    """Raise ``BadInput`` when config.json names its own Python code (``auto_map``) for a model type transformers
    does not have: llmkit never runs a model's code unless ``trust_remote_code=True`` is passed.

    >>> from llmkit.standins import standin_path
    >>> check_no_remote_code(standin_path("qwen2-chat"))  # a built-in Qwen2: nothing to refuse
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = json.loads((path / "config.json").read_text(encoding="utf-8"))  # check_complete has parsed it
    auto_map = config.get("auto_map")
    model_type = config.get("model_type") if auto_map else None
    if not isinstance(auto_map, dict) or isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return
    refs = [ref for value in auto_map.values() for ref in (value if isinstance(value, list) else [value]) if ref]
    files = sorted({f"{str(ref).split('--')[-1].split('.')[0]}.py" for ref in refs})
    raise BadInput(
        f"{path} needs its own Python code ({', '.join(files)}, named by auto_map in config.json) for model_type "
        f"{model_type!r}, which transformers does not have; llmkit does not run it. Read that code, "
        "then load(..., trust_remote_code=True, revision='<commit>') if you trust it, or use a checkpoint of an "
        "architecture transformers has.")


def choose_dtype(config, cuda: bool, bf16_supported: bool) -> tuple[torch.dtype, str]:
    """The dtype to load with, and why.

    bf16 wherever the GPU has it (compute capability >= 8.0), GPTQ included: gptqmodel's Marlin kernel runs
    bf16, and fp16's narrow range can overflow in large models (NaN logits decode as "!!!!"). Without bf16,
    fp16 (GPTQ's ExLlama kernels accept nothing else). On the CPU the checkpoint's own dtype is kept.

    >>> choose_dtype(AutoConfig.for_model("qwen2", dtype="bfloat16"), cuda=True, bf16_supported=False)[0]
    torch.float16
    """
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    stored = getattr(torch, stored) if isinstance(stored, str) else stored
    quant = getattr(config, "quantization_config", None)
    quant_method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if not cuda:
        return stored, "CPU: the checkpoint's own dtype"
    if bf16_supported:
        return torch.bfloat16, "the GPU supports bf16" + (" (GPTQ: Marlin's bf16 kernel)" if quant_method else "")
    return torch.float16, "no bf16 on this GPU (compute capability < 8.0): fp16 may overflow, watch for '!!!!'"


def free_memory_gib(max_memory: dict | None = None) -> tuple[float, str]:
    """Memory the model may use: free GPU memory summed over visible GPUs (capped by ``max_memory``; an emulated
    card's free memory under ``LLMKIT_CARD_GB``), or available RAM when there is no GPU. Returns (GiB, what was measured).

    >>> free_memory_gib()[0] > 0
    True
    """
    if torch.cuda.is_available():
        total = 0.0
        for index in range(torch.cuda.device_count()):
            free = card.mem_get_info(index)[0] / GIB
            cap = (max_memory or {}).get(index)
            total += min(free, convert_file_size_to_int(cap) / GIB) if cap is not None else free
        emulated = f" (emulated {card.card_gib():g} GB card, {card.CARD_ENV})" if card.card_gib() else ""
        return total, f"free memory of {torch.cuda.device_count()} GPU(s){emulated}"
    import psutil

    return psutil.virtual_memory().available / GIB, "available RAM (no GPU)"


def check_fits(need_gib: float, model_name: str, max_memory: dict | None = None) -> None:
    """Raise ``WontFit`` with the numbers and the ways out when ``need_gib`` exceeds what is free.

    >>> check_fits(10**6, "a huge model")
    Traceback (most recent call last):
    ...
    llmkit.loading.WontFit: a huge model needs about 1000000.0 GiB ...
    """
    free, where = free_memory_gib(max_memory)
    if need_gib > free:
        raise WontFit(
            f"{model_name} needs about {need_gib:.1f} GiB but the {where} is {free:.1f} GiB. Nothing was loaded. "
            "Options: a GPTQ-Int4 checkpoint or llmkit.quantize; more GPUs (device_map='auto' splits the layers); "
            "max_memory={0: '20GiB', 'cpu': '64GiB'} to offload layers to RAM (slow); or load(..., force=True) to try anyway."
        )


SPLITTING_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate spreads layers over every GPU


def gpus_used(device_map, visible: int) -> int:
    """How many GPUs ``from_pretrained(device_map=...)`` puts the model on, out of ``visible``.

    >>> gpus_used("balanced", 2), gpus_used("cuda:0", 2), gpus_used({"model.layers.0": 0, "lm_head": 1}, 2)
    (2, 1, 2)
    """
    if isinstance(device_map, dict):
        return max(1, len({d for d in device_map.values() if isinstance(d, int) or str(d).startswith("cuda")}))
    return max(1, visible) if device_map in SPLITTING_MAPS else 1


def split_need_gib(need: dict, n_gpus: int) -> tuple[float, list[float]]:
    """Memory needed on ``n_gpus`` cards together, and per card: each card pays its own CUDA context, workspace and
    activations on top of its share of the layers (``llmkit.memory.per_gpu_gib``).

    >>> total, each = split_need_gib(estimate("Qwen/Qwen2-72B-Instruct", context=4096), 2)
    >>> len(each), total > estimate("Qwen/Qwen2-72B-Instruct", context=4096)["total_gib"]
    (2, True)
    """
    each = per_gpu_gib(need, n_gpus) if n_gpus > 1 else [need["total_gib"]]
    return sum(each), each


def gptq_backend_config(config, cuda: bool, capability: tuple[int, int] | None, backend: str = "auto"):
    """The ``quantization_config`` to load a GPTQ checkpoint with (only its kernel choice), or None.

    ``backend="auto"`` asks for gptqmodel's Marlin kernel on GPUs that run it (compute capability >= 8.0).
    gptqmodel's own auto choice on Hopper (H100/H200) is Machete, whose first use downloads CUTLASS
    sources: that fails on machines without internet (SCOW compute nodes, measured on the course's H100).
    Older GPUs and the CPU keep gptqmodel's choice. Any other value is passed through ("machete", "exllama_v2", ...).

    >>> cfg = AutoConfig.for_model("qwen2"); cfg.quantization_config = {"quant_method": "gptq", "bits": 4}
    >>> gptq_backend_config(cfg, cuda=True, capability=(9, 0)).backend
    'marlin'
    >>> gptq_backend_config(cfg, cuda=True, capability=(7, 5)) is None
    True
    """
    quant = getattr(config, "quantization_config", None)
    quant = quant if isinstance(quant, dict) else quant.to_dict() if quant is not None else {}
    if quant.get("quant_method") != "gptq":
        return None
    if backend == "auto":
        if not cuda or capability is None or capability < (8, 0):
            return None
        backend = "marlin"
    from transformers import GPTQConfig

    return GPTQConfig(bits=quant["bits"], backend=backend)


def load(model: str, quant: str | None = None, device_map="auto", dtype="auto", max_memory: dict | None = None,
         context: int = 4096, force: bool = False, trust_remote_code: bool = False, revision: str | None = None,
         gptq_backend: str = "auto", allow_pickle: bool = False):
    """Locate, verify, estimate, check and load a causal LM: returns ``(model, tokenizer)``.

    Refused before anything is estimated or loaded: an incomplete or corrupted folder (``IncompleteModel``, naming
    each damaged or missing file), pickle-only weights (``*.bin``) unless ``allow_pickle=True``, and a model whose
    config.json needs its own Python code. Where safetensors exist only they are loaded.

    ``quant`` is passed to the estimate (a GPTQ checkpoint's own quantization is the default); loading
    itself goes through transformers (GPTQ via optimum + gptqmodel, kernel from ``gptq_backend_config``). ``trust_remote_code`` is never implied:
    turning it on runs Python code from the model repository, so it requires a pinned ``revision``. Without it an
    XVERSE checkpoint loads as ``LlamaForCausalLM`` (``llmkit.xverse``).

    Several GPUs: ``device_map="auto"`` / ``"balanced"`` (accelerate) spread the layers over every visible GPU, and
    ``max_memory={0: "70GiB", 1: "70GiB"}`` caps each card; the fit check then counts each card's own overhead
    (``split_need_gib``).

    The steps, each a function of this module: ``checked_folder`` (locate, verify, weight format), ``model_route``
    (XVERSE's Llama route, remote code refused), ``check_model_fits`` (skipped with ``force``), ``choose_dtype``,
    ``route_tokenizer``, ``gptq_arguments`` (the GPTQ kernel), then ``AutoModelForCausalLM.from_pretrained`` with the
    arguments printed as Python (``from_pretrained_call``).

    >>> model, tokenizer = load(llmkit.pick_model("Qwen/Qwen2-7B-Instruct"))  # doctest: +SKIP
    >>> model, tokenizer = load("Qwen/Qwen2-72B-Instruct", device_map="balanced")  # doctest: +SKIP
    """
    if trust_remote_code and not revision:
        raise BadInput("trust_remote_code=True runs code from the model repository: pin it with revision='<commit>'")
    if trust_remote_code:
        warnings.warn(f"trust_remote_code=True: running the repository's own Python code at revision {revision}")
    card.apply()
    path, safetensors = checked_folder(model, allow_pickle)
    route = model_route(path, trust_remote_code)
    cuda = torch.cuda.is_available()
    if not force:
        check_model_fits(path, model, quant, context, device_map, max_memory)
    dtype_reason = "as given"
    if dtype == "auto":
        dtype, dtype_reason = choose_dtype(route.config, cuda, cuda and torch.cuda.is_bf16_supported())
    tokenizer = route_tokenizer(path, route, trust_remote_code)
    arguments = {"dtype": dtype, "device_map": device_map if cuda else None, "max_memory": max_memory if cuda else None,
                 "trust_remote_code": trust_remote_code, "use_safetensors": safetensors or None, **route.extra,
                 **gptq_arguments(route.config, gptq_backend)}
    print(f"[llmkit] {from_pretrained_call(path, arguments)}  # dtype: {dtype_reason}", file=sys.stderr)
    return AutoModelForCausalLM.from_pretrained(path, **arguments), tokenizer


def checked_folder(model: str, allow_pickle: bool) -> tuple[Path, bool]:
    """Step 1 of ``load``: the model's folder on disk, complete, with loadable weights; and whether to read safetensors.

    >>> checked_folder("/no/such/model", allow_pickle=False)
    Traceback (most recent call last):
    ...
    llmkit.hub.locating.ModelNotFound: model '/no/such/model' is not on this machine. Searched:
      - path /no/such/model
    """
    found = locate(model)
    check_complete(found, model)
    path = Path(found.path)
    return path, check_weights_format(path, allow_pickle)


@dataclass
class ModelRoute:
    """How transformers reads a checkpoint: its config, the extra loader arguments, and whether it is XVERSE."""

    config: object
    extra: dict = field(default_factory=dict)
    xverse: bool = False


def model_route(path: Path, trust_remote_code: bool) -> ModelRoute:
    """Step 2 of ``load``, the XVERSE step: an XVERSE checkpoint loads as ``LlamaForCausalLM`` (``llmkit.xverse``),
    without its remote code; any other model must not need remote code unless ``trust_remote_code``.

    >>> model_route(path_of_xverse_7b_chat, trust_remote_code=False).extra  # doctest: +SKIP
    {'config': LlamaConfig {...}}
    """
    llama = None if trust_remote_code else xverse_llama_config(path)
    if llama:
        return ModelRoute(llama, {"config": llama}, xverse=True)
    if not trust_remote_code:
        check_no_remote_code(path)
    return ModelRoute(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))


def check_model_fits(path: Path, model: str, quant: str | None, context: int, device_map, max_memory: dict | None):
    """Step 3 of ``load``: the estimate for ``context`` tokens against what is free on the GPUs the model will use.

    >>> check_model_fits(path_of_72b_bf16, "Qwen/Qwen2-72B-Instruct", None, 4096, "auto", None)  # doctest: +SKIP
    (raises WontFit on any single card: about 140 GiB of weights alone)
    """
    need = estimate(str(path), quant=quant, context=context)
    cuda = torch.cuda.is_available()
    total_gib, _per_gpu = split_need_gib(need, gpus_used(device_map, torch.cuda.device_count()) if cuda else 1)
    check_fits(total_gib, model, max_memory)


def route_tokenizer(path: Path, route: ModelRoute, trust_remote_code: bool):
    """Step 4 of ``load``: the tokenizer, with XVERSE's chat template added on the Llama route.

    >>> route_tokenizer(path_of_qwen2_7b, ModelRoute(config), trust_remote_code=False).eos_token  # doctest: +SKIP
    '<|im_end|>'
    """
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **route.extra)
    return with_xverse_chat_template(tokenizer) if route.xverse else tokenizer


def gptq_arguments(config, backend: str = "auto") -> dict:
    """Step 5 of ``load``, the GPTQ step: ``{"quantization_config": ...}`` choosing the GPTQ kernel on this machine's
    GPU (``gptq_backend_config``), or ``{}`` for a model that is not GPTQ.

    >>> gptq_arguments(AutoConfig.for_model("qwen2"))
    {}
    """
    cuda = torch.cuda.is_available()
    gptq = gptq_backend_config(config, cuda, torch.cuda.get_device_capability() if cuda else None, backend)
    return {"quantization_config": gptq} if gptq else {}


def from_pretrained_call(path, arguments: dict) -> str:
    """The ``from_pretrained`` call ``load`` makes, as Python a learner could type (arguments left at their
    defaults are not shown; a quantization config shows the arguments llmkit chose, ``quantization_config_call``).

    >>> from_pretrained_call("/m/Qwen2-7B-Instruct", {"dtype": torch.bfloat16, "device_map": "auto", "max_memory": None})
    "AutoModelForCausalLM.from_pretrained('/m/Qwen2-7B-Instruct', dtype=torch.bfloat16, device_map='auto')"
    """
    def shown(value) -> str:
        if isinstance(value, torch.dtype):
            return str(value)
        if isinstance(value, QuantizationConfigMixin):  # e.g. GPTQConfig(bits=4, backend='marlin')
            return quantization_config_call(value)
        if hasattr(value, "to_dict") and not isinstance(value, dict):  # a model config object (XVERSE's LlamaConfig)
            return f"{type(value).__name__}(...)"
        return repr(value)

    given = ", ".join(f"{key}={shown(value)}" for key, value in arguments.items() if value not in (None, False))
    return f"AutoModelForCausalLM.from_pretrained({str(path)!r}, {given})"


def quantization_config_call(config) -> str:
    """A transformers quantization config as Python a learner could type: its class with the arguments that differ
    from the class's defaults (the required ones always shown).

    >>> from transformers import GPTQConfig
    >>> quantization_config_call(GPTQConfig(bits=4, backend="marlin"))
    "GPTQConfig(bits=4, backend='marlin')"
    """
    given = []
    for name, parameter in inspect.signature(type(config).__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = getattr(config, name, parameter.default)
        if parameter.default is parameter.empty or value != parameter.default:
            given.append(f"{name}={value!r}")
    return f"{type(config).__name__}({', '.join(given)})"
