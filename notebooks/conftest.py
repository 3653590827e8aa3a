"""nbval settings for `pytest --nbval notebooks`: stand-in models unless told otherwise, this interpreter's
environment as the kernel, and room for the first (one-time) stand-in build."""

import os

# CI and CPU machines: tiny stand-ins. On a GPU: LLMKIT_STANDIN=0 pytest --nbval notebooks runs the real models.
os.environ.setdefault("LLMKIT_STANDIN", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for people; keep test logs readable


def pytest_configure(config):
    config.option.nbval_current_env = True  # run the kernel with the interpreter running pytest (.venv)
    config.option.nbval_cell_timeout = 900  # a first stand-in build compiles a GPTQ CPU kernel once
