"""Judge the facts from ``llmkit.environment.env``: one row per check, OK / WARN / FAIL, each with a one-line fix.

Checks are pure functions of the facts dict, so tests inject facts for machines we do not have
(an old driver under a CUDA 13 torch, a CPU torch on a GPU box, missing GPTQ kernels, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llmkit import card
from llmkit.environment.env import COULD_NOT_COLLECT, collect_facts
from llmkit.errors import BadInput

OK, WARN, FAIL = "OK", "WARN", "FAIL"
TORCH_INDEX = "https://download.pytorch.org/whl"
# CUDA builds PyTorch publishes for current releases (2.9 and later): cu126, cu128, cu130.
TORCH_CUDA_BUILDS = ["12.6", "12.8", "13.0"]
# Last torch release with a CUDA 11.8 build, for drivers older than CUDA 12.
LAST_CU118_TORCH = "2.7.1"
# what the notebooks download in real mode (02/05-10, 03, 03 on a smaller card, 04)
COURSE_MODELS = ("Qwen/Qwen2-7B-Instruct", "Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4",
                 "xverse/XVERSE-7B-Chat")
DATA_DISK_FIX = ("put models on a data disk: export LLMKIT_MODEL_DIR=/root/autodl-tmp/models "
                 "HF_HOME=/root/autodl-tmp/hf (AutoDL), or a SCOW shared folder")


@dataclass
class Row:
    """One line of the doctor's report."""

    check: str
    value: str
    status: str
    fix: str = ""


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def _collected(value) -> bool:
    return value not in (None, COULD_NOT_COLLECT)


def torch_install_command(torch_version: str, driver_cuda: str) -> str:
    """The pip command for a torch build that runs on a driver supporting CUDA ``driver_cuda``.

    Within one CUDA major version a newer build runs on an older driver (minor-version compatibility),
    so any 12.x driver gets cu126; drivers older than CUDA 12 need torch 2.7.1 (cu118) or a driver update.

    >>> torch_install_command("2.13.0+cu130", "12.4")
    'pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'
    """
    base = torch_version.split("+")[0]
    driver = _version_tuple(driver_cuda)
    same_major = [b for b in TORCH_CUDA_BUILDS if _version_tuple(b)[0] == driver[0]]
    usable = [b for b in same_major if _version_tuple(b) <= driver] or same_major[:1]
    if usable:
        tag = "cu" + usable[-1].replace(".", "")
        return f"pip install torch=={base} --index-url {TORCH_INDEX}/{tag}"
    return (f"update the NVIDIA driver (>= 580 runs every current build), or pip install "
            f"torch=={LAST_CU118_TORCH} --index-url {TORCH_INDEX}/cu118")


def check_platform(facts: dict) -> list[Row]:
    """OS and Python rows.

    >>> check_platform({"os": "Linux-6", "python": "3.11.7"})[1].status
    'OK'
    """
    os_ok = str(facts.get("os", "")).startswith("Linux")
    py = str(facts.get("python", ""))
    py_ok = py.startswith(("3.10.", "3.11.", "3.12."))
    return [
        Row("OS", str(facts.get("os")), OK if os_ok else WARN, "" if os_ok else "the course is tested on Linux only"),
        Row("Python", py, OK if py_ok else WARN, "" if py_ok else "use Python 3.11 (the pinned versions are tested on it)"),
    ]


def check_gpus(facts: dict, require_gpu: bool = False) -> list[Row]:
    """One row per GPU (name, compute capability, memory), or one row saying none was found and what to check.

    >>> check_gpus({"nvidia_smi": {"gpus": []}})[0].status
    'WARN'
    """
    smi = facts.get("nvidia_smi")
    if not isinstance(smi, dict):
        return [Row("GPU", COULD_NOT_COLLECT, WARN, "run `nvidia-smi` by hand to see why it fails")]
    if not smi.get("gpus"):
        fix = ("no NVIDIA GPU visible: check `nvidia-smi`; on AutoDL start the instance with a GPU (not 无卡模式); "
               "on SCOW request a GPU partition/--gres=gpu:1; without a GPU use LLMKIT_STANDIN=1")
        return [Row("GPU", "none found", FAIL if require_gpu else WARN, fix)]
    return [
        Row(f"GPU {g['index']}", f"{g['name']}, compute capability {g['compute_capability']}, "
            f"{g['memory_free_gib']} of {g['memory_total_gib']} GiB free"
            + (f" (emulating a {g['emulated_card_gb']:g} GB card)" if g.get("emulated_card_gb") else ""), OK)
        for g in smi["gpus"]
    ]


