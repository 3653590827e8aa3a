"""Slurm jobs (dry runs): rendered from settings, valid bash, #SBATCH lines as asked, and run with stub
srun / torchrun / accelerate / llamafactory-cli / scontrol / nvidia-smi to prove they launch what they say."""

import json
import os
import shlex
import subprocess

import pytest

from llmkit.finetune import deepspeed_configs as ds
from llmkit.finetune import llamafactory as lf
from llmkit.cluster import slurm
from llmkit.errors import BadInput

STUB = """#!/bin/bash
{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf '\\t%s' "$a"; done; printf '\\n'; } >> "$STUB_LOG"
"""
STUBS = {
    "srun": 'for ((i = 0; i < ${SLURM_NNODES:-1}; i++)); do SLURM_NODEID=$i "$@" || exit $?; done\n',
    "scontrol": 'printf "gpu-node-07\\ngpu-node-08\\n"\n',
    "nvidia-smi": "echo 'index, name, memory.total [MiB]'\n",
    "torchrun": "", "accelerate": "",
    "llamafactory-cli": ('printf "env\\t%s\\n" "FORCE_TORCHRUN=$FORCE_TORCHRUN NNODES=$NNODES NODE_RANK=$NODE_RANK '
                         'NPROC_PER_NODE=$NPROC_PER_NODE MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"'
                         ' >> "$STUB_LOG"\n'),
}


def two_by_four(**changes):
    base = dict(job_name="lora-qwen2", nodes=2, gpus_per_node=4, cpus_per_task=32, mem="256G", time="1-00:00:00",
                partition="gpu", output="logs/%x-%j.out", setup=["echo setup-ran"])
    return slurm.SlurmSettings(**{**base, **changes})


def sbatch_options(text):
    """The #SBATCH directives as {option: value}; they must all come before the first command."""
    options, seen_command = {}, False
    for line in text.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            assert not seen_command, "sbatch ignores #SBATCH lines after the first command"
            key, _, value = line[len("#SBATCH "):].partition("=")
            options[key] = shlex.split(value)[0]
        elif line.strip() and not line.startswith("#"):
            seen_command = True
    return options


def dry_run(text, tmp_path, nodes, extra_stubs=()):
    """Run the script with bash, stubs first on PATH and the SLURM_* variables a job has; returns the logged calls."""
    bin_dir, log = tmp_path / "stubs", tmp_path / "calls.log"
    bin_dir.mkdir(exist_ok=True)
    log.write_text("")  # a fresh log for each run
    for name, body in {**STUBS, **{name: "" for name in extra_stubs}}.items():
        (bin_dir / name).write_text(STUB + body)
        (bin_dir / name).chmod(0o755)
    script = slurm.write_script(text, tmp_path / "job.sbatch", overwrite=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log), "SLURM_JOB_ID": "4242",
           "SLURM_NNODES": str(nodes), "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_CPUS_PER_TASK": "32"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "setup-ran" in done.stdout
    return [line.split("\t") for line in log.read_text().splitlines()]


def launches(calls):
    return [c for c in calls if c[0] not in ("nvidia-smi", "scontrol")]


def test_sbatch_lines_are_the_settings_and_bash_accepts_the_script(tmp_path):
    for text in (slurm.lora_script(two_by_four(), "train.py"), slurm.llamafactory_script(two_by_four(), "t.yaml"),
                 slurm.inference_script(two_by_four(nodes=1), slurm.chat_command("m", "hi"))):
        path = slurm.write_script(text, tmp_path / "job.sbatch", overwrite=True)
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
        options = sbatch_options(text)
        assert options["--job-name"] == "lora-qwen2" and options["--partition"] == "gpu"
        assert options["--gres"] == "gpu:4" and options["--ntasks-per-node"] == "1"
        assert (options["--cpus-per-task"], options["--mem"], options["--time"]) == ("32", "256G", "1-00:00:00")
        assert options["--output"] == "logs/%x-%j.out" and options["--nodes"] in ("1", "2")
        assert "--gpus-per-node=4" in text  # mentioned as the alternative, in a comment
        assert "export NCCL_NVLS_ENABLE=0" in text and "# export NCCL_IB_DISABLE=1" in text


