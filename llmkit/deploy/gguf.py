"""GGUF files for llama.cpp: find llama.cpp's own converter, convert a Hugging Face model, quantize the result.

The work is done by llama.cpp's maintained tools, not re-implemented here:
- ``convert_hf_to_gguf.py`` (llama.cpp's converter, with its ``conversion/`` package and the ``gguf-py`` it
  imports from beside itself) writes the GGUF. ``bash setup.sh llama-cpp`` unpacks them from the same pinned
  llama-cpp-python source release that pip compiles, so converter and runtime agree. With a llama.cpp checkout,
  ``LLAMA_CPP_DIR=/path/to/llama.cpp`` uses that one instead.
- ``llama_cpp.llama_model_quantize`` (the C function behind ``llama-quantize``) makes q4_k_m, q5_k_m, q8_0.

Both write to a temporary name in the target folder and rename it when complete (``llmkit.safe_output``), so
an interrupted run or a full disk never leaves a half-written file where a complete one is expected, and neither
overwrites a file unless asked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llmkit.errors import BadInput
from llmkit.safe_output import atomic_output, free_space, refuse_existing

CONVERTER = "convert_hf_to_gguf.py"
CONVERT_TYPES = ("f32", "f16", "bf16", "q8_0")  # what the converter writes directly
QUANT_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
               "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


def converter_path() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``: from ``$LLAMA_CPP_DIR``, else the copy ``bash setup.sh llama-cpp`` put in the venv.

    >>> converter_path().name  # doctest: +SKIP
    'convert_hf_to_gguf.py'
    """
    places = [Path(os.environ["LLAMA_CPP_DIR"])] if os.environ.get("LLAMA_CPP_DIR") else []
    places.append(Path(sys.prefix) / "share" / "llama.cpp")
    for place in places:
        if (place / CONVERTER).is_file():
            return place / CONVERTER
    raise BadInput(f"llama.cpp's {CONVERTER} was not found in {', '.join(map(str, places))}; run `bash setup.sh llama-cpp` "
                   "(it unpacks it into the venv) or set LLAMA_CPP_DIR to a llama.cpp checkout")


def _check_out(out: Path, overwrite: bool) -> None:
    refuse_existing(out, overwrite)
    if not out.parent.is_dir():
        raise BadInput(f"folder {out.parent} does not exist; create it first")


def convert(model_dir: str | os.PathLike, out: str | os.PathLike, outtype: str = "f16",
            overwrite: bool = False) -> Path:
    """Convert a Hugging Face model folder to one GGUF file with llama.cpp's converter; returns ``out``.

    >>> convert(standin_path("qwen2-chat"), "/tmp/qwen2-chat-f16.gguf")  # doctest: +SKIP
    PosixPath('/tmp/qwen2-chat-f16.gguf')
    """
    if outtype not in CONVERT_TYPES:
        raise BadInput(f"outtype must be one of {', '.join(CONVERT_TYPES)}, got {outtype!r} "
                       f"(for {', '.join(QUANT_TYPES)} convert to f16 first, then call quantize)")
    out, model_dir = Path(out), Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BadInput(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    _check_out(out, overwrite)
    with atomic_output(out, overwrite) as partial:
        command = [sys.executable, str(converter_path()), str(model_dir), "--outfile", str(partial)]
        done = subprocess.run([*command, "--outtype", outtype], capture_output=True, text=True)
        if done.returncode != 0:  # a full disk shows as "OSError: [Errno 28] ..." here; atomic_output explains it
            raise RuntimeError(f"{CONVERTER} failed (exit {done.returncode}): {_last_lines(done.stderr)}")
    return out


def _last_lines(text: str, count: int = 5) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-count:])


def quantize(src: str | os.PathLike, out: str | os.PathLike, method: str = "q4_k_m", overwrite: bool = False,
             threads: int = 0) -> Path:
    """Quantize an f16/bf16/f32 GGUF with llama.cpp (``llama_model_quantize``, as ``llama-quantize`` does).

    Tensors whose rows are not a multiple of the k-quant block (256) get llama.cpp's fallback type; it logs that.

    >>> quantize("/tmp/qwen2-chat-f16.gguf", "/tmp/qwen2-chat-q4_k_m.gguf")  # doctest: +SKIP
    PosixPath('/tmp/qwen2-chat-q4_k_m.gguf')
    """
    import llama_cpp

    if method not in QUANT_TYPES:
        raise BadInput(f"method must be one of {', '.join(QUANT_TYPES)}, got {method!r}")
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise BadInput(f"{src} does not exist; convert the model first (llmkit.deploy.gguf.convert)")
    _check_out(out, overwrite)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[method])
    params.nthread = threads
    with atomic_output(out, overwrite) as partial:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), params)
        if status != 0:
            raise RuntimeError(f"llama.cpp could not quantize {src} to {method} (status {status}; its log says why): "
                               + _quantize_hint(partial))
    return out


def _quantize_hint(partial: Path) -> str:
    """llama.cpp reports no errno; an output it had started shows the failure came while writing."""
    if partial.exists():
        return (f"it stopped while writing {partial.name} ({free_space(partial)}); if the disk is full, free some "
                "space there or choose a folder on another disk")
    return "is it a GGUF written by convert_hf_to_gguf.py?"
