"""The llama.cpp notebook's kernel loads llama.cpp before ipykernel's pyzmq (llmkit/deploy/llamacpp_kernel.py says why)."""

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from llmkit.deploy import llamacpp_kernel


def test_the_kernelspec_starts_the_module_with_this_python(tmp_path):
    folder = llamacpp_kernel.install(prefix=str(tmp_path))
    spec = json.loads((tmp_path / "share" / "jupyter" / "kernels" / "llmkit-llamacpp" / "kernel.json").read_text())
    assert folder.endswith("llmkit-llamacpp") and spec["display_name"] == "Python (llmkit + llama.cpp)"
    assert spec["argv"][1:3] == ["-m", "llmkit.deploy.llamacpp_kernel"] and "{connection_file}" in spec["argv"]


def test_a_cuda_build_preloads_libggml_cuda_and_a_cpu_build_sets_no_environment(tmp_path, monkeypatch):
    package = tmp_path / "llama_cpp"
    (package / "lib").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    assert llamacpp_kernel.ggml_cuda_library() == "" and "env" not in llamacpp_kernel.kernel_json()
    (package / "lib" / "libggml-cuda.so").write_bytes(b"")
    library = str(package / "lib" / "libggml-cuda.so")
    assert llamacpp_kernel.ggml_cuda_library() == library
    assert llamacpp_kernel.kernel_json()["env"] == {"LD_PRELOAD": library}


def test_in_the_kernel_llama_cpp_was_loaded_before_agg_and_zmq_and_figures_show_inline(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `bash setup.sh llama-cpp`")
    llamacpp_kernel.install(prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # as Jupyter starts a kernel (an import of streamlit sets "Agg")
    probe = ("import sys\nloaded = list(sys.modules)\n"
             "print(loaded.index('llama_cpp') < loaded.index('matplotlib.backends._backend_agg') < loaded.index('zmq'))")
    figure = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(probe), nbformat.v4.new_code_cell(figure)])
    NotebookClient(nb, timeout=120, kernel_name=llamacpp_kernel.KERNEL_NAME).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == "True"
    assert [o["output_type"] for o in nb.cells[1].outputs] == ["display_data"]  # shown inline, as in any kernel
    assert "image/png" in nb.cells[1].outputs[0]["data"]
