"""The LLaMA-Factory route of notebook 08: one set of LoRA settings, written as LLaMA-Factory's train / export /
chat YAML files, run with ``llamafactory-cli`` in LLaMA-Factory's own virtual environment.

LLaMA-Factory pins library versions the course's stack cannot share (transformers<=5.6, peft<=0.18.1, ...), so
``ensure_venv`` creates a separate venv from ``finetune/data/llamafactory-requirements.txt`` (exact pins, with
the reasons) and reuses it while that file is unchanged. Nothing here is interactive: training and export run
as ``llamafactory-cli train|export FILE.yaml``, and chat goes through LLaMA-Factory's Python API
(``llamafactory.chat.ChatModel``) in a scripted call.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from llmkit.errors import BadInput, LlmkitError
from llmkit.safe_output import refuse_existing, write_text
from llmkit.standins import llmkit_home

REQUIREMENTS = "llamafactory-requirements.txt"
PYPI_SIMPLE = "https://pypi.org/simple/"


class NoPackageIndex(LlmkitError):
    """LLaMA-Factory's venv is not installed and pip cannot reach a package index from here (a compute node
    without internet); the message says how to install it elsewhere."""


@dataclass
class LoraSettings:
    """LoRA fine-tuning settings shared by the peft route and the LLaMA-Factory route (same names as LLaMA-Factory).

    ``max_steps > 0`` overrides ``num_train_epochs``. ``lora_target="all"`` is every linear layer except the
    LM head (peft: ``target_modules="all-linear"``); a comma-separated list names modules.

    >>> LoraSettings("Qwen/Qwen2-7B-Instruct", "data", "out", "merged").lora_target
    'all'
    """

    model_name_or_path: str
    dataset_dir: str
    output_dir: str
    export_dir: str
    dataset: str = "identity"
    template: str = "qwen"
    # LLaMA-Factory's "qwen" template defaults to Qwen2.5's system prompt ("You are Qwen, created by Alibaba
    # Cloud. ..."); Qwen2-Instruct's own chat template uses this one. Training under another system prompt than
    # the one transformers / vLLM / llama.cpp will render at inference time changes the answers.
    default_system: str = "You are a helpful assistant."
    cutoff_len: int = 512
    val_size: float = 0.1
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target: str = "all"
    learning_rate: float = 1e-4
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    logging_steps: int = 10
    save_steps: int = 100
    eval_steps: int = 100
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    bf16: bool = True
    seed: int = 42


def train_config(s: LoraSettings, deepspeed: str | Path | None = None) -> dict:
    """``llamafactory-cli train`` settings: SFT with LoRA, loss plot, periodic checkpoints, validation split.

    ``overwrite_output_dir`` stays False: LLaMA-Factory then refuses an output folder that already holds files.
    ``deepspeed`` (multi-GPU route) names a DeepSpeed JSON config (``llmkit.finetune.deepspeed_configs``); without it the
    settings are exactly the single-GPU ones.

    >>> train_config(LoraSettings("m", "data", "out", "merged"))["finetuning_type"]
    'lora'
    >>> train_config(LoraSettings("m", "data", "out", "merged"), deepspeed="/cfg/ds_z3_config.json")["deepspeed"]
    '/cfg/ds_z3_config.json'
    """
    config = _train_config(s)
    if deepspeed is not None:
        config["deepspeed"] = str(deepspeed)
    return config


def _train_config(s: LoraSettings) -> dict:
    return {
        "model_name_or_path": s.model_name_or_path, "trust_remote_code": False,
        "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_target": s.lora_target,
        "lora_rank": s.lora_rank, "lora_alpha": s.lora_alpha, "lora_dropout": s.lora_dropout,
        "dataset": s.dataset, "dataset_dir": s.dataset_dir, "template": s.template, "default_system": s.default_system,
        "cutoff_len": s.cutoff_len,
        "val_size": s.val_size, "overwrite_cache": True,
        "output_dir": s.output_dir, "overwrite_output_dir": False, "plot_loss": True,
        "logging_steps": s.logging_steps, "save_steps": s.save_steps,
        "eval_strategy": "steps", "eval_steps": s.eval_steps, "per_device_eval_batch_size": 1,
        "per_device_train_batch_size": s.per_device_train_batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps, "learning_rate": s.learning_rate,
        "num_train_epochs": s.num_train_epochs, "max_steps": s.max_steps, "lr_scheduler_type": s.lr_scheduler_type,
        "warmup_ratio": s.warmup_ratio, "bf16": s.bf16, "seed": s.seed, "report_to": "none",
    }


def export_config(s: LoraSettings) -> dict:
    """``llamafactory-cli export`` settings: merge the adapter into the base and save safetensors shards.

    >>> export_config(LoraSettings("m", "data", "out", "merged"))["adapter_name_or_path"]
    'out'
    """
    return {"model_name_or_path": s.model_name_or_path, "adapter_name_or_path": s.output_dir, "template": s.template,
            "default_system": s.default_system, "finetuning_type": "lora", "trust_remote_code": False,
            "export_dir": s.export_dir, "export_size": 2,
            "export_device": "cpu", "export_legacy_format": False}


def chat_config(s: LoraSettings) -> dict:
    """``llamafactory-cli chat`` / ``ChatModel`` settings: the base with the adapter, greedy answers.

    >>> chat_config(LoraSettings("m", "data", "out", "merged"))["do_sample"]
    False
    """
    return {"model_name_or_path": s.model_name_or_path, "adapter_name_or_path": s.output_dir, "template": s.template,
            "default_system": s.default_system, "finetuning_type": "lora", "trust_remote_code": False,
            "infer_backend": "huggingface",
            "do_sample": False, "max_new_tokens": 128}


def write_configs(s: LoraSettings, folder: str | Path, overwrite: bool = False,
                  deepspeed: str | Path | None = None) -> dict[str, Path]:
    """Write ``train.yaml``, ``export.yaml`` and ``chat.yaml`` into ``folder``; returns their paths by name.

    Existing files are refused unless ``overwrite=True``; each file appears complete or not at all.
    ``deepspeed`` is written into ``train.yaml`` only (see ``train_config``; ``write_multi_gpu_configs`` writes both).

    >>> sorted(write_configs(LoraSettings("m", "d", "o", "e"), "lf-configs", overwrite=True))
    ['chat', 'export', 'train']
    """
    import yaml

    folder = Path(folder)
    configs = {"train": train_config(s, deepspeed), "export": export_config(s), "chat": chat_config(s)}
    paths = {name: folder / f"{name}.yaml" for name in configs}
    refuse_existing(paths.values(), overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        write_text(paths[name], yaml.safe_dump(config, sort_keys=False, allow_unicode=True), overwrite)
    return paths


def write_multi_gpu_configs(s: LoraSettings, folder: str | Path, zero_stage: int = 2,
                            overwrite: bool = False) -> dict[str, Path]:
    """The multi-GPU route: ``ds_zN_config.json`` and the three YAML files, ``train.yaml`` naming the JSON (absolute
    path, so ``llamafactory-cli train`` finds it from any folder, on every node). Returns the paths by name.

    Launch it with ``FORCE_TORCHRUN=1 llamafactory-cli train train.yaml`` (``llmkit.cluster.slurm`` writes the sbatch job).
    Nothing is written if any of the four files exists, unless ``overwrite=True``.

    >>> paths = write_multi_gpu_configs(LoraSettings("m", "d", "o", "e"), "lf-multi", 3, overwrite=True)
    >>> sorted(paths), paths["deepspeed"].name
    (['chat', 'deepspeed', 'export', 'train'], 'ds_z3_config.json')
    """
    from llmkit.finetune.deepspeed_configs import write_zero_config, zero_config

    zero_config(zero_stage)  # a bad stage is refused before anything is written
    folder = Path(folder).resolve()
    ds_path = folder / f"ds_z{zero_stage}_config.json"
    refuse_existing([ds_path] + [folder / f"{name}.yaml" for name in ("train", "export", "chat")], overwrite)
    write_zero_config(zero_stage, ds_path, overwrite)
    return {**write_configs(s, folder, overwrite, deepspeed=ds_path), "deepspeed": ds_path}


def default_venv() -> Path:
    """``$LLMKIT_HOME/venv-llamafactory`` (default ``~/.cache/llmkit/venv-llamafactory``).

    >>> default_venv().name
    'venv-llamafactory'
    """
    return llmkit_home() / "venv-llamafactory"


def ensure_venv(venv: str | Path | None = None, python: str = sys.executable) -> dict:
    """Create LLaMA-Factory's venv (or reuse it when its pinned requirements are unchanged); returns what it did.

    The pip log goes to ``VENV/pip-install.log``; a failure raises ``RuntimeError`` with its last lines.

    >>> ensure_venv()["seconds"] >= 0  # doctest: +SKIP
    True
    """
    venv = Path(venv or default_venv())
    requirements = resources.files("llmkit.finetune.data") / REQUIREMENTS
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / ".llmkit-requirements"
    if stamp.is_file() and stamp.read_text() == wanted and (venv / "bin" / "llamafactory-cli").exists():
        return {"venv": str(venv), "created": False, "seconds": 0.0}
    problem = pip_index_problem()
    if problem:
        raise NoPackageIndex(
            f"LLaMA-Factory's venv ({venv}) is not installed, and it cannot be installed here: {problem}. Install it "
            "where pip reaches PyPI or a mirror and this folder is visible (on SCOW: the login node), with "
            "`.venv/bin/python -c \"from llmkit.finetune import llamafactory as lf; lf.ensure_venv()\"`, or set PIP_INDEX_URL "
            "to a mirror you can reach")
    start = time.perf_counter()
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    with resources.as_file(requirements) as path:
        _logged([str(venv / "bin" / "pip"), "install", "--progress-bar", "off", "-r", str(path)],
                venv / "pip-install.log", "installing LLaMA-Factory")
    stamp.write_text(wanted)
    return {"venv": str(venv), "created": True, "seconds": round(time.perf_counter() - start, 1)}


def pip_index_problem(timeout_s: float = 5.0) -> str | None:
    """Why pip cannot install from a package index here, or None when its index answers: ``PIP_NO_INDEX`` is set,
    or the index (``PIP_INDEX_URL``, else pip's configured ``index-url``, else PyPI) gives no answer within
    ``timeout_s`` (an HTTP error is an answer: the server is there). None with ``PIP_FIND_LINKS`` (a local
    wheelhouse may hold everything; pip names what it lacks).

    >>> pip_index_problem() is None or "index" in pip_index_problem()
    True
    """
    if os.environ.get("PIP_FIND_LINKS"):
        return None
    if os.environ.get("PIP_NO_INDEX", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return "PIP_NO_INDEX is set, so pip uses no package index"
    url = os.environ.get("PIP_INDEX_URL") or _configured_index() or PYPI_SIMPLE
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as error:  # no route, refused, timed out, name not resolved; a malformed URL
        return f"pip's package index {url} gave no answer ({error})"
    return None


def _configured_index() -> str | None:
    """pip's own ``index-url`` setting (``pip config set global.index-url ...``), or None."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True,
                          text=True)
    url = done.stdout.strip()
    return url if done.returncode == 0 and url else None


