"""The Jupyter kernel of the llama.cpp notebook: a plain IPython kernel that imports ``llama_cpp`` before ipykernel.

Why it exists: with llama-cpp-python built for CUDA, loading a model crashed (SIGSEGV in ``libggml-cuda``, in
``LlamaModel.__init__``) in every process that had loaded pyzmq or numpy before llama.cpp's libraries. A Jupyter
kernel imports pyzmq before its first cell runs, so no import order inside the notebook can avoid it; a kernel that
loads llama.cpp first, then starts ipykernel, loads and runs the model (measured on an H200 with llama-cpp-python
0.3.36, pyzmq 27.3.0: ``benchmarks/GPU_NOTES.md``). The same kernel then died at the notebook's first figure, in
the import of matplotlib's Agg extension (``matplotlib.backends._backend_agg``) after the GGUF models had run on the
GPU, and in a plain process ``import llama_cpp`` followed by that import crashes at once; imported before
llama_cpp, Agg made the model load crash instead (an H100, 2026-12-06). Preloading ``libggml-cuda.so`` had avoided
the pyzmq/numpy crash, so on a CUDA build the kernelspec sets ``LD_PRELOAD`` to it, and the launcher loads Agg right
after llama.cpp: so started, notebook 09 runs to the end on an H100, figures included. The launcher sets
``MPLBACKEND`` as ipykernel would before it loads Agg (matplotlib reads it when imported), so figures show inline.
On a CPU build neither changes anything, and the kernel is the same as the course's own.
``bash setup.sh llama-cpp`` registers it as "Python (llmkit + llama.cpp)".

    python -m llmkit.deploy.llamacpp_kernel install          # register it with Jupyter (setup.sh does this)
    python -m llmkit.deploy.llamacpp_kernel -f CONNECTION    # what Jupyter runs to start it
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "llmkit-llamacpp"
DISPLAY_NAME = "Python (llmkit + llama.cpp)"


def ggml_cuda_library() -> str:
    """The path of llama-cpp-python's ``libggml-cuda.so`` ("" for a CPU build or none installed); not imported.

    >>> ggml_cuda_library()  # doctest: +SKIP
    '/course/.venv/lib/python3.11/site-packages/llama_cpp/lib/libggml-cuda.so'
    """
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    library = Path(spec.origin).parent / "lib" / "libggml-cuda.so" if spec and spec.origin else None
    return str(library) if library and library.exists() else ""


def kernel_json(python: str = sys.executable) -> dict:
    """The kernelspec: Jupyter starts this module with ``python``, with llama.cpp's CUDA library (if built) in
    ``LD_PRELOAD``.

    >>> kernel_json("/venv/bin/python")["argv"]
    ['/venv/bin/python', '-m', 'llmkit.deploy.llamacpp_kernel', '-f', '{connection_file}']
    """
    preload = ggml_cuda_library()
    return {"argv": [python, "-m", "llmkit.deploy.llamacpp_kernel", "-f", "{connection_file}"],
            "display_name": DISPLAY_NAME, "language": "python", "metadata": {"debugger": True},
            **({"env": {"LD_PRELOAD": preload}} if preload else {})}


def install(prefix: str | None = None) -> str:
    """Register the kernel with Jupyter (for this user, or under ``prefix``); returns the kernelspec's folder.

    >>> install()  # doctest: +SKIP
    '/home/me/.local/share/jupyter/kernels/llmkit-llamacpp'
    """
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "kernel.json").write_text(json.dumps(kernel_json(), indent=1), encoding="utf-8")
        return KernelSpecManager().install_kernel_spec(folder, KERNEL_NAME, user=prefix is None, prefix=prefix)


def launch() -> None:
    """Load llama.cpp's libraries, then matplotlib's Agg, then run an IPython kernel (``-f CONNECTION``)."""
    import llama_cpp  # noqa: F401  first: see the module docstring

    if not os.environ.get("MPLBACKEND"):  # ipykernel's default, set before matplotlib is imported (it reads it then)
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    import matplotlib.backends.backend_agg  # noqa: F401  before ipykernel: the module docstring says why

    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    if sys.argv[1:2] == ["install"]:
        print(install())
    else:
        launch()
