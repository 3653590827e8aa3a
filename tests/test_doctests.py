"""Every public function's docstring example is executed, in a temporary working directory: examples that write
files use relative paths, so they never touch fixed places such as /tmp/ok-data."""

import doctest
import importlib
import pkgutil

import pytest

import llmkit

MODULES = [m.name for m in pkgutil.walk_packages(llmkit.__path__, "llmkit.") if not m.name.endswith("__main__")]
# modules built on a package that only GPU installs have (torch's CUDA builds bring Triton; its CPU builds do not)
NEEDS = {"llmkit.generation.triton_decode": "triton"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"{name} needs {NEEDS[name]}, which CPU builds of torch do not bring")
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
