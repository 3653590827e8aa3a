import json
import subprocess
import sys


from llmkit.environment import env
from llmkit.environment.doctor import FAIL, OK, WARN, run_checks, torch_install_command


def gpu_facts(driver_cuda="13.0", torch_build="13.0", torch_version="2.13.0+cu130", cuda_available=True, **extra):
    facts = {
        "os": "Linux-6.8", "python": "3.11.7",
        "nvidia_smi": {"gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9",
                                 "memory_total_gib": 24.0, "memory_free_gib": 23.5}],
                       "driver_version": "550.54.14", "driver_cuda": driver_cuda},
        "torch": {"version": torch_version, "cuda_build": torch_build, "cuda_available": cuda_available,
                  "device_count": 1, "cudnn": 91000, "bf16": True, "sdpa": True},
        "nvcc": None, "packages": {"optimum": "2.3.0", "gptqmodel": "7.6.0"}, "flash_attn_importable": False,
        "gptq_gpu_kernel": "OK", "disk": {"path": "/m", "free_gib": 200.0}, "ram": {"total_gib": 64.0},
        "settings": {},
    }
    facts.update(extra)
    return facts


def row(rows, check):
    return next(r for r in rows if r.check == check)


def test_matching_gpu_stack_is_all_ok():
    rows = run_checks(gpu_facts())
    assert {r.status for r in rows} == {OK}, [r for r in rows if r.status != OK]


def test_old_driver_under_cuda13_torch_fails_with_exact_pip_command():
    torch_row = row(run_checks(gpu_facts(driver_cuda="12.4", cuda_available=False)), "torch")
    assert torch_row.status == FAIL
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" in torch_row.fix


def test_same_major_older_minor_driver_warns():
    assert row(run_checks(gpu_facts(driver_cuda="12.4", torch_build="12.8", torch_version="2.13.0+cu128")), "torch").status == WARN


def test_driver_older_than_cuda12_points_to_cu118_or_driver_update():
    assert "cu118" in torch_install_command("2.13.0", "11.8") and "driver" in torch_install_command("2.13.0", "11.8")


def test_cpu_torch_on_gpu_machine_fails():
    rows = run_checks(gpu_facts(torch_build=None, torch_version="2.13.0+cpu", cuda_available=False))
    assert row(rows, "torch").status == FAIL and "index-url" in row(rows, "torch").fix
    assert row(rows, "torch sees GPU").status == FAIL


def test_no_gpu_warns_by_default_and_fails_when_required():
    cpu = gpu_facts(nvidia_smi={"gpus": [], "driver_version": None, "driver_cuda": None}, gptq_gpu_kernel=None)
    assert row(run_checks(cpu), "GPU").status == WARN
    gpu_row = row(run_checks(cpu, require_gpu=True), "GPU")
    assert gpu_row.status == FAIL and "nvidia-smi" in gpu_row.fix


def test_missing_nvcc_warns_while_the_gptq_kernels_are_not_built():
    missing = row(run_checks(gpu_facts(gptq_gpu_kernel="could not collect")), "nvcc")
    assert missing.status == WARN and "GPTQ GPU kernels (Marlin)" in missing.fix and "CUDA 13.0" in missing.fix
    assert row(run_checks(gpu_facts()), "nvcc").status == OK   # kernels already built: nvcc no longer needed


def test_nvcc_major_mismatch_warns():
    assert row(run_checks(gpu_facts(nvcc="11.8")), "nvcc").status == WARN
    assert row(run_checks(gpu_facts(nvcc="13.0")), "nvcc").status == OK


def test_missing_gptq_kernel_warns_with_consequence():
    kernel = row(run_checks(gpu_facts(gptq_gpu_kernel="ERROR marlin not compiled")), "GPTQ GPU kernel")
    assert kernel.status == WARN and "slow" in kernel.fix and "reinstall gptqmodel" in kernel.fix


def test_kernel_probe_that_timed_out_says_so():
    kernel = row(run_checks(gpu_facts(gptq_gpu_kernel=env.COULD_NOT_COLLECT)), "GPTQ GPU kernel")
    assert kernel.status == WARN and "timed out" in kernel.value and "e.load('marlin')" in kernel.fix


