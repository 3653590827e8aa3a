"""``llmkit bench`` backends outside transformers: ``llamacpp`` (llama-cpp-python on a GGUF) and ``vllm``.

They run the same workload as the transformers backends (the same prompt token ids, exactly ``new_tokens``
greedy tokens each, end-of-sequence ignored) and return the same ``BenchResult``; run by ``llmkit bench`` (each in a
process of its own), their peak GPU memory is that of the engine's processes as nvidia-smi counts them.

- ``llamacpp``: llama-cpp-python's high-level ``Llama`` serves one sequence at a time, so the prompts run one
  after another; time to first token is the first prompt's. Loading the GGUF is reported as ``load_s``, and
  llama.cpp's own counters give prompt-eval and eval tokens/s.
- ``vllm``: ``LLM.generate`` on all prompts at once; time to first token is the earliest of the requests' own
  (vLLM's per-request stats, switched on for this). vLLM needs a CUDA GPU and lives in its own venv
  (``bash setup.sh vllm``: ``.venv-vllm``), so ``llmkit bench`` runs it in a process of that venv's Python
  (``bench_vllm_isolated``), next to the other backends in one run (or in the Python that has vLLM, as on an H100 with
  vLLM 0.26: benchmarks/results/bench_seed_h100.json). vLLM's engine start is reported as ``load_s``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llmkit.generation.bench_result import BenchResult, result, timed_runs
from llmkit.generation.gpu_watch import PeakGpuMemory, tagged
from llmkit.errors import BadInput

ENGINES = {  # backend: (Python package, how to get it)
    "llamacpp": ("llama_cpp", "bash setup.sh llama-cpp (compiles llama-cpp-python; docs/setup.md)"),
    "vllm": ("vllm", "on a Linux machine with an NVIDIA GPU: bash setup.sh vllm (its own .venv-vllm, which "
                     "llmkit bench then uses for this backend; docs/results.md: Serving)"),
}
ENGINE_BACKENDS = tuple(ENGINES)
VLLM_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"  # where `bash setup.sh vllm` installs vLLM


def engine_python(backend: str) -> str | None:
    """The Python that can run ``backend``: this one where its package is installed, else (vLLM) the course's
    ``.venv-vllm``; None when there is none.

    >>> engine_python("llamacpp") in (sys.executable, None)
    True
    """
    package, _ = ENGINES[backend]
    if importlib.util.find_spec(package) is not None:
        return sys.executable
    vllm_python = VLLM_VENV / "bin" / "python"
    return str(vllm_python) if backend == "vllm" and vllm_python.exists() else None


def require_engine(backend: str) -> None:
    """Refuse an engine backend that is not installed, saying how to install it.

    >>> require_engine("llamacpp")  # doctest: +SKIP
    """
    if importlib.util.find_spec(ENGINES[backend][0]) is None:
        raise _not_installed(backend)


def _not_installed(backend: str) -> BadInput:
    package, install = ENGINES[backend]
    return BadInput(f"backend {backend!r} needs the {package} package, which is not installed: {install}")


def require_engine_python(backend: str) -> str:
    """``engine_python(backend)``, or ``BadInput`` saying how to install the engine.

    >>> require_engine_python("vllm")  # doctest: +SKIP
    '/home/me/llmkit/.venv-vllm/bin/python'
    """
    python = engine_python(backend)
    if python is None:
        raise _not_installed(backend)
    return python


def bench_llamacpp(gguf: str | Path, prompts: list[list[int]], new_tokens: int = 128, repeats: int = 3,
                   n_gpu_layers: int = -1, flash_attn: bool = True):
    """Time llama-cpp-python on ``gguf`` with greedy decoding; prompts are token ids of the same vocabulary.

    ``n_gpu_layers=-1`` offloads every layer when llama-cpp-python was built with CUDA (no effect on a CPU build).

    >>> r = bench_llamacpp("/tmp/qwen2-chat-f16.gguf", [[9707, 11]], new_tokens=8, repeats=1)  # doctest: +SKIP
    >>> len(r.outputs[0])  # doctest: +SKIP
    8
    """
    require_engine("llamacpp")
    import llama_cpp

    if not Path(gguf).is_file():
        raise BadInput(f"GGUF file {gguf} does not exist; make one with `llmkit gguf MODEL FILE`")
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=max(len(p) for p in prompts) + new_tokens,
                          n_batch=max(len(p) for p in prompts), n_gpu_layers=n_gpu_layers, flash_attn=flash_attn,
                          verbose=False)
    load_s = time.perf_counter() - start

    def once():
        llama_cpp.llama_perf_context_reset(llm.ctx)
        outputs, first, start = [], None, time.perf_counter()
        for prompt in prompts:
            llm.reset()
            tokens = []
            for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
                first = first or time.perf_counter() - start
                tokens.append(token)
                if len(tokens) == new_tokens:
                    break
            outputs.append(tokens)
        return outputs, first, time.perf_counter() - start

    warm_up_s, runs = timed_runs(once, repeats)
    perf = llama_cpp.llama_perf_context(llm.ctx)  # counters of the last run
    details = {"load_s": round(load_s, 2), "n_gpu_layers": n_gpu_layers, "flash_attn": flash_attn,
               "prompt_eval_tokens_per_s": round(1000 * perf.n_p_eval / perf.t_p_eval_ms, 1) if perf.t_p_eval_ms else None,
               "eval_tokens_per_s": round(1000 * perf.n_eval / perf.t_eval_ms, 1) if perf.t_eval_ms else None,
               "gguf": Path(gguf).name, "llama_cpp_python": llama_cpp.__version__}
    llm.close()
    return result("llamacpp", prompts, new_tokens, warm_up_s, runs, details=details)


def bench_llamacpp_isolated(gguf: str | Path, prompts: list[list[int]], new_tokens: int = 128, repeats: int = 3,
                            **options) -> BenchResult:
    """``bench_llamacpp`` in a fresh Python process that never imports torch.

    llama-cpp-python's CUDA build crashed (SIGSEGV in libggml-cuda) when it loaded a model in a process that had
    imported torch (on an H100), or merely numpy or pyzmq before ``llama_cpp`` (0.3.36 on an H200), and torch imports
    numpy. ``llmkit bench`` runs llama.cpp this way; this process imports ``llama_cpp`` before numpy.

    >>> bench_llamacpp_isolated("/tmp/qwen2-chat-f16.gguf", [[9707, 11]], new_tokens=8, repeats=1)  # doctest: +SKIP
    """
    job = {"gguf": str(gguf), "prompts": prompts, "new_tokens": new_tokens, "repeats": repeats, **options}
    return _run_isolated("bench_llamacpp", job, sys.executable, "llama.cpp")


def bench_vllm_isolated(model_dir: str | Path, prompts: list[list[int]], new_tokens: int = 128, repeats: int = 3,
                        python: str | None = None, **llm_args) -> BenchResult:
    """``bench_vllm`` in its own process, with ``python`` (default: ``require_engine_python("vllm")``, the course's
    ``.venv-vllm`` when vLLM is not installed here): vLLM cannot share the course's venv (requirements-vllm.txt),
    and in its own process it has the GPU to itself once the caller has freed its own model.

    >>> bench_vllm_isolated("Qwen/Qwen2-7B-Instruct", [[9707, 11]], new_tokens=8, repeats=1)  # doctest: +SKIP
    """
    job = {"model_dir": str(model_dir), "prompts": prompts, "new_tokens": new_tokens, "repeats": repeats, **llm_args}
    return _run_isolated("bench_vllm", job, python or require_engine_python("vllm"), "vLLM")


def _run_isolated(function: str, job: dict, python: str, engine: str) -> BenchResult:
    """Run ``bench_engines.<function>(**job)`` with ``python`` in a fresh process; its result comes back as JSON, with
    the peak GPU memory of that process and those it starts (vLLM's engine) as nvidia-smi counts them (None without
    a GPU)."""
    code = ("import json, sys; from dataclasses import asdict; from llmkit.generation import bench_engines; "
            f"print(json.dumps(asdict(bench_engines.{function}(**json.loads(sys.stdin.read())))))")
    tag = f"bench-{engine}-{os.getpid()}"
    with PeakGpuMemory(tag) as gpu:
        done = subprocess.run([python, "-c", code], input=json.dumps(job), capture_output=True, text=True,
                              env=tagged(tag))
    if done.returncode:
        raise RuntimeError(f"the {engine} process failed (exit code {done.returncode}): {done.stderr[-1500:]}")
    measured = BenchResult(**json.loads(done.stdout.strip().splitlines()[-1]))
    if gpu.peak_gib is not None:
        measured.peak_memory_gib = gpu.peak_gib
        measured.details["peak_memory"] = "nvidia-smi: the engine's processes, CUDA context included"
        measured.details["peak_memory_processes"] = gpu.peak_processes  # with N GPUs: one worker per GPU
    return measured


def bench_vllm(model_dir: str | Path, prompts: list[list[int]], new_tokens: int = 128, repeats: int = 3, **llm_args):
    """Time vLLM's offline ``LLM.generate`` on all prompts at once (greedy, ``ignore_eos``, fixed length).

    Needs a CUDA GPU (see the module docstring). ``llm_args`` go to ``vllm.LLM``; its prefix cache is off unless they
    turn it on (each run repeats the same prompts).

    >>> r = bench_vllm("Qwen/Qwen2-7B-Instruct", [[9707, 11]], new_tokens=8)  # doctest: +SKIP
    """
    require_engine("vllm")
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    # disable_log_stats=False: per-request stats on each output (RequestOutput.metrics), whose first_token_latency
    # is the time to first token (vLLM >= 0.2x); LLM turns them off by default. enable_prefix_caching=False: every
    # run sends the same prompts, and with vLLM's default prefix cache the runs after the warm-up would reuse its
    # keys and values and skip most of the prompts' pass, which the other backends compute each time
    settings = {"disable_log_stats": False, "enable_prefix_caching": False, **llm_args}
    llm = LLM(model=str(model_dir), max_model_len=max(len(p) for p in prompts) + new_tokens, **settings)
    load_s = time.perf_counter() - start
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]

    def once():
        start = time.perf_counter()
        outputs = llm.generate(inputs, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        firsts = [o.metrics.first_token_latency for o in outputs if getattr(o, "metrics", None) is not None]
        return [list(o.outputs[0].token_ids) for o in outputs], min(firsts, default=None), seconds

    warm_up_s, runs = timed_runs(once, repeats)
    return result("vllm", prompts, new_tokens, warm_up_s, runs,
                  details={"load_s": round(load_s, 2), "vllm": vllm.__version__,
                           "tensor_parallel_size": llm_args.get("tensor_parallel_size", 1),
                           "enable_prefix_caching": settings["enable_prefix_caching"]})
