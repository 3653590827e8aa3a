"""Shared fixtures: the real stand-ins are built once per cache (shared with the notebooks)."""

import pytest

from llmkit.standins import standin_path


@pytest.fixture(scope="session")
def chat_dir():
    return standin_path("qwen2-chat")


@pytest.fixture(scope="session")
def gptq_dir():
    return standin_path("qwen2-gptq-int4")


# Property-based tests: the same examples on every run (CI must not flake), no per-example deadline (2 busy cores).
from hypothesis import settings  # noqa: E402

settings.register_profile("llmkit", derandomize=True, deadline=None, max_examples=60)
settings.load_profile("llmkit")
