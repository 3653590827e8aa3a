"""nvcc from NVIDIA's PyPI wheels, arranged as a CUDA toolkit folder, for gptqmodel's kernel builds.

gptqmodel 7.6 compiles its Marlin GPTQ kernels the first time a GPTQ model loads on a GPU, through
``torch.utils.cpp_extension``, with the nvcc under ``CUDA_HOME``; that nvcc's CUDA major must match torch's.
Many rented GPUs have no nvcc, or an old one. From CUDA 13 on NVIDIA publishes nvcc itself as wheels
(``nvidia-cuda-nvcc``, ``nvidia-nvvm``, ...; the CUDA 12 ``nvidia-cuda-nvcc-cu12`` wheels hold only ptxas), which
``bash setup.sh`` installs into the venv when torch is a CUDA 13 build. They unpack into ``site-packages/nvidia/cu13``;
``link_toolkit`` makes ``.venv/cuda`` with the layout torch's build expects (``bin/nvcc``, ``include/``,
``lib64/libcudart.so``, ``nvvm/``) out of links to it, and ``use_venv_toolkit`` (run at ``import llmkit``) sets
``CUDA_HOME`` to that folder when ``CUDA_HOME`` is not set already.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TOOLKIT_DIR = "cuda"  # inside the venv (sys.prefix)
NO_WHEEL = ("NVIDIA publishes nvcc as a PyPI wheel only from CUDA 13 on; for torch's CUDA {cuda} build install the "
            "CUDA {cuda} toolkit (or `conda install -c nvidia cuda-nvcc={cuda}`) and set CUDA_HOME, or GPTQ models run on "
            "gptqmodel's slow fallback kernel")


def wheel_specs(cuda: str) -> list[str]:
    """pip requirements for nvcc, its compiler back end (nvvm), headers and runtime library matching torch's CUDA
    version ``cuda``; any patch release of that CUDA minor, since torch's CUDA build follows the driver. Empty
    where no nvcc wheel exists (CUDA 12: see ``NO_WHEEL``).

    >>> wheel_specs("13.0")
    ['nvidia-cuda-nvcc==13.0.*', 'nvidia-nvvm==13.0.*', 'nvidia-cuda-crt==13.0.*', 'nvidia-cuda-runtime==13.0.*', 'nvidia-cuda-cccl==13.0.*']
    >>> wheel_specs("12.6")
    []
    """
    if cuda.split(".")[0] != "13":
        return []
    return [f"nvidia-{name}=={cuda}.*" for name in ("cuda-nvcc", "nvvm", "cuda-crt", "cuda-runtime", "cuda-cccl")]


def torch_wheel_cuda(wheel: str | os.PathLike) -> str | None:
    """The CUDA version a torch wheel file was built for ("13.0"), read from its ``torch/version.py``; None for a
    CPU build. (``bash setup.sh wheelhouse`` adds the matching nvcc wheels.)

    >>> torch_wheel_cuda("wheels/torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl")  # doctest: +SKIP
    '13.0'
    """
    import re
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        version_py = archive.read("torch/version.py").decode()
    found = re.search(r"^cuda\b.*=\s*'([\d.]+)'", version_py, re.MULTILINE)
    return found.group(1) if found else None


def link_toolkit(site_packages: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Make ``dest`` a CUDA toolkit folder of links into the wheels' ``nvidia/cu13`` under ``site_packages``:
    ``bin/``, ``include/``, ``nvvm/``, and ``lib64/`` (the wheels' ``lib/``, where torch's build looks) with the
    unversioned ``libcudart.so`` torch links against. Made again each time; returns ``dest``.

    >>> link_toolkit(".venv/lib/python3.11/site-packages", ".venv/cuda")  # doctest: +SKIP
    PosixPath('.venv/cuda')
    """
    root, dest = Path(site_packages) / "nvidia" / "cu13", Path(dest)
    if not (root / "bin" / "nvcc").is_file():
        raise FileNotFoundError(f"no nvcc under {root}: pip install {' '.join(wheel_specs('13.0'))} first")
    lib64 = dest / "lib64"
    lib64.mkdir(parents=True, exist_ok=True)
    links = {dest / name: root / name for name in ("bin", "include", "nvvm")}
    links.update({lib64 / entry.name: entry for entry in (root / "lib").iterdir()})
    runtime = sorted((root / "lib").glob("libcudart.so.*"))
    if runtime:  # the wheel has only the versioned name
        links.setdefault(lib64 / "libcudart.so", runtime[0])
    for link, source in links.items():
        if link.is_symlink():
            link.unlink()
        link.symlink_to(source.resolve())
    return dest


def use_venv_toolkit(prefix: str | os.PathLike = sys.prefix) -> Path | None:
    """Point ``CUDA_HOME`` at the venv's toolkit folder when ``bash setup.sh`` made one and ``CUDA_HOME`` is unset;
    returns the folder in use, or None. (torch reads ``CUDA_HOME`` when its ``cpp_extension`` module is first
    imported, which ``import llmkit`` comes before.)

    >>> use_venv_toolkit("/nonexistent") is None
    True
    """
    toolkit = Path(prefix) / TOOLKIT_DIR
    if os.environ.get("CUDA_HOME") or not (toolkit / "bin" / "nvcc").is_file():
        return None
    os.environ["CUDA_HOME"] = str(toolkit)
    return toolkit


if __name__ == "__main__":  # setup.sh runs this file directly (python llmkit/environment/cuda_toolkit.py ...): stdlib only
    import sysconfig

    command, *args = sys.argv[1:]
    if command == "wheels":  # wheels CUDA: the pip requirements, or NO_WHEEL's note
        print(" ".join(wheel_specs(args[0])) or f"note: {NO_WHEEL.format(cuda=args[0])}")
    elif command == "torch-cuda":  # torch-cuda WHEEL: its CUDA version, empty for a CPU build
        print(torch_wheel_cuda(args[0]) or "")
    elif command == "link":  # link: make <venv>/cuda from this environment's wheels
        made = link_toolkit(sysconfig.get_paths()["purelib"], Path(sys.prefix) / TOOLKIT_DIR)
        print(f"nvcc for gptqmodel's kernel builds: {made / 'bin' / 'nvcc'}")
