"""Slurm ``sbatch`` scripts for SCOW (PKU's HPC portal) and any Slurm cluster: LoRA on several GPUs or nodes
(``torchrun`` / ``accelerate launch`` of your training script, or LLaMA-Factory's ``FORCE_TORCHRUN=1
llamafactory-cli train``), and inference on one node with several GPUs.

One ``SlurmSettings`` says what to ask Slurm for; a ``*_script`` function renders the job from it and
``write_script`` saves it (never over an existing file unless asked). Submit with ``sbatch FILE`` (SCOW: the job
submission page, or a login-node shell); ``sbatch --test-only FILE`` checks it without queueing.

Every value is shell-quoted; the lines of ``setup`` (``source .venv/bin/activate``, ``module load cuda/12.1``) are
copied as written, since they are shell code. Multi-GPU jobs turn NVLink SHARP / multicast off
(``NCCL_NVLS_ENABLE=0``); other NCCL settings clusters often need are left as comments to uncomment.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from llmkit.errors import BadInput
from llmkit.safe_output import write_text

MAX_GPUS_PER_NODE = 8
LAUNCHERS = ("torchrun", "accelerate")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MEM = re.compile(r"^[1-9][0-9]*[KMGT]?$")
_TIME = re.compile(r"^(?:(\d+)-(\d{1,2})|(\d+)):(\d{2}):(\d{2})$")


@dataclass
class SlurmSettings:
    """What one job asks Slurm for, and how its shell is prepared (``setup``: lines run before the launch).

    ``time`` is ``HH:MM:SS`` or ``D-HH:MM:SS``; ``mem`` is per node (``64G``); ``output`` may use Slurm's ``%x``
    (job name) and ``%j`` (job id); ``partition`` None leaves the cluster's default (SCOW shows the partitions).

    >>> SlurmSettings("lora-qwen2", nodes=2, gpus_per_node=4).total_gpus
    8
    """

    job_name: str
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem: str = "64G"
    time: str = "04:00:00"
    partition: str | None = None
    output: str = "%x-%j.out"
    setup: list[str] = field(default_factory=list)
    master_port: int = 29500

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


def check(s: SlurmSettings) -> SlurmSettings:
    """Raise ``BadInput`` naming the first setting Slurm (or the launch) would reject; returns ``s`` when all are fine.

    >>> check(SlurmSettings("job", time="1-00:00:00")).time
    '1-00:00:00'
    >>> check(SlurmSettings("my job"))
    Traceback (most recent call last):
    llmkit.errors.BadInput: job_name must be letters, digits, '.', '_' or '-' (no spaces), got 'my job'
    """
    def bad(name: str, rule: str):
        raise BadInput(f"{name} must be {rule}, got {getattr(s, name)!r}")

    if not (isinstance(s.job_name, str) and _NAME.match(s.job_name)):
        bad("job_name", "letters, digits, '.', '_' or '-' (no spaces)")
    if not (_int(s.nodes) and s.nodes >= 1):
        bad("nodes", "a whole number >= 1")
    if not (_int(s.gpus_per_node) and 1 <= s.gpus_per_node <= MAX_GPUS_PER_NODE):
        bad("gpus_per_node", f"a whole number from 1 to {MAX_GPUS_PER_NODE}")
    if not (_int(s.cpus_per_task) and s.cpus_per_task >= 1):
        bad("cpus_per_task", "a whole number >= 1")
    if not (isinstance(s.mem, str) and _MEM.match(s.mem)):
        bad("mem", "a size such as 64G, 500M or 128000 (megabytes)")
    match = _TIME.match(s.time) if isinstance(s.time, str) else None
    if not match or int(match.group(4)) > 59 or int(match.group(5)) > 59 or (match.group(2) and
                                                                             int(match.group(2)) > 23):
        bad("time", "HH:MM:SS or D-HH:MM:SS (for example 04:00:00 or 1-12:00:00)")
    if s.partition is not None and not (isinstance(s.partition, str) and _NAME.match(s.partition)):
        bad("partition", "a partition name without spaces (or None for the cluster's default)")
    if not (isinstance(s.output, str) and s.output.strip() and "\n" not in s.output):
        bad("output", "a log file path (Slurm's %x = job name, %j = job id)")
    if isinstance(s.setup, str) or not all(isinstance(line, str) and "\n" not in line for line in s.setup):
        bad("setup", "a list of shell lines, one command each")
    if not (_int(s.master_port) and 1024 < s.master_port < 65536):
        bad("master_port", "a port number from 1025 to 65535")
    return s


def lora_script(s: SlurmSettings, script: str, args: Sequence[str] = (), launcher: str = "torchrun") -> str:
    """An sbatch script that runs your training ``script`` with ``args`` on every GPU of every node.

    One node: ``torchrun --standalone --nproc_per_node G`` (or ``accelerate launch --num_processes G``); several:
    ``srun torchrun --nnodes $SLURM_NNODES --nproc_per_node G --rdzv_backend c10d --rdzv_endpoint
    $MASTER_ADDR:$MASTER_PORT``, one torchrun per node, the first node of the job as the rendezvous host.

    >>> text = lora_script(SlurmSettings("lora", gpus_per_node=4), "train.py", ["--epochs", "3"])
    >>> text.splitlines()[-1]
    'torchrun --standalone --nnodes 1 --nproc_per_node 4 train.py --epochs 3'
    """
    check(s)
    if launcher not in LAUNCHERS:
        raise BadInput(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    program = _join([script, *args])
    g = s.gpus_per_node
    if launcher == "accelerate":
        if s.nodes > 1:
            raise BadInput("launcher='accelerate' is written for one node here; use launcher='torchrun' for "
                           f"nodes={s.nodes} (your script runs the same under both)")
        multi = "--multi_gpu " if g > 1 else ""
        launch = f"accelerate launch {multi}--num_machines 1 --num_processes {g} --main_process_port " \
                 f"{s.master_port} {program}"
    elif s.nodes == 1:
        launch = f"torchrun --standalone --nnodes 1 --nproc_per_node {g} {program}"
    else:
        launch = (f'srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node {g} --rdzv_id "$SLURM_JOB_ID" '
                  f'--rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" {program}')
    return _render(s, launch, f"LoRA training: {program}")


def llamafactory_script(s: SlurmSettings, train_yaml: str | Path) -> str:
    """An sbatch script for ``llamafactory-cli train TRAIN_YAML`` on all GPUs of all nodes (LLaMA-Factory's
    torchrun route: ``FORCE_TORCHRUN=1 NNODES NODE_RANK NPROC_PER_NODE MASTER_ADDR MASTER_PORT``).

    ``llmkit.finetune.llamafactory.write_multi_gpu_configs`` writes a ``train.yaml`` with its DeepSpeed config; the path is
    made absolute so every node finds it (the folder must be shared, as home and project folders are on SCOW).
    Several nodes: ``srun`` starts one ``llamafactory-cli`` per node, each with its ``NODE_RANK=$SLURM_NODEID``.

    >>> llamafactory_script(SlurmSettings("lf", gpus_per_node=2), "/work/train.yaml").splitlines()[-1]
    'FORCE_TORCHRUN=1 NNODES=1 NODE_RANK=0 NPROC_PER_NODE=2 MASTER_ADDR=127.0.0.1 ... train /work/train.yaml'
    """
    check(s)
    cli = _join(["llamafactory-cli", "train", str(Path(train_yaml).absolute())])
    if s.total_gpus == 1:
        launch = cli
    elif s.nodes == 1:
        launch = (f"FORCE_TORCHRUN=1 NNODES=1 NODE_RANK=0 NPROC_PER_NODE={s.gpus_per_node} MASTER_ADDR=127.0.0.1 "
                  f"MASTER_PORT={s.master_port} {cli}")
    else:  # NODE_RANK differs per node: expanded by the shell srun starts on each node, not by this one
        per_node = (f'FORCE_TORCHRUN=1 NNODES="$SLURM_NNODES" NODE_RANK="$SLURM_NODEID" '
                    f'NPROC_PER_NODE={s.gpus_per_node} MASTER_ADDR="$MASTER_ADDR" MASTER_PORT="$MASTER_PORT" {cli}')
        launch = f"srun bash -c {shlex.quote(per_node)}"
    return _render(s, launch, f"LLaMA-Factory training: {train_yaml}")


def chat_command(model: str, prompt: str) -> list[str]:
    """``llmkit chat MODEL -p PROMPT`` as an argv for ``inference_script``.

    >>> chat_command("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "你好")
    ['python', '-m', 'llmkit.cli', 'chat', 'Qwen/Qwen2-72B-Instruct-GPTQ-Int4', '-p', '你好']
    """
    return ["python", "-m", "llmkit.cli", "chat", model, "-p", prompt]


def inference_script(s: SlurmSettings, command: Sequence[str]) -> str:
    """An sbatch script that runs one inference ``command`` (an argv, e.g. ``chat_command(...)`` or ``vllm serve``
    arguments) on one node; the model is spread over the node's GPUs by the program itself (``device_map="auto"``,
    ``--tensor-parallel-size``).

    >>> inference_script(SlurmSettings("chat", gpus_per_node=2), chat_command("m", "hi there")).splitlines()[-1]
    "python -m llmkit.cli chat m -p 'hi there'"
    """
    check(s)
    if s.nodes != 1:
        raise BadInput(f"nodes must be 1 for inference (one program on one node's GPUs), got {s.nodes}")
    if isinstance(command, str) or not command:
        raise BadInput(f"command must be a non-empty list of arguments (an argv), got {command!r}")
    return _render(s, _join(command), "inference: " + _join(command))


def write_script(text: str, path: str | Path, overwrite: bool = False) -> Path:
    """Save a rendered script (executable) to ``path``; an existing file is refused unless ``overwrite=True``.

    >>> write_script(lora_script(SlurmSettings("lora"), "train.py"), "llmkit-lora.sbatch", overwrite=True).name
    'llmkit-lora.sbatch'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text, overwrite)
    path.chmod(0o755)
    return path


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _render(s: SlurmSettings, launch: str, what: str) -> str:
    q = shlex.quote
    lines = ["#!/bin/bash",
             f"# {what.splitlines()[0]}",
             "# Written by llmkit.cluster.slurm. Submit: sbatch THIS_FILE  (check, without queueing: sbatch --test-only)",
             f"#SBATCH --job-name={q(s.job_name)}"]
    if s.partition:
        lines.append(f"#SBATCH --partition={q(s.partition)}")
    lines += [f"#SBATCH --nodes={s.nodes}",
              "# one task per node: the launcher (torchrun / accelerate / llamafactory-cli) starts one process per GPU",
              "#SBATCH --ntasks-per-node=1",
              f"# GPUs per node; newer Slurm also takes --gpus-per-node={s.gpus_per_node} instead",
              f"#SBATCH --gres=gpu:{s.gpus_per_node}",
              f"#SBATCH --cpus-per-task={s.cpus_per_task}",
              f"#SBATCH --mem={q(s.mem)}",
              f"#SBATCH --time={q(s.time)}",
              f"#SBATCH --output={q(s.output)}",
              "",
              "set -e  # no pipefail: `... | head -n 1` ends the command before it early (SIGPIPE), on purpose",
              'echo "job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-$(hostname)}, started $(date)"',
              "nvidia-smi --query-gpu=index,name,memory.total --format=csv || true",
              ""]
    if s.setup:
        lines += ["# environment", *s.setup, ""]
    if s.total_gpus > 1:
        lines += ["# NVLink SHARP / multicast (NVLS) is not available on every node and hangs or fails NCCL on some;",
                  "# keep it off (the course's GPU machines require it off).",
                  "export NCCL_NVLS_ENABLE=0",
                  "# Often needed on clusters (ask your admins, then uncomment):",
                  "# export NCCL_DEBUG=INFO            # log which network and transport NCCL uses",
                  "# export NCCL_SOCKET_IFNAME=ib0     # the network interface the nodes reach each other on",
                  "# export NCCL_IB_DISABLE=1          # no InfiniBand between the nodes: use TCP",
                  "# export NCCL_P2P_DISABLE=1         # GPUs without peer-to-peer access (some PCIe machines)",
                  ""]
    if s.nodes > 1:
        lines += ["# the first node of the job hosts the rendezvous",
                  'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  "export MASTER_ADDR",
                  f"export MASTER_PORT={s.master_port}",
                  "# srun of Slurm 22.05+ does not inherit --cpus-per-task from sbatch",
                  'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"',
                  ""]
    lines.append(launch)
    return "\n".join(lines) + "\n"
