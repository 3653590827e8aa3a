"""nbval settings for `pytest --nbval notebooks`: stand-in models unless told otherwise, this interpreter's
environment as the kernel, room for the first (one-time) stand-in build, and a kernel that dies failing its cell
at once."""

import os
import signal
import time
from queue import Empty

from nbval.kernel import RunningKernel

# CI and CPU machines: tiny stand-ins. On a GPU: LLMKIT_STANDIN=0 pytest --nbval notebooks runs the real models.
os.environ.setdefault("LLMKIT_STANDIN", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are for people; keep test logs readable
KERNEL_CHECK_S = 5


def pytest_configure(config):
    config.option.nbval_current_env = True  # run the kernel with the interpreter running pytest (.venv)
    config.option.nbval_cell_timeout = 900  # a first stand-in build compiles a GPTQ CPU kernel once


def _exit_status(kernel: RunningKernel) -> str:
    process = getattr(kernel.km.provisioner, "process", None)
    code = process.poll() if process is not None else None
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _await_reply_or_death(self, msg_id, timeout=None):
    """nbval's wait for a cell's reply, checking every few seconds that the kernel is still alive: a kernel that
    crashed in native code (a segfault in llama.cpp, say) fails its cell at once instead of after the cell timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = KERNEL_CHECK_S if deadline is None else max(0.0, min(KERNEL_CHECK_S, deadline - time.monotonic()))
        try:
            return _nbval_await_reply(self, msg_id, timeout=step)
        except Empty:
            if not self.is_alive():
                raise RuntimeError(f"the notebook's kernel died while running this cell ({_exit_status(self)}); "
                                   "a crash in native code ends the kernel without a Python traceback") from None
            if deadline is not None and time.monotonic() >= deadline:
                raise


_nbval_await_reply = RunningKernel.await_reply
RunningKernel.await_reply = _await_reply_or_death
