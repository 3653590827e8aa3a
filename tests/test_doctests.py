"""Every public function's docstring example is executed."""

import doctest
import importlib
import pkgutil

import pytest

import llmkit

MODULES = [m.name for m in pkgutil.walk_packages(llmkit.__path__, "llmkit.") if not m.name.endswith("__main__")]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