def check_card_emulation(facts: dict) -> list[Row]:
    """A row when ``LLMKIT_CARD_GB`` makes the GPU behave as a smaller card (``llmkit.card``): WARN, so a
    rehearsal is never mistaken for the real card; FAIL when its value is not a card size.

    >>> check_card_emulation({"settings": {"LLMKIT_CARD_GB": "24"}})[0].status
    'WARN'
    >>> check_card_emulation({"settings": {"LLMKIT_CARD_GB": "big"}})[0].status
    'FAIL'
    """
    value = (facts.get("settings") or {}).get(card.CARD_ENV)
    if not value:
        return []
    try:
        size = card.card_gib(value)
    except BadInput as error:
        return [Row("card emulation", f"{card.CARD_ENV}={value}", FAIL, str(error))]
    return [Row("card emulation", f"{card.CARD_ENV}={value}: the GPU behaves as a {size:g} GB card", WARN,
                "a rehearsal setting; unset LLMKIT_CARD_GB to use the whole GPU")]


def check_driver_and_torch(facts: dict) -> list[Row]:
    """Driver / torch CUDA build / torch sees the GPU: the mismatches seed 001 fought with.

    >>> facts = {"nvidia_smi": {"gpus": [{}], "driver_version": "550.54", "driver_cuda": "12.4"},
    ...          "torch": {"version": "2.13.0+cu130", "cuda_build": "13.0", "cuda_available": False}}
    >>> [r.status for r in check_driver_and_torch(facts)]
    ['OK', 'FAIL', 'FAIL']
    """
    smi, torch = facts.get("nvidia_smi"), facts.get("torch")
    has_gpu = isinstance(smi, dict) and bool(smi.get("gpus"))
    rows = []
    if has_gpu:
        rows.append(Row("NVIDIA driver", f"{smi.get('driver_version')} (supports CUDA <= {smi.get('driver_cuda')})", OK))
    else:
        rows.append(Row("NVIDIA driver", "none (no GPU)", OK))
    if not isinstance(torch, dict):
        return rows + [Row("torch", "not importable", FAIL, "pip install -r requirements.txt")]
    version, build = torch["version"], torch.get("cuda_build")
    row = Row("torch", f"{version} (CUDA build {build or 'none: CPU only'})", OK)
    driver_cuda = smi.get("driver_cuda") if has_gpu else None
    if has_gpu and not build:
        row.status, row.fix = FAIL, "CPU-only torch on a GPU machine: " + torch_install_command(version, driver_cuda or "12.6")
    elif has_gpu and _collected(driver_cuda) and build:
        drv, blt = _version_tuple(driver_cuda), _version_tuple(build)
        if drv[0] < blt[0]:
            row.status, row.fix = FAIL, f"driver supports CUDA {driver_cuda} < torch's {build}: " + torch_install_command(version, driver_cuda)
        elif drv < blt:
            row.status, row.fix = WARN, (f"driver CUDA {driver_cuda} < build {build}: runs via minor-version "
                                         f"compatibility; if kernels fail: " + torch_install_command(version, driver_cuda))
    rows.append(row)
    if has_gpu:
        sees = bool(torch.get("cuda_available"))
        rows.append(Row("torch sees GPU", f"{sees} ({torch.get('device_count', 0)} device(s))", OK if sees else FAIL,
                        "" if sees else "fix the torch row above; check CUDA_VISIBLE_DEVICES is not empty"))
    return rows


