"""LLaMA-Factory route: the YAML files written from one set of settings (the real run is in notebook 08)."""

import json
from pathlib import Path

import pytest
import yaml

from llmkit.finetune import llamafactory as lf
from llmkit.errors import BadInput


@pytest.fixture
def settings(tmp_path):
    return lf.LoraSettings("/models/qwen2", str(tmp_path / "data"), str(tmp_path / "lora"), str(tmp_path / "merged"),
                           cutoff_len=256, max_steps=30, bf16=False)


def test_configs_come_from_the_same_settings(settings, tmp_path):
    paths = lf.write_configs(settings, tmp_path / "configs")
    train, export, chat = (yaml.safe_load(paths[n].read_text()) for n in ("train", "export", "chat"))
    assert train["finetuning_type"] == export["finetuning_type"] == chat["finetuning_type"] == "lora"
    assert train["model_name_or_path"] == export["model_name_or_path"] == chat["model_name_or_path"] == "/models/qwen2"
    assert export["adapter_name_or_path"] == chat["adapter_name_or_path"] == train["output_dir"]
    assert train["template"] == export["template"] == chat["template"] == "qwen"
    assert (train["lora_target"], train["cutoff_len"], train["max_steps"], train["plot_loss"]) == ("all", 256, 30, True)
    assert train["overwrite_output_dir"] is False and train["trust_remote_code"] is False
    assert train["val_size"] == 0.1 and export["export_dir"] == settings.export_dir
    assert train["default_system"] == export["default_system"] == chat["default_system"] == "You are a helpful assistant."


def test_configs_are_not_overwritten_unless_asked(settings, tmp_path):
    paths = lf.write_configs(settings, tmp_path / "configs")
    paths["train"].write_text("mine")
    with pytest.raises(BadInput, match="exist already"):
        lf.write_configs(settings, tmp_path / "configs")
    assert paths["train"].read_text() == "mine"
    lf.write_configs(settings, tmp_path / "configs", overwrite=True)
    assert yaml.safe_load(paths["train"].read_text())["stage"] == "sft"


def test_only_train_and_export_run_through_the_cli(tmp_path):
    with pytest.raises(BadInput, match="'train' or 'export'"):
        lf.run_cli("chat", tmp_path / "chat.yaml")


def fake_cli(tmp_path, script: str):
    """A venv whose llamafactory-cli is ``script`` (shell), and a train.yaml for it."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    cli = venv / "bin" / "llamafactory-cli"
    cli.write_text("#!/bin/sh\n" + script)
    cli.chmod(0o755)
    config = tmp_path / "train.yaml"
    config.write_text("stage: sft\n")
    return venv, config


def test_a_failing_cli_reports_its_log(tmp_path):
    venv, config = fake_cli(tmp_path, "echo 'ValueError: Output directory already exists and is not empty.'\nexit 1\n")
    with pytest.raises(RuntimeError, match="llamafactory-cli train failed \\(exit 1.*Output directory already exists"):
        lf.run_cli("train", config, venv=venv)


def test_a_notebook_matplotlib_backend_does_not_leak_into_llamafactory(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    venv, config = fake_cli(tmp_path, 'echo "backend=$MPLBACKEND"\n')
    result = lf.run_cli("train", config, venv=venv)
    assert "backend=Agg" in Path(result["log"]).read_text()
    assert result["command"] == f"llamafactory-cli train {config}"  # what the learner would type


@pytest.mark.parametrize("name", ["train", "export", "chat"])
def test_every_config_keeps_remote_code_off_and_the_output_folder_protected(settings, tmp_path, name):
    text = lf.write_configs(settings, tmp_path / "configs")[name].read_text()
    config = yaml.safe_load(text)
    assert config["trust_remote_code"] is False and "trust_remote_code: false\n" in text  # no code from the model repo
    if name == "train":  # LLaMA-Factory then refuses a non-empty output_dir (or resumes from its checkpoint)
        assert config["overwrite_output_dir"] is False and "overwrite_output_dir: false\n" in text


def test_export_refuses_an_existing_export_folder_unless_asked(settings, tmp_path):
    export = lf.write_configs(settings, tmp_path / "configs")["export"]
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"an earlier export")
    venv, _ = fake_cli(tmp_path, "exit 0\n")
    with pytest.raises(BadInput, match=f"{merged} exists already .* pass overwrite=True to replace it"):
        lf.run_cli("export", export, venv=venv)
    assert (merged / "model.safetensors").read_bytes() == b"an earlier export"
    assert lf.run_cli("export", export, venv=venv, overwrite=True)["action"] == "export"


def test_single_gpu_train_yaml_is_unchanged_without_deepspeed(settings, tmp_path):
    plain = lf.write_configs(settings, tmp_path / "a")["train"].read_bytes()
    assert lf.write_configs(settings, tmp_path / "b", deepspeed=None)["train"].read_bytes() == plain
    assert b"deepspeed" not in plain and "deepspeed" not in lf.train_config(settings)


@pytest.mark.parametrize("stage", [2, 3])
def test_multi_gpu_train_yaml_names_its_deepspeed_file(settings, tmp_path, stage):
    paths = lf.write_multi_gpu_configs(settings, tmp_path / "multi", zero_stage=stage)
    train = yaml.safe_load(paths["train"].read_text())
    assert Path(train["deepspeed"]) == paths["deepspeed"] and paths["deepspeed"].is_absolute()
    assert json.loads(paths["deepspeed"].read_text())["zero_optimization"]["stage"] == stage
    single = lf.train_config(settings)
    assert {k: v for k, v in train.items() if k != "deepspeed"} == single  # the same settings otherwise
    assert yaml.safe_load(paths["export"].read_text()) == lf.export_config(settings)


def test_multi_gpu_configs_refuse_existing_files_and_bad_stages(settings, tmp_path):
    folder = tmp_path / "multi"
    folder.mkdir()
    (folder / "ds_z2_config.json").write_text("mine")
    with pytest.raises(BadInput, match="ds_z2_config.json exists already"):
        lf.write_multi_gpu_configs(settings, folder)
    assert (folder / "ds_z2_config.json").read_text() == "mine" and not (folder / "train.yaml").exists()
    with pytest.raises(BadInput, match="stage must be 2 or 3"):
        lf.write_multi_gpu_configs(settings, tmp_path / "other", zero_stage=1)
    assert not (tmp_path / "other").exists()
    lf.write_multi_gpu_configs(settings, folder, overwrite=True)
    assert json.loads((folder / "ds_z2_config.json").read_text())["zero_optimization"]["stage"] == 2


def test_without_a_package_index_the_venv_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    """A compute node without internet: one clear error saying where to install, not a half-made venv."""
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(lf.NoPackageIndex, match="PIP_NO_INDEX is set.*login node"):
        lf.ensure_venv(tmp_path / "lf-venv")
    assert not (tmp_path / "lf-venv").exists()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))  # a local wheelhouse: pip may have all it needs
    assert lf.pip_index_problem() is None


def test_an_index_that_does_not_answer_is_named(monkeypatch):
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # port 9 (discard): nothing listens
    assert lf.pip_index_problem(timeout_s=2).startswith("pip's package index http://127.0.0.1:9/simple/ gave no answer")
