"""Shared fixtures: the real stand-ins are built once per cache (shared with the notebooks)."""

import pytest

from llmkit.standins import standin_path


@pytest.fixture(scope="session")
def chat_dir():
    return standin_path("qwen2-chat")


@pytest.fixture(scope="session")
def gptq_dir():
    return standin_path("qwen2-gptq-int4")
