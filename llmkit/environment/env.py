"""Collect facts about this machine for ``llmkit doctor``: GPU, driver, CUDA, torch, packages, disk, settings.

Collecting is separate from judging (``llmkit.doctor``) and from printing, like ``torch.utils.collect_env``:
every probe returns ``COULD_NOT_COLLECT`` instead of raising, so the doctor works on any machine.
Secrets are never collected: for ``HF_TOKEN`` only whether it is set.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from llmkit import card
from llmkit.errors import BadInput, mask_secrets
from llmkit.hub import hf_cache_dir

COULD_NOT_COLLECT = "could not collect"
PACKAGES = [
    "torch", "transformers", "accelerate", "peft", "optimum", "gptqmodel", "auto-gptq", "bitsandbytes",
    "flash-attn", "vllm", "llama-cpp-python", "huggingface-hub", "modelscope", "safetensors", "tokenizers",
]
SETTINGS = ["HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "MODELSCOPE_CACHE", "LLMKIT_MODEL_DIR",
            "SCOW_AI_MODEL_PATH", "CUDA_VISIBLE_DEVICES", "LLMKIT_CARD_GB"]
SECRETS = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN"]


def probe(func):
    """Decorator: a probe that fails returns ``COULD_NOT_COLLECT`` instead of raising.

    >>> probe(lambda: 1 / 0)()
    'could not collect'
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception:  # a probe must never take the doctor down; the row then says "could not collect"
            return COULD_NOT_COLLECT

    return wrapper


