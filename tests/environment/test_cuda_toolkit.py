"""nvcc from NVIDIA's wheels as a CUDA toolkit folder (llmkit.environment.cuda_toolkit), on fake wheel trees without a GPU."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llmkit.environment import cuda_toolkit, env

SCRIPT = Path(cuda_toolkit.__file__)


def fake_cu13_wheels(site: Path) -> Path:
    """The files of nvidia-cuda-nvcc / -nvvm / -runtime / -crt 13.0 where pip puts them, nvcc a script."""
    root = site / "nvidia" / "cu13"
    for name in ("include/crt/host_config.h", "include/cuda_runtime.h", "nvvm/bin/cicc", "lib/libcudart.so.13"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    return root


def test_the_toolkit_folder_has_the_layout_torch_builds_with(tmp_path):
    root = fake_cu13_wheels(tmp_path / "site")
    dest = cuda_toolkit.link_toolkit(tmp_path / "site", tmp_path / "venv" / "cuda")
    assert (dest / "bin" / "nvcc").resolve() == (root / "bin" / "nvcc").resolve()
    assert (dest / "include" / "cuda_runtime.h").is_file() and (dest / "nvvm" / "bin" / "cicc").is_file()
    # torch links -L$CUDA_HOME/lib64 -lcudart; the wheel has only libcudart.so.13
    assert (dest / "lib64" / "libcudart.so").resolve() == (root / "lib" / "libcudart.so.13").resolve()
    assert not (root / "lib" / "libcudart.so").exists()  # the installed wheel is left as it was
    again = cuda_toolkit.link_toolkit(tmp_path / "site", dest)  # setup.sh run again
    assert sorted(p.name for p in again.iterdir()) == ["bin", "include", "lib64", "nvvm"]


def test_no_nvcc_wheel_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no nvcc under .*nvidia/cu13: pip install nvidia-cuda-nvcc==13.0"):
        cuda_toolkit.link_toolkit(tmp_path, tmp_path / "cuda")


def test_cuda_home_points_at_the_venv_toolkit_only_when_unset(tmp_path, monkeypatch):
    fake_cu13_wheels(tmp_path / "site")
    cuda_toolkit.link_toolkit(tmp_path / "site", tmp_path / "cuda")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    assert cuda_toolkit.use_venv_toolkit(tmp_path) == tmp_path / "cuda"
    assert os.environ["CUDA_HOME"] == str(tmp_path / "cuda")
    monkeypatch.setenv("CUDA_HOME", "/opt/cuda-13.0")  # the learner's own choice wins
    assert cuda_toolkit.use_venv_toolkit(tmp_path) is None and os.environ["CUDA_HOME"] == "/opt/cuda-13.0"


def test_the_doctor_reads_the_nvcc_that_cuda_home_names(tmp_path, monkeypatch):
    fake_cu13_wheels(tmp_path / "site")
    monkeypatch.setenv("CUDA_HOME", str(cuda_toolkit.link_toolkit(tmp_path / "site", tmp_path / "cuda")))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no other nvcc
    assert env.nvcc_version() == "13.0"


def test_only_cuda_13_has_nvcc_wheels_and_setup_reads_torchs_cuda_from_its_wheel(tmp_path):
    def script(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True).stdout.strip()

    assert script("wheels", "13.0").split() == cuda_toolkit.wheel_specs("13.0")
    assert script("wheels", "12.8").startswith("note: NVIDIA publishes nvcc as a PyPI wheel only from CUDA 13 on")
    for cuda, expected in (("'13.0'", "13.0"), ("None", "")):
        wheel = tmp_path / f"torch-{expected or 'cpu'}.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("torch/version.py", f"from typing import Optional\ncuda: Optional[str] = {cuda}\n")
        assert script("torch-cuda", str(wheel)) == expected