def check_toolkit(facts: dict) -> list[Row]:
    """nvcc (gptqmodel compiles its GPTQ GPU kernels with it on first use), cuDNN, bf16 and attention backends.

    >>> check_toolkit({"nvcc": "11.8", "torch": {"cuda_build": "13.0"}})[0].status
    'WARN'
    >>> check_toolkit({"nvcc": None, "torch": {"cuda_build": None}})[0].fix
    'not needed with a CPU build of torch'
    """
    torch = facts.get("torch") if isinstance(facts.get("torch"), dict) else {}
    nvcc, build = facts.get("nvcc"), torch.get("cuda_build")
    why = ("gptqmodel compiles its GPTQ GPU kernels (Marlin) with nvcc the first time a GPTQ model loads on a GPU; "
           "without a working one GPTQ models run on a slow fallback kernel")
    rows = []
    if not _collected(nvcc) and not build:
        rows.append(Row("nvcc", "not found", OK, "not needed with a CPU build of torch"))
    elif not _collected(nvcc) and str(facts.get("gptq_gpu_kernel")).startswith("OK"):
        rows.append(Row("nvcc", "not found", OK, "the GPTQ GPU kernels are already built on this machine"))
    elif not _collected(nvcc):
        rows.append(Row("nvcc", "not found", WARN, f"{why}: rerun bash setup.sh (on a machine with an NVIDIA driver it "
                                                   f"installs NVIDIA's nvcc {build} wheels into the venv), or set CUDA_HOME "
                                                   f"to a CUDA {build} toolkit"))
    elif build and _version_tuple(nvcc)[0] != _version_tuple(build)[0]:
        rows.append(Row("nvcc", nvcc, WARN, f"nvcc {nvcc} vs torch CUDA {build}: {why}, and this nvcc cannot build "
                                              f"them for torch's CUDA; unset CUDA_HOME to use the venv's nvcc from "
                                              f"bash setup.sh, or point it at a CUDA {build} toolkit"))
    else:
        rows.append(Row("nvcc", nvcc, OK, f"matches torch's CUDA {build}: GPTQ kernels compile on first use (minutes)"
                        if build else ""))
    if torch.get("cuda_available"):
        rows.append(Row("cuDNN", str(torch.get("cudnn")), OK))
        bf16 = bool(torch.get("bf16"))
        rows.append(Row("bf16", str(bf16), OK if bf16 else WARN,
                        "" if bf16 else "pre-Ampere GPU: use float16 and watch for fp16 overflow ('!!!!' answers)"))
    flash = facts.get("flash_attn_importable")
    rows.append(Row("attention", f"SDPA {'yes' if torch.get('sdpa') else 'no'}, flash-attn {'yes' if flash else 'no'}", OK,
                    "" if flash else "optional: flash_attention_2 needs compute capability >= 8.0 and pip install flash-attn"))
    return rows


def check_packages(facts: dict) -> list[Row]:
    """The GPTQ stack (optimum + gptqmodel, its GPU kernel) and the optional serving packages.

    >>> rows = check_packages({"packages": {"optimum": "2.3.0", "gptqmodel": None}})
    >>> rows[0].status
    'WARN'
    """
    pkgs = facts.get("packages") if isinstance(facts.get("packages"), dict) else {}
    rows = []
    stack = f"optimum {pkgs.get('optimum') or 'not installed'}, gptqmodel {pkgs.get('gptqmodel') or 'not installed'}"
    if pkgs.get("optimum") and pkgs.get("gptqmodel"):
        rows.append(Row("GPTQ stack", stack, OK))
    else:
        rows.append(Row("GPTQ stack", stack, WARN, "GPTQ models (Qwen2-72B-Int4) will not load: pip install -r requirements.txt"))
    if pkgs.get("auto-gptq"):
        rows.append(Row("auto-gptq", pkgs["auto-gptq"], WARN, "archived and unused by transformers 5: pip uninstall auto-gptq"))
    kernel = facts.get("gptq_gpu_kernel")
    if kernel is None and not pkgs.get("gptqmodel"):
        rows.append(Row("GPTQ GPU kernel", "n/a (gptqmodel not installed)", WARN, "pip install -r requirements.txt"))
    elif kernel is None:
        rows.append(Row("GPTQ GPU kernel", "n/a (no GPU)", OK, "on a CPU GPTQ runs on gptqmodel's torch kernel: correct but slow"))
    elif str(kernel).startswith("OK"):
        rows.append(Row("GPTQ GPU kernel", "Marlin loads", OK))
    elif kernel == COULD_NOT_COLLECT:
        rows.append(Row("GPTQ GPU kernel", "could not check (timed out or crashed)", WARN,
                        "gptqmodel compiles Marlin on first use (minutes): run python -c "
                        "\"import gptqmodel.extension as e; print(e.load('marlin'))\" and read its error"))
    else:
        cause = ("gptqmodel cannot be imported: pip install -r requirements.txt" if "ModuleNotFoundError" in str(kernel)
                 else "reinstall gptqmodel for this torch/CUDA (pip install --force-reinstall --no-deps gptqmodel)")
        rows.append(Row("GPTQ GPU kernel", str(kernel)[:120], WARN,
                        f"GPTQ falls back to the slow torch kernel (several times slower); {cause}"))
    for name, why in [("bitsandbytes", "8/4-bit on the fly, QLoRA"), ("vllm", "notebook 10 serving: bash setup.sh vllm, its own venv"),
                      ("llama-cpp-python", "notebook 09 GGUF: bash setup.sh llama-cpp compiles it")]:
        version = pkgs.get(name)
        rows.append(Row(name, version or "not installed", OK, "" if version else f"optional ({why})"))
    return rows


