"""``llmkit sbatch KIND FILE``: write a Slurm job script for SCOW (or any Slurm cluster) from the course's settings.

Kinds: ``lora`` (``python -m llmkit.finetune.train_lora`` on every GPU of every node, through torchrun or accelerate;
``--train-args`` go to the training script), ``llamafactory`` (``llmkit.finetune.llamafactory.write_multi_gpu_configs``
writes the YAMLs and the DeepSpeed ZeRO config next to FILE, from the same ``LoraSettings`` notebook 08 uses), and
``chat`` (one question to a model spread over one node's GPUs). Submit the file with ``sbatch FILE``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from llmkit.cluster import slurm

KINDS = ("lora", "llamafactory", "chat")


def register(sub) -> None:
    parser = sub.add_parser("sbatch", help="write a Slurm job script (LoRA on several GPUs/nodes, LLaMA-Factory, chat)",
                            description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out", type=Path, help="job script to write (refused if it exists, unless --overwrite)")
    parser.add_argument("--job-name", default=None, help="Slurm job name (default: llmkit-KIND)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--cpus-per-task", type=int, default=8)
    parser.add_argument("--mem", default="64G", help="memory per node (default 64G)")
    parser.add_argument("--time", default="04:00:00", help="time limit, HH:MM:SS or D-HH:MM:SS")
    parser.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    parser.add_argument("--setup", action="append", default=[],
                        help="a shell line run before the launch, e.g. 'source .venv/bin/activate' (repeatable)")
    parser.add_argument("--launcher", choices=slurm.LAUNCHERS, default="torchrun", help="lora: torchrun or accelerate")
    parser.add_argument("--model", help="llamafactory/chat: model id or path")
    parser.add_argument("--dataset-dir", help="llamafactory: folder with dataset_info.json")
    parser.add_argument("--zero-stage", type=int, choices=(2, 3), default=2, help="llamafactory: DeepSpeed ZeRO stage")
    parser.add_argument("-p", "--prompt", default="你好", help="chat: the question")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--train-args", default="", help="lora: the arguments for llmkit.finetune.train_lora, quoted as one "
                                                         "string, e.g. --train-args '--max-steps 100 --lora-rank 8'")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    """Render and write the job script; returns what was written.

    >>> from llmkit.cli import build_parser
    >>> run(build_parser().parse_args(["sbatch", "lora", "/tmp/lora.sbatch", "--gpus-per-node", "2"]))  # doctest: +SKIP
    """
    settings = slurm.SlurmSettings(args.job_name or f"llmkit-{args.kind}", nodes=args.nodes,
                                   gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, mem=args.mem,
                                   time=args.time, partition=args.partition, setup=args.setup)
    written = {}
    if args.kind == "lora":
        train_args = shlex.split(args.train_args)
        text = slurm.lora_script(settings, "-m", ["llmkit.finetune.train_lora", *train_args], launcher=args.launcher)
    elif args.kind == "llamafactory":
        written = _llamafactory_configs(args)
        text = slurm.llamafactory_script(settings, written["train"])
    else:
        text = slurm.inference_script(settings, slurm.chat_command(_required(args.model, "--model"), args.prompt))
    path = slurm.write_script(text, args.out, overwrite=args.overwrite)
    return {"kind": args.kind, "script": str(path), "files": {k: str(v) for k, v in written.items()},
            "launch": text.strip().splitlines()[-1]}, 0


def _llamafactory_configs(args) -> dict:
    from llmkit.finetune.llamafactory import LoraSettings, write_multi_gpu_configs

    folder = args.out.parent / f"{args.out.stem}-configs"
    work = folder.absolute()
    settings = LoraSettings(_required(args.model, "--model"), _required(args.dataset_dir, "--dataset-dir"),
                            str(work / "lora"), str(work / "merged"))
    return write_multi_gpu_configs(settings, folder, zero_stage=args.zero_stage, overwrite=args.overwrite)


def _required(value: str | None, flag: str) -> str:
    if not value:
        from llmkit.errors import BadInput

        raise BadInput(f"this kind of job needs {flag}")
    return value


def render(data: dict) -> None:
    """Where the script went, what it launches, and how to submit it.

    >>> render({"kind": "chat", "script": "/tmp/j.sh", "files": {}, "launch": "python -m llmkit.cli chat m -p hi"})
    wrote /tmp/j.sh
      launches: python -m llmkit.cli chat m -p hi
    submit it with: sbatch /tmp/j.sh   (check it first without queueing: sbatch --test-only /tmp/j.sh)
    """
    print(f"wrote {data['script']}")
    for name, path in data["files"].items():
        print(f"  {name}: {path}")
    print(f"  launches: {data['launch']}")
    print(f"submit it with: sbatch {data['script']}   (check it first without queueing: sbatch --test-only {data['script']})")
