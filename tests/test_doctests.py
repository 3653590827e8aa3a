"""Every public function's docstring example is executed, in a temporary working directory: examples that write
files use relative paths, so they never touch fixed places such as /tmp/ok-data."""

import doctest
import importlib
import pkgutil

import pytest

import llmkit

MODULES = [m.name for m in pkgutil.walk_packages(llmkit.__path__, "llmkit.") if not m.name.endswith("__main__")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
