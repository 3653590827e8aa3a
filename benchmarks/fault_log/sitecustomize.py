"""For ``benchmarks/realmode_gpu.py`` only: a Python process started with this folder on ``PYTHONPATH`` and
``LLMKIT_FAULT_LOG_DIR`` set writes the Python stacks of a fatal fault (segmentation fault, abort) to a file of its
own, ``$LLMKIT_FAULT_LOG_DIR/<pid>.log``. A Jupyter kernel sends its file descriptor 2 to the notebook, so the
stacks that ``PYTHONFAULTHANDLER`` prints there die with the kernel (notebook 09's kernel died that way on the GPU).
"""

import faulthandler
import os

_folder = os.environ.get("LLMKIT_FAULT_LOG_DIR")
if _folder:
    os.makedirs(_folder, exist_ok=True)
    _log = open(os.path.join(_folder, f"{os.getpid()}.log"), "w")  # kept open for the life of the process
    faulthandler.enable(_log, all_threads=True)