def test_no_partition_line_when_none_and_no_nccl_for_one_gpu():
    text = slurm.lora_script(slurm.SlurmSettings("one", gpus_per_node=1), "train.py")
    assert "--partition" not in sbatch_options(text) and "NCCL_NVLS_ENABLE" not in text


def test_two_nodes_torchrun_launches_what_the_settings_say(tmp_path):
    text = slurm.lora_script(two_by_four(), "train lora.py", ["--config", "my run.yaml"])
    assert text.splitlines()[-1].startswith("srun torchrun --nnodes \"$SLURM_NNODES\" --nproc_per_node 4 ")
    calls = launches(dry_run(text, tmp_path, nodes=2))
    torchrun = ["torchrun", "--nnodes", "2", "--nproc_per_node", "4", "--rdzv_id", "4242", "--rdzv_backend", "c10d",
                "--rdzv_endpoint", "gpu-node-07:29500", "train lora.py", "--config", "my run.yaml"]
    assert calls == [["srun", *torchrun], torchrun, torchrun]  # srun starts one torchrun per node


def test_one_node_torchrun_and_accelerate(tmp_path):
    text = slurm.lora_script(two_by_four(nodes=1), "train.py", ["--lr", "1e-4"])
    assert launches(dry_run(text, tmp_path, nodes=1)) == [
        ["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", "4", "train.py", "--lr", "1e-4"]]
    assert "scontrol" not in text and "srun" not in text
    text = slurm.lora_script(two_by_four(nodes=1), "train.py", launcher="accelerate")
    assert launches(dry_run(text, tmp_path, nodes=1)) == [
        ["accelerate", "launch", "--multi_gpu", "--num_machines", "1", "--num_processes", "4",
         "--main_process_port", "29500", "train.py"]]
    with pytest.raises(BadInput, match="launcher='torchrun'"):
        slurm.lora_script(two_by_four(), "train.py", launcher="accelerate")
    with pytest.raises(BadInput, match="launcher must be"):
        slurm.lora_script(two_by_four(), "train.py", launcher="deepspeed")


def test_llamafactory_two_nodes_gets_its_torchrun_variables_on_each_node(tmp_path):
    configs = lf.write_multi_gpu_configs(lf.LoraSettings("/models/qwen2", "d", "o", "e"), tmp_path / "lf", 3)
    text = slurm.llamafactory_script(two_by_four(), configs["train"])
    calls = launches(dry_run(text, tmp_path, nodes=2))
    cli = ["llamafactory-cli", "train", str(configs["train"])]
    assert calls[0][:2] == ["srun", "bash"]
    assert calls[1:] == [cli, ["env", "FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0 NPROC_PER_NODE=4 "
                                      "MASTER_ADDR=gpu-node-07 MASTER_PORT=29500"],
                         cli, ["env", "FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=1 NPROC_PER_NODE=4 "
                                      "MASTER_ADDR=gpu-node-07 MASTER_PORT=29500"]]


def test_llamafactory_one_node(tmp_path):
    text = slurm.llamafactory_script(two_by_four(nodes=1, master_port=29611), "train.yaml")
    calls = launches(dry_run(text, tmp_path, nodes=1))
    assert calls == [["llamafactory-cli", "train", os.path.abspath("train.yaml")],  # absolute: every node finds it
                     ["env", "FORCE_TORCHRUN=1 NNODES=1 NODE_RANK=0 NPROC_PER_NODE=4 MASTER_ADDR=127.0.0.1 "
                             "MASTER_PORT=29611"]]
    single = slurm.llamafactory_script(slurm.SlurmSettings("one"), "/w/train.yaml")
    assert single.splitlines()[-1] == "llamafactory-cli train /w/train.yaml"


def test_inference_runs_the_command_on_one_node(tmp_path):
    command = slurm.chat_command("/m/q72", "你是谁？ ok")
    text = slurm.inference_script(two_by_four(nodes=1, job_name="chat72b"), command)
    calls = launches(dry_run(text, tmp_path, nodes=1, extra_stubs=["python"]))  # only the argv matters here
    assert calls == [["python", "-m", "llmkit.cli", "chat", "/m/q72", "-p", "你是谁？ ok"]]
    with pytest.raises(BadInput, match="nodes must be 1 for inference"):
        slurm.inference_script(two_by_four(), ["vllm", "serve", "m"])
    with pytest.raises(BadInput, match="command must be"):
        slurm.inference_script(two_by_four(nodes=1), "python -m llmkit.cli chat m")


