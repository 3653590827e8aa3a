"""setup.sh: the torch choice from the NVIDIA driver (``bash setup.sh --torch-plan``, without a GPU) and its arguments.

uv's own ``UV_CUDA_DRIVER_VERSION`` stands in for the driver. PyTorch's indexes are not reachable from every
machine, so the build uv chose is read from its dry run ("torch==2.13.0+cu129") or, offline, from the first
index it tried ("Failed to fetch: https://download.pytorch.org/whl/cu129/torch/").
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def torch_plan(driver: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "UV_HTTP_RETRIES": "0", "PIP_RETRIES": "0", "PIP_TIMEOUT": "3",
                   "UV_CUDA_DRIVER_VERSION": driver, **env}
    if "TORCH_INDEX_URL" not in env:
        environment.pop("TORCH_INDEX_URL", None)
    return subprocess.run(["bash", "setup.sh", "--torch-plan"], cwd=ROOT, capture_output=True, text=True,
                          env=environment, timeout=300)


def chosen_cuda(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    found = (re.search(r"torch==[\d.]+\+cu(\d+)", output)
             or re.search(r"download\.pytorch\.org/whl/cu(\d+)/", output))
    assert found, output
    return found.group(1)


@pytest.mark.parametrize("driver, cuda_major", [
    ("525.147.05", "12"), ("535.104.05", "12"), ("550.54.15", "12"), ("570.86.10", "12"), ("580.65.06", "13"),
])
def test_driver_picks_the_newest_cuda_build_it_runs(driver, cuda_major):
    result = torch_plan(driver)
    assert f"NVIDIA driver {driver}, so uv --torch-backend=auto" in result.stdout
    cuda = chosen_cuda(result)
    assert cuda.startswith(cuda_major) and int(cuda) >= 126, cuda  # torch 2.13's oldest CUDA build is cu126


def test_driver_too_old_for_every_cuda_build_is_one_clear_line_and_exit_4():
    result = torch_plan("450.80.02")
    assert result.returncode == 4
    assert result.stderr.strip().splitlines() == [
        "setup.sh: NVIDIA driver 450.80.02 is older than 525.60.13, the oldest that runs a CUDA build of "
        "torch==2.13.0: update the driver, or install the CPU build with "
        "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"]


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="this machine has an NVIDIA driver")
def test_no_driver_means_pypi():
    result = torch_plan("")
    assert result.returncode == 0, result.stderr
    assert "no NVIDIA driver found, so torch==2.13.0 from PyPI" in result.stdout


def test_an_index_that_does_not_serve_torch_is_one_clear_line_and_exit_4():
    # no pip.conf and no find-links: only the given index may serve torch
    result = torch_plan("", TORCH_INDEX_URL="http://127.0.0.1:9/simple", PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="")
    assert result.returncode == 4
    assert result.stderr.strip().splitlines()[-1] == (
        "setup.sh: TORCH_INDEX_URL=http://127.0.0.1:9/simple did not serve torch==2.13.0; use one of PyTorch's "
        "indexes, e.g. https://download.pytorch.org/whl/cu126")


def test_an_unknown_setup_argument_is_one_clear_line_and_exit_2():
    result = subprocess.run(["bash", "setup.sh", "llama-cpp", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "setup.sh: unknown argument '--fast'; use: bash setup.sh [llama-cpp] | bash setup.sh vllm | "
        "bash setup.sh --torch-plan | bash setup.sh wheelhouse DIR"]


def setup_vllm(driver: str, cwd: Path = ROOT, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "setup.sh", "vllm"], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "UV_CUDA_DRIVER_VERSION": driver, **env})


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="this machine has an NVIDIA driver")
def test_vllm_without_an_nvidia_driver_is_one_line_and_exit_5():
    result = setup_vllm("")
    assert result.returncode == 5 and not (ROOT / ".venv-vllm").exists()
    assert result.stderr.strip().splitlines() == [
        "setup.sh: vLLM not installed: it runs only on Linux with an NVIDIA GPU, and no NVIDIA driver was found here "
        "(notebook 10 skips its vLLM sections)"]


def test_vllm_with_a_driver_older_than_cuda_13_is_one_line_and_exit_4():
    result = setup_vllm("570.86.10")
    assert result.returncode == 4
    assert result.stderr.strip().splitlines() == [
        "setup.sh: vLLM not installed: vllm==0.27.1 from PyPI is built for CUDA 13, which needs NVIDIA driver 580.65.06 "
        "or newer (this one is 570.86.10): update the driver, or use a CUDA 12 build from vLLM's own wheel index "
        "(docs.vllm.ai, installation, pre-built wheels)"]


def test_vllm_installs_into_its_own_venv_from_requirements_vllm(tmp_path):
    # an empty wheelhouse: the install is tried in .venv-vllm with requirements-vllm.txt and names what is missing
    copy, empty = course_copy(tmp_path), tmp_path / "wheels"
    empty.mkdir()
    result = setup_vllm("580.65.06", cwd=copy, WHEELHOUSE=str(empty), PIP_CONFIG_FILE=os.devnull)
    assert result.returncode == 4, result.stderr
    assert (copy / ".venv-vllm" / "bin" / "python").exists() and not (copy / ".venv").exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"setup.sh: the wheelhouse {empty} has no vllm==0.27.1; make it again on a machine with a network: "
        "bash setup.sh wheelhouse DIR")


def course_copy(tmp_path: Path) -> Path:
    """What setup.sh reads, copied to a fresh folder (no .venv yet)."""
    import shutil

    copy = tmp_path / "course"
    copy.mkdir()
    for name in ("setup.sh", "requirements.txt", "requirements-llamacpp.txt", "requirements-vllm.txt", "pyproject.toml",
                 "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "llmkit", copy / "llmkit", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_wheelhouse_without_a_package_names_it_in_one_line_and_exit_4(tmp_path):
    course, empty = course_copy(tmp_path), tmp_path / "wheelhouse"
    empty.mkdir()
    env = {**os.environ, "WHEELHOUSE": str(empty), "UV_CUDA_DRIVER_VERSION": "", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}
    env.pop("TORCH_INDEX_URL", None)
    result = subprocess.run(["bash", "setup.sh"], cwd=course, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"setup.sh: the wheelhouse {empty} has no torch==2.13.0; make it again on a machine with a network: "
        "bash setup.sh wheelhouse DIR")
    assert not (course / ".venv" / ".llmkit-installed").exists()  # nothing the next run would trust


def test_a_wheelhouse_that_is_not_a_folder_is_one_clear_line_and_exit_2(tmp_path):
    result = subprocess.run(["bash", "setup.sh"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "WHEELHOUSE": str(tmp_path / "missing")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"setup.sh: WHEELHOUSE={tmp_path / 'missing'} is not a folder; make one with: bash setup.sh wheelhouse DIR"]


def test_an_offline_machine_installs_from_a_wheelhouse_alone(tmp_path):
    """The SCOW route, whole: a wheelhouse made where there is a network, then setup.sh in a fresh copy of the course
    with no index reachable (no pip config, a dead PIP_INDEX_URL); llmkit and the stack import in the new venv, and
    llama-cpp-python's source and build tools come from the wheelhouse too. A full install: a few minutes."""
    import shutil

    wheelhouse, course = tmp_path / "wheels", course_copy(tmp_path)
    try:
        made = subprocess.run(["bash", "setup.sh", "wheelhouse", str(wheelhouse)], cwd=ROOT, capture_output=True,
                              text=True, timeout=1800)
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        # PIP_NO_COMPILE=0 is pip's --no-compile (pip reads the variable inverted): no .pyc files, 0.4 of the venv's
        # 2.4 GB, on a CI disk that once filled up during this test
        offline = {**os.environ, "WHEELHOUSE": str(wheelhouse), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                   "PIP_CONFIG_FILE": os.devnull, "UV_CUDA_DRIVER_VERSION": "", "HOME": str(tmp_path / "home"),
                   "PIP_NO_COMPILE": "0"}
        offline.pop("TORCH_INDEX_URL", None)
        installed = subprocess.run(["bash", "setup.sh"], cwd=course, env=offline, capture_output=True, text=True,
                                   timeout=1800)
        assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
        assert "torch==2.13.0 from the wheelhouse" in installed.stdout
        imports = subprocess.run([str(course / ".venv" / "bin" / "python"), "-c",
                                  "import llmkit, torch, transformers, peft, gptqmodel, streamlit; print('imported')"],
                                 cwd=tmp_path, env=offline, capture_output=True, text=True, timeout=600)
        assert imports.stdout.strip().splitlines()[-1] == "imported", imports.stderr[-3000:]
        fetched = subprocess.run([str(course / ".venv" / "bin" / "pip"), "download", "-d", str(tmp_path / "got"),
                                  "--no-binary", "llama-cpp-python", "-r", "requirements-llamacpp.txt",
                                  "scikit-build-core[pyproject]>=0.9.2", "cmake", "ninja"],
                                 cwd=course, env={**offline, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)},
                                 capture_output=True, text=True, timeout=600)
        assert fetched.returncode == 0, fetched.stderr[-3000:]
    finally:
        shutil.rmtree(wheelhouse, ignore_errors=True)
        shutil.rmtree(course, ignore_errors=True)