def course_downloads_gb() -> dict[str, float]:
    """GB of weights each course model downloads, from llmkit's estimates of the published configs.

    >>> sizes = course_downloads_gb(); sizes["Qwen/Qwen2-7B-Instruct"], round(sum(sizes.values()), 1)
    (15.2, 77.3)
    """
    from llmkit.pick import download_size_gb

    return {model: round(download_size_gb(model), 1) for model in COURSE_MODELS}


def check_disk(free_gib: float, path: str) -> Row:
    """Free space where models go against the course's downloads: OK when all fit, else WARN naming what does not.

    >>> check_disk(30.0, "/root/.cache").value
    '30.0 GiB free at /root/.cache; the course downloads 77.3 GB, Qwen/Qwen2-72B-Instruct-GPTQ-Int4 (41.6 GB) does not fit'
    """
    sizes = course_downloads_gb()
    total, free_gb = round(sum(sizes.values()), 1), free_gib * 2**30 / 1e9
    value = f"{free_gib} GiB free at {path}; the course downloads {total} GB"
    if free_gb >= total:
        return Row("disk (models)", value, OK)
    too_big = [f"{model} ({gb} GB)" for model, gb in sizes.items() if gb > free_gb]
    value += (", " + ", ".join(too_big) + (" does" if len(too_big) == 1 else " do") + " not fit") if too_big else ""
    return Row("disk (models)", value, WARN, f"not all of it at once: {DATA_DISK_FIX}")


def check_resources(facts: dict) -> list[Row]:
    """Free disk where models go, RAM, and the hub settings (tokens only as "set (hidden)").

    >>> check_resources({"disk": {"path": "/m", "free_gib": 3.0}, "ram": {"total_gib": 64}, "settings": {}})[0].status
    'WARN'
    """
    rows = []
    disk = facts.get("disk")
    if isinstance(disk, dict):
        rows.append(check_disk(disk["free_gib"], disk["path"]))
    ram = facts.get("ram")
    if isinstance(ram, dict):
        rows.append(Row("RAM", f"{ram['total_gib']} GiB", OK if ram["total_gib"] >= 16 else WARN,
                        "" if ram["total_gib"] >= 16 else "loading a 7B model needs about 16 GiB of RAM on the way to the GPU"))
    hub = facts.get("settings") or {}
    shown = ", ".join(f"{k}={v}" for k, v in hub.items() if v) or "defaults"
    rows.append(Row("hub settings", shown, OK,
                    "" if hub.get("HF_ENDPOINT") else "in mainland China: export HF_ENDPOINT=https://hf-mirror.com, or use ModelScope"))
    return rows


def run_checks(facts: dict, require_gpu: bool = False) -> list[Row]:
    """Every row of the report for these facts.

    >>> rows = run_checks({"os": "Linux", "python": "3.11.7"}); all(r.status in ("OK", "WARN", "FAIL") for r in rows)
    True
    """
    return (check_platform(facts) + check_gpus(facts, require_gpu) + check_card_emulation(facts) + check_driver_and_torch(facts)
            + check_toolkit(facts) + check_packages(facts) + check_resources(facts))


def doctor(require_gpu: bool = False) -> dict:
    """Collect facts and judge them: ``{"facts": {...}, "rows": [{"check", "value", "status", "fix"}, ...]}``.

    >>> report = doctor(); {row["status"] for row in report["rows"]} <= {"OK", "WARN", "FAIL"}
    True
    """
    facts = collect_facts()
    return {"facts": facts, "rows": [asdict(row) for row in run_checks(facts, require_gpu)]}


def exit_code(report: dict) -> int:
    """0 unless a row FAILed (then 1).

    >>> exit_code({"rows": [{"status": "WARN"}]})
    0
    """
    return 1 if any(row["status"] == FAIL for row in report["rows"]) else 0