def _env() -> dict:
    """The environment for LLaMA-Factory's processes: a Jupyter kernel's inline matplotlib backend (inherited
    through MPLBACKEND) does not exist in LLaMA-Factory's venv, and its loss plots only need files."""
    return {**os.environ, "MPLBACKEND": "Agg"}


def _logged(command: list[str], log: Path, what: str) -> None:
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=_env())
    if done.returncode != 0:
        tail = " | ".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-6:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}; full log: {log}): {tail}")


def run_cli(action: str, config: str | Path, venv: str | Path | None = None, overwrite: bool = False) -> dict:
    """``llamafactory-cli train|export CONFIG`` in LLaMA-Factory's venv; output to ``CONFIG.log`` beside it.

    ``export`` refuses an existing ``export_dir`` unless ``overwrite=True`` (LLaMA-Factory would write into it);
    ``train`` is guarded by LLaMA-Factory itself (``overwrite_output_dir: false``).

    >>> run_cli("train", "/tmp/lf-configs/train.yaml")  # doctest: +SKIP
    {'action': 'train', 'command': 'llamafactory-cli train /tmp/lf-configs/train.yaml', 'seconds': 41.2, 'log': '/tmp/lf-configs/train.yaml.log'}
    """
    import yaml

    if action not in ("train", "export"):
        raise BadInput(f"action must be 'train' or 'export', got {action!r} (chat: use llmkit.finetune.llamafactory.chat)")
    venv, config = Path(venv or default_venv()), Path(config)
    if action == "export":
        export_dir = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("export_dir")
        refuse_existing([export_dir] if export_dir else [], overwrite)
    log = config.with_name(config.name + ".log")
    start = time.perf_counter()
    _logged([str(venv / "bin" / "llamafactory-cli"), action, str(config)], log, f"llamafactory-cli {action}")
    return {"action": action, "command": f"llamafactory-cli {action} {config}",
            "seconds": round(time.perf_counter() - start, 1), "log": str(log)}


_CHAT_SCRIPT = """
import json, sys
from llamafactory.chat import ChatModel
args, questions = json.loads(sys.argv[1]), json.loads(sys.argv[2])
model = ChatModel(args)
print(json.dumps([model.chat([{"role": "user", "content": q}])[0].response_text for q in questions]))
"""


def chat(s: LoraSettings, questions: list[str], venv: str | Path | None = None) -> list[str]:
    """Greedy answers from LLaMA-Factory's own ``ChatModel`` (base + adapter), one per question, without a prompt.

    >>> chat(settings, ["你是谁？"])  # doctest: +SKIP
    ['我是 小K，……']
    """
    python = Path(venv or default_venv()) / "bin" / "python"
    done = subprocess.run([str(python), "-c", _CHAT_SCRIPT, json.dumps(chat_config(s)), json.dumps(questions)],
                          capture_output=True, text=True, env=_env())
    if done.returncode != 0:
        raise RuntimeError(f"LLaMA-Factory chat failed: {' | '.join(done.stderr.strip().splitlines()[-6:])}")
    return json.loads(done.stdout.strip().splitlines()[-1])

