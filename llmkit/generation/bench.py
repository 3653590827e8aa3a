"""Generation speed with transformers, per backend: tokens/s, time to first token, warm-up, peak memory.

Backends (all plain transformers APIs; the difference is how the decode loop runs):
- ``hf``: ``model.generate`` with a dynamic KV cache, the tutorials' baseline (one Python step per token).
- ``hf-static``: ``generate(cache_implementation="static")``; on a GPU transformers then compiles the forward
  with ``torch.compile`` (CUDA graphs, mode "reduce-overhead").
- ``hf-cb``: continuous batching, ``model.generate_batch`` (paged KV cache; CUDA graphs on a GPU).
- ``hf-graph``: ``llmkit.generation.fastdecode.GraphDecoder``, a ``StaticCache`` and one CUDA graph per decode step,
  captured in the warm-up and reused, with each layer's q/k/v and gate/up projections computed as one product each
  (GPTQ Marlin layers too) and the prompt's forward pass captured as well (the workload repeats one prompt shape);
  ``hf-graph-compile`` also fuses the step's small ops with ``torch.compile`` and attends with the query heads
  grouped by key/value head (``llmkit.generation.grouped_attention``; on CUDA with Triton, in
  ``llmkit.generation.triton_decode``'s kernel). The prompt's forward pass is not compiled: a
  second compile made the first start 54 s at batch 1 on an H100 for 13 ms less prefill at 25 rows
  (``benchmarks/results/bench_batch1_compiled_prefill_h100.json``, ``decode_profile_prefill_h100.json``).

Every run produces exactly ``new_tokens`` per prompt (end-of-sequence is ignored), so tokens/s compare.

``hf-fast`` names the fastest of these on the machine, chosen by measurement (``benchmarks/results/
decode_fast_h100.json``, H100, batch 1: Qwen2-72B GPTQ-Int4 11.0 tok/s plain, 7.1 continuous batching,
35.8 CUDA graph, 42.5 CUDA graph + compile): ``hf-graph-compile`` on CUDA; on the CPU, where there are no CUDA
graphs and compiling only costs time, plain ``hf``.

``llmkit.generation.bench_engines`` adds ``llamacpp`` and ``vllm`` on the same workload; ``llmkit.generation.bench_result`` holds the
shared measuring code.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time

import torch
from transformers import ContinuousBatchingConfig
from transformers.generation.streamers import BaseStreamer

from llmkit.generation.bench_result import ALL_BACKENDS, BACKENDS, BenchResult, result, timed_runs  # noqa: F401  (public here too)
from llmkit.generation.fastdecode import GraphDecoder

GIB = 2**30
# Plain greedy decoding for every backend: eos -1 never stops early (fixed output length); no repetition
# penalty (a Qwen generation_config sets 1.05, which continuous batching does not support and would drop).
GREEDY = {"do_sample": False, "eos_token_id": -1, "repetition_penalty": 1.0}
_TEXT = ("大语言模型把文本切成词元，逐个预测下一个词元。Large language models read tokens and predict the next one, "
         "step by step, reusing the keys and values of earlier tokens from a cache. ")


def workload(tokenizer, prompts: int = 25, prompt_tokens: int = 64) -> list[list[int]]:
    """``prompts`` different token-id lists of exactly ``prompt_tokens`` tokens (the seed's 25 x 64-token workload).

    >>> [len(p) for p in workload(tokenizer, prompts=3, prompt_tokens=16)]  # doctest: +SKIP
    [16, 16, 16]
    """
    ids = tokenizer(_TEXT * (prompt_tokens // 8 + prompts), add_special_tokens=False)["input_ids"]
    if len(ids) < prompt_tokens + prompts:
        raise ValueError(f"the workload text gives only {len(ids)} tokens; ask for fewer or shorter prompts")
    return [ids[i:i + prompt_tokens] for i in range(prompts)]  # each prompt starts one token later


class _DropExpected(logging.Filter):
    """Hides the two warnings a benchmark triggers on purpose (eos -1, a manager kept between runs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("`eos_token_id` should consist of positive integers")
                    or message.startswith("Since you passed `persistent_manager=True`"))


@contextlib.contextmanager
def _quiet_expected_warnings():
    loggers = [logging.getLogger("transformers.generation.utils"), logging.getLogger("ContinuousBatchingLogger")]
    drop = _DropExpected()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


class _FirstTokenClock(BaseStreamer):
    """Records when ``generate`` hands over its first new token (the first ``put`` is the prompt)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self):
        pass


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _generate_once(model, tokenizer, prompts, new_tokens, backend) -> tuple[list[list[int]], float, float]:
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt").to(model.device)
    clock = _FirstTokenClock()
    extra = {"cache_implementation": "static"} if backend == "hf-static" else {}
    start = time.perf_counter()
    out = model.generate(**batch, **GREEDY, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id,
                         streamer=clock, **extra)
    _sync(model.device)
    seconds = time.perf_counter() - start
    return out[:, batch["input_ids"].shape[1]:].tolist(), (clock.first or start + seconds) - start, seconds


def _continuous_batching_once(model, prompts, new_tokens) -> tuple[list[list[int]], float, float]:
    config = copy.deepcopy(model.generation_config)
    config.update(**GREEDY, max_new_tokens=new_tokens)
    cuda = model.device.type == "cuda"
    start = time.perf_counter()
    results = model.generate_batch(prompts, generation_config=config, persistent_manager=True, record_timestamps=True,
                                   continuous_batching_config=ContinuousBatchingConfig(use_cuda_graph=cuda))
    _sync(model.device)
    seconds = time.perf_counter() - start
    ordered = list(results.values())  # generate_batch returns them in the order of the inputs
    failed = [r.error for r in ordered if r.error] + ["missing results"] * (len(prompts) - len(ordered))
    if failed:  # generate_batch logs errors instead of raising them
        raise RuntimeError(f"continuous batching failed: {failed[0]}")
    first = min(r.timestamps[0] for r in ordered if r.timestamps)
    return [list(r.generated_tokens) for r in ordered], first - start, seconds


def _graph_once(decoder, tokenizer, prompts, new_tokens) -> tuple[list[list[int]], float, float]:
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
    start = time.perf_counter()
    out = decoder.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=new_tokens)
    _sync(decoder.model.device)
    return out.tolist(), decoder.timings["prefill_s"], time.perf_counter() - start


def compile_seconds() -> dict[str, float]:
    """Seconds ``torch.compile`` spent so far in this process, by phase (dynamo's ``bytecode_tracing``, inductor's
    ``compile_fx_inner``, ``async_compile.wait`` for its Triton kernels, ...): subtract two readings to see where a
    warm-up went.

    >>> isinstance(compile_seconds(), dict)
    True
    """
    names, values = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
    return {name: float(value) for name, value in zip(names, values)}


def fx_graph_cache_counts() -> dict[str, int]:
    """How often inductor's FX graph cache answered a compile so far in this process (``hits``), had to compile
    (``misses``) or could not be used (``bypasses``): subtract two readings to see whether a warm-up compiled.

    >>> sorted(fx_graph_cache_counts())
    ['bypasses', 'hits', 'misses']
    """
    counted = torch._dynamo.utils.counters["inductor"]
    return {name: counted[f"fxgraph_cache_{key}"] for name, key in (("hits", "hit"), ("misses", "miss"),
                                                                  ("bypasses", "bypass"))}


def resolve_backend(backend: str, cuda: bool) -> str:
    """The transformers backend ``hf-fast`` stands for on this machine (others are returned unchanged).

    >>> resolve_backend("hf-fast", cuda=True), resolve_backend("hf-fast", cuda=False), resolve_backend("hf", True)
    ('hf-graph-compile', 'hf', 'hf')
    """
    if backend != "hf-fast":
        return backend
    return "hf-graph-compile" if cuda else "hf"


def bench(model, tokenizer, backend: str = "hf", prompts: list[list[int]] | None = None, new_tokens: int = 128,
          repeats: int = 3, compile_mode: str = "default", fresh_compile_cache: bool = False) -> BenchResult:
    """Warm up once, then time ``repeats`` runs of ``backend`` on ``prompts`` (default: the 25 x 64 workload).

    ``compile_mode`` is the ``torch.compile`` mode of ``hf-graph-compile``; with ``fresh_compile_cache`` it compiles
    into an empty temporary cache (torch's ``fresh_cache``: inductor's and Triton's), so that its warm-up is a first
    start's on any machine.

    >>> r = bench(model, tokenizer, "hf", workload(tokenizer, 2, 16), new_tokens=8, repeats=1)  # doctest: +SKIP
    >>> r.tokens_per_s > 0 and all(len(o) == 8 for o in r.outputs)  # doctest: +SKIP
    True
    """
    backend = resolve_backend(backend, model.device.type == "cuda")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    prompts = prompts if prompts is not None else workload(tokenizer)
    decoder = None
    if backend.startswith("hf-graph"):
        decoder = GraphDecoder(model, len(prompts), max(len(p) for p in prompts) + new_tokens, fuse_projections=True,
                               compile_small_ops=backend == "hf-graph-compile", compile_mode=compile_mode,
                               capture_prefill=True)

    decoder_timings = []  # each run's prefill / capture / decode seconds: the first splits the warm-up

    def once():
        with torch.no_grad(), _quiet_expected_warnings():
            if backend == "hf-cb":
                return _continuous_batching_once(model, prompts, new_tokens)
            if decoder is not None:
                ran = _graph_once(decoder, tokenizer, prompts, new_tokens)
                decoder_timings.append(dict(decoder.timings))
                return ran
            return _generate_once(model, tokenizer, prompts, new_tokens, backend)

    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    compiled_before, cache_before = compile_seconds(), fx_graph_cache_counts()
    fresh = fresh_compile_cache and backend == "hf-graph-compile"
    if fresh:
        from torch._inductor.utils import fresh_cache  # here: inductor takes seconds to import
    try:
        with fresh_cache() if fresh else contextlib.nullcontext():
            warm_up_s, runs = timed_runs(once, repeats)
    finally:
        if backend == "hf-cb":
            model.destroy_cached_continuous_batching_manager()
        if decoder is not None:
            decoder.close()  # the model gets its own layers back (fused projections, compiled quantized layers)
    # the warm-up's timings show where it went: on a GPU its capture_s holds torch.compile's compilation (the first
    # step call) and the CUDA graph capture, its prefill_s the capture of the prompt's graph (on the CPU: decode_s)
    details = {"graph_decoder_timings_warm_up": decoder_timings[0],
               "graph_decoder_timings_last_run": decoder_timings[-1]} if decoder else {}
    if backend == "hf-graph-compile":
        details["compile_mode"] = compile_mode
        # the warm-up's compilation by phase (the rest of capture_s: the kernels' first launches, the graph capture)
        details["compile_phases_s"] = {name: round(seconds - compiled_before.get(name, 0.0), 2)
                                       for name, seconds in compile_seconds().items()
                                       if seconds - compiled_before.get(name, 0.0) >= 0.05}
        # a warm-up that found its graph compiled already (hits) is not a first start's
        details["compile_cache"] = {"fresh": fresh, **{name: count - cache_before[name]
                                                       for name, count in fx_graph_cache_counts().items()}}
    if cuda:  # the engines' rows count whole processes (bench_engines): say which this is
        details["peak_memory"] = "torch.cuda.max_memory_allocated: this process's allocator, CUDA context not included"
    return result(backend, prompts, new_tokens, warm_up_s, runs,
                  peak_memory_gib=round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None, details=details)