def test_gptqmodel_import_failure_points_to_requirements():
    # seen on the H100 device machine when gptqmodel's dependency pypcre was missing
    kernel = row(run_checks(gpu_facts(gptq_gpu_kernel="ERROR ModuleNotFoundError: No module named 'pcre'")), "GPTQ GPU kernel")
    assert kernel.status == WARN and "pip install -r requirements.txt" in kernel.fix


def test_archived_auto_gptq_and_missing_gptqmodel_warn():
    rows = run_checks(gpu_facts(packages={"optimum": "2.3.0", "gptqmodel": None, "auto-gptq": "0.7.1"}, gptq_gpu_kernel=None))
    assert row(rows, "GPTQ stack").status == WARN and row(rows, "auto-gptq").status == WARN
    assert row(rows, "GPTQ stack").value == "optimum 2.3.0, gptqmodel not installed"
    assert row(rows, "GPTQ GPU kernel").value == "n/a (gptqmodel not installed)"


def test_pre_ampere_gpu_warns_about_bf16():
    facts = gpu_facts()
    facts["torch"]["bf16"] = False
    assert row(run_checks(facts), "bf16").status == WARN


def test_uncollectable_facts_still_give_rows():
    rows = run_checks({"nvidia_smi": env.COULD_NOT_COLLECT, "torch": env.COULD_NOT_COLLECT, "packages": env.COULD_NOT_COLLECT})
    assert all(r.status in (OK, WARN, FAIL) for r in rows)
    assert row(rows, "GPU").value == env.COULD_NOT_COLLECT


def test_probes_never_raise(monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("nvidia-smi crashed")

    monkeypatch.setattr(env.subprocess, "run", broken)
    monkeypatch.setattr(env.shutil, "which", lambda cmd: "/usr/bin/" + cmd)
    assert env.nvidia_smi() == env.COULD_NOT_COLLECT
    assert env.nvcc_version() == env.COULD_NOT_COLLECT


def test_nvidia_smi_output_is_parsed(monkeypatch):
    outputs = {
        "--query-gpu": "0, NVIDIA H100 80GB HBM3, 9.0, 81559, 81000, 580.159.04\n",
        "plain": "| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   CUDA Version: 13.0 |",
    }
    monkeypatch.setattr(env, "_run", lambda cmd, timeout=10: outputs["--query-gpu" if len(cmd) > 1 else "plain"])
    smi = env.nvidia_smi()
    assert smi["driver_cuda"] == "13.0" and smi["driver_version"] == "580.159.04"
    assert smi["gpus"][0]["compute_capability"] == "9.0" and smi["gpus"][0]["memory_total_gib"] == 79.6


def test_cli_json_has_a_status_on_every_row_and_never_prints_tokens():
    secret = "hf_THIS_IS_A_SECRET_TOKEN"
    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "doctor", "--json"], capture_output=True, text=True,
                            env={**__import__("os").environ, "HF_TOKEN": secret})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] and all(r["status"] in (OK, WARN, FAIL) for r in report["rows"])
    assert report["facts"]["settings"]["HF_TOKEN"] == "set (hidden)"


def test_cli_table_never_prints_tokens(monkeypatch, capsys):
    from llmkit.cli import main

    monkeypatch.setenv("HF_TOKEN", "hf_ANOTHER_SECRET")
    assert main(["doctor"]) in (0, 1)
    out = capsys.readouterr().out
    assert "llmkit doctor" in out and "hf_ANOTHER_SECRET" not in out


def test_disk_row_compares_free_space_with_the_course_downloads():
    from llmkit.environment.doctor import check_disk

    assert check_disk(200.0, "/data").status == OK
    small = check_disk(10.0, "/root")
    assert small.status == WARN and "LLMKIT_MODEL_DIR=/root/autodl-tmp/models" in small.fix
    assert "Qwen/Qwen2-72B-Instruct-GPTQ-Int4 (41.6 GB)" in small.value and "Qwen1.5-7B-Chat" not in small.value


def test_readme_states_the_course_downloads_as_estimated():
    from pathlib import Path

    from llmkit.environment.doctor import course_downloads_gb

    readme = (Path(__file__).resolve().parents[2] / "docs" / "setup.md").read_text()  # "Disk: models on a data disk"
    sizes = course_downloads_gb()
    assert f"download {round(sum(sizes.values()), 1)} GB of weights" in readme
    assert f"共要下载 {round(sum(sizes.values()), 1)} GB 权重" in readme
    assert all(f"{model.split('/')[1]} {gb}" in readme for model, gb in sizes.items())