def _run(cmd: list[str], timeout: float = 10) -> str | None:
    """stdout of a command, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return result.stdout if result.returncode == 0 else None


@probe
def nvidia_smi() -> dict:
    """GPUs, driver version and the highest CUDA version the driver supports, from ``nvidia-smi``.

    >>> sorted(nvidia_smi())  # doctest: +SKIP
    ['driver_cuda', 'driver_version', 'gpus']
    """
    query = _run(["nvidia-smi", "--query-gpu=index,name,compute_cap,memory.total,memory.free,driver_version",
                  "--format=csv,noheader,nounits"])
    if query is None:
        return {"gpus": [], "driver_version": None, "driver_cuda": None}
    gpus, driver = [], None
    for line in query.strip().splitlines():
        index, name, cap, total, free, driver = [part.strip() for part in line.split(",")]
        gpus.append({"index": int(index), "name": name, "compute_capability": cap,
                     "memory_total_gib": round(int(total) / 1024, 1), "memory_free_gib": round(int(free) / 1024, 1)})
    banner = _run(["nvidia-smi"]) or ""
    match = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return {"gpus": gpus, "driver_version": driver, "driver_cuda": match.group(1) if match else None}


@probe
def torch_facts() -> dict:
    """torch version, the CUDA it was built for, whether it sees a GPU, cuDNN, bf16, SDPA.

    >>> torch_facts()["version"].startswith("2.")
    True
    """
    import torch

    cuda_ok = torch.cuda.is_available()
    return {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": cuda_ok,
        "device_count": torch.cuda.device_count() if cuda_ok else 0,
        "cudnn": torch.backends.cudnn.version() if cuda_ok else None,
        "bf16": torch.cuda.is_bf16_supported() if cuda_ok else None,
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
    }


@probe
def nvcc_version() -> str | None:
    """The CUDA toolkit release of the nvcc that torch's extension builds use: ``$CUDA_HOME/bin/nvcc`` (or
    ``$CUDA_PATH``'s), else ``nvcc`` on PATH; e.g. "13.0", None when absent.

    >>> nvcc_version() in (None, "could not collect") or "." in nvcc_version()
    True
    """
    candidates = [str(Path(os.environ[v]) / "bin" / "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ] + ["nvcc"]
    for cmd in candidates:
        out = _run([cmd, "--version"]) if shutil.which(cmd) else None
        if out and (match := re.search(r"release\s+([\d.]+)", out)):
            return match.group(1)
    return None


@probe
def package_versions() -> dict[str, str | None]:
    """Installed version of each package the course cares about (None when not installed); nothing is imported.

    >>> package_versions()["torch"] is not None
    True
    """
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


CHECKOUT = Path(__file__).resolve().parents[2]  # the course's folder when llmkit runs from its checkout


def llmkit_commit(checkout: Path = CHECKOUT) -> str | None:
    """The course's commit, for result files: ``$LLMKIT_COMMIT``, else ``git describe --always --dirty`` of
    ``checkout`` (None outside a git checkout). A tree copied over a stale ``.git`` (as onto a GPU machine) ends in
    "-dirty".

    >>> llmkit_commit(Path("/")) is None or "LLMKIT_COMMIT" in os.environ  # not a checkout
    True
    """
    if os.environ.get("LLMKIT_COMMIT"):
        return os.environ["LLMKIT_COMMIT"]
    return (_run(["git", "-C", str(checkout), "describe", "--always", "--dirty"]) or "").strip() or None


GPTQ_KERNEL_CHECK = (
    "from gptqmodel.utils.marlin import marlin_runtime_available, marlin_runtime_error\n"
    "print('OK' if marlin_runtime_available() else 'ERROR ' + str(marlin_runtime_error()))"
)


@probe
def gptq_gpu_kernel(cuda_available: bool, gptqmodel_installed: bool, timeout: float = 180) -> str | None:
    """Whether gptqmodel's Marlin GPU kernel loads: "OK", "ERROR <why>", or None where it does not apply.

    Runs in a subprocess so a slow first-time kernel build or a crash cannot hang or kill the doctor.

    >>> gptq_gpu_kernel(cuda_available=False, gptqmodel_installed=True) is None
    True
    """
    if not (cuda_available and gptqmodel_installed):
        return None
    result = subprocess.run([sys.executable, "-c", GPTQ_KERNEL_CHECK], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("OK", "ERROR"))]
    return lines[-1] if lines else "ERROR " + (result.stderr.strip().splitlines() or ["no output"])[-1][:200]


def model_dir() -> Path:
    """Where models go: ``$LLMKIT_MODEL_DIR``, else the Hugging Face hub cache.

    >>> isinstance(model_dir(), Path)
    True
    """
    if os.environ.get("LLMKIT_MODEL_DIR"):
        return Path(os.environ["LLMKIT_MODEL_DIR"]).expanduser()
    return hf_cache_dir()


@probe
def disk_free(path: Path) -> dict:
    """Free space (GiB) on the file system that will hold ``path`` (its nearest existing parent).

    >>> disk_free(Path("/"))["free_gib"] > 0
    True
    """
    existing = path
    while not existing.exists():
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    return {"path": str(path), "free_gib": round(usage.free / 2**30, 1)}


@probe
def ram() -> dict:
    """Total and available RAM in GiB.

    >>> ram()["total_gib"] > 0
    True
    """
    import psutil

    mem = psutil.virtual_memory()
    return {"total_gib": round(mem.total / 2**30, 1), "available_gib": round(mem.available / 2**30, 1)}


def settings() -> dict[str, str | None]:
    """Hub/cache environment variables; tokens appear only as "set (hidden)" or None, a password in a mirror URL
    as ``***`` (``llmkit.errors.mask_secrets``).

    >>> settings()["HF_TOKEN"] in (None, "set (hidden)")
    True
    """
    values = {name: mask_secrets(os.environ[name]) if os.environ.get(name) else None for name in SETTINGS}
    values.update({name: "set (hidden)" if os.environ.get(name) else None for name in SECRETS})
    return values


def as_emulated_card(smi):
    """nvidia-smi's facts with each GPU's memory as the card ``LLMKIT_CARD_GB`` emulates (``llmkit.card``); unchanged
    when it is unset or not a valid size (the doctor's card-emulation row then says what is wrong).

    >>> os.environ["LLMKIT_CARD_GB"] = "24"
    >>> as_emulated_card({"gpus": [{"memory_total_gib": 139.8, "memory_free_gib": 139.0}]})["gpus"][0]
    {'memory_total_gib': 24.0, 'memory_free_gib': 23.2, 'emulated_card_gb': 24.0}
    >>> del os.environ["LLMKIT_CARD_GB"]
    """
    try:
        size = card.card_gib()
    except BadInput:
        size = None
    if size is None or not isinstance(smi, dict):
        return smi
    gib = card.GIB
    gpus = []
    for gpu in smi.get("gpus", []):
        free, total = card.emulate(int(gpu["memory_free_gib"] * gib), int(gpu["memory_total_gib"] * gib), size)
        gpus.append({**gpu, "memory_total_gib": round(total / gib, 1), "memory_free_gib": round(free / gib, 1),
                     "emulated_card_gb": size})
    return {**smi, "gpus": gpus}


def collect_facts() -> dict:
    """Every fact the doctor judges, as a JSON-serialisable dict.

    >>> facts = collect_facts(); facts["python"].startswith("3.")
    True
    """
    smi = as_emulated_card(nvidia_smi())
    torch_info = torch_facts()
    packages = package_versions()
    cuda_ok = isinstance(torch_info, dict) and torch_info.get("cuda_available", False)
    has_gptqmodel = isinstance(packages, dict) and packages.get("gptqmodel") is not None
    return {
        "os": platform.platform(),
        "python": platform.python_version(),
        "nvidia_smi": smi,
        "torch": torch_info,
        "nvcc": nvcc_version(),
        "packages": packages,
        "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None,
        "gptq_gpu_kernel": gptq_gpu_kernel(cuda_ok, has_gptqmodel),
        "disk": disk_free(model_dir()),
        "ram": ram(),
        "settings": settings(),
    }


def quiet_torchao_on_cpu_torch() -> bool:
    """On a CPU-only torch build, show only torchao's errors: importing it (transformers does, for every model)
    logs "Failed to load ..._C_mxfp8...so" for each of its CUDA kernels, which cannot load there and are not
    needed. Reads torch's version from package metadata (no torch import); True when it quieted torchao.

    >>> isinstance(quiet_torchao_on_cpu_torch(), bool)
    True
    """
    import logging

    try:
        cpu_only = "+cpu" in importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    if cpu_only:
        logging.getLogger("torchao").setLevel(logging.ERROR)
    return cpu_only