@pytest.mark.parametrize("field, value", [
    ("job_name", "my job"), ("job_name", ""), ("nodes", 0), ("nodes", 1.5), ("gpus_per_node", 0),
    ("gpus_per_node", 9), ("cpus_per_task", 0), ("mem", "lots"), ("time", "4h"), ("time", "04:61:00"),
    ("time", "1-25:00:00"), ("partition", "gpu a100"), ("output", ""), ("setup", "source x"), ("master_port", 80),
])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(BadInput, match=f"^{field} must be"):
        slurm.lora_script(two_by_four(**{field: value}), "train.py")


@pytest.mark.parametrize("time", ["04:00:00", "100:00:00", "0-00:30:00", "7-23:59:59"])
def test_good_times(time):
    assert slurm.check(two_by_four(time=time)).time == time


def test_existing_script_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "job.sbatch"
    path.write_text("mine")
    text = slurm.lora_script(two_by_four(), "train.py")
    with pytest.raises(BadInput, match="exists already"):
        slurm.write_script(text, path)
    assert path.read_text() == "mine"
    assert slurm.write_script(text, path, overwrite=True).read_text() == text and os.access(path, os.X_OK)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_files_parse_and_have_their_stage(tmp_path, stage):
    path = ds.write_zero_config(stage, tmp_path / f"ds_z{stage}.json")
    config = json.loads(path.read_text())
    assert config["zero_optimization"]["stage"] == stage and config["bf16"] == {"enabled": "auto"}
    assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    with pytest.raises(BadInput, match="exists already"):
        ds.write_zero_config(stage, path)
    with pytest.raises(BadInput, match="stage must be 2 or 3"):
        ds.zero_config(1)


# --- the `llmkit sbatch` command ---------------------------------------------------------------------------------

def test_cli_writes_a_two_node_lora_job_that_launches_llmkit_train_lora(tmp_path, capsys):
    from llmkit.cli import main

    job = tmp_path / "lora.sbatch"
    argv = ["sbatch", "lora", str(job), "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
            "--setup", "source .venv/bin/activate", "--train-args", "--max-steps 10 --lora-rank 8"]
    assert main(argv) == 0
    text = job.read_text()
    assert subprocess.run(["bash", "-n", str(job)]).returncode == 0
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gres=gpu:4" in text and "#SBATCH --partition=gpu" in text
    assert "source .venv/bin/activate" in text and "export NCCL_NVLS_ENABLE=0" in text
    assert text.strip().splitlines()[-1].startswith('srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 4 ')
    assert text.strip().endswith("-m llmkit.finetune.train_lora --max-steps 10 --lora-rank 8")
    assert f"sbatch {job}" in capsys.readouterr().out
    assert main(argv) == 2, "an existing job script is not overwritten"
    assert job.read_text() == text


def test_cli_llamafactory_job_writes_its_deepspeed_configs(tmp_path):
    from llmkit.cli import main

    job = tmp_path / "lf.sbatch"
    assert main(["sbatch", "llamafactory", str(job), "--gpus-per-node", "2", "--model", "Qwen/Qwen2-7B-Instruct",
                 "--dataset-dir", str(tmp_path / "data"), "--zero-stage", "3"]) == 0
    configs = tmp_path / "lf-configs"
    assert json.loads((configs / "ds_z3_config.json").read_text())["zero_optimization"]["stage"] == 3
    assert f"deepspeed: {configs / 'ds_z3_config.json'}" in (configs / "train.yaml").read_text()
    assert job.read_text().strip().endswith(f"llamafactory-cli train {configs / 'train.yaml'}")


def test_cli_chat_job_needs_a_model(tmp_path, capsys):
    from llmkit.cli import main

    assert main(["sbatch", "chat", str(tmp_path / "c.sbatch")]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert not (tmp_path / "c.sbatch").exists()
