"""What every ``llmkit bench`` backend returns, and the shared timing code. No torch import here: llama.cpp's CUDA
build crashed (SIGSEGV) in a process that had imported torch's CUDA libraries, so ``llmkit.generation.bench_engines`` must
be importable without them.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

BACKENDS = ("hf", "hf-static", "hf-cb", "hf-graph", "hf-graph-compile")  # transformers ways of generating
ALL_BACKENDS = ("hf-fast", *BACKENDS)  # hf-fast: the fastest of them (GraphDecoder + torch.compile)
# torch.compile modes of hf-graph-compile: those that leave CUDA graphs to GraphDecoder's own capture
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# environment variables that change what torch.compile or vLLM build, so a result file must say they were set;
# never one that holds a credential (vLLM reads its server's VLLM_API_KEY)
TUNING_PREFIXES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "TORCH_COMPILE_", "VLLM_")
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


@dataclass
class BenchResult:
    """One backend on one workload: ``tokens_per_s`` counts generated tokens of all prompts (median run)."""

    backend: str
    prompts: int
    prompt_tokens: int
    new_tokens: int
    warm_up_s: float
    runs_s: list[float]
    tokens_per_s: float
    time_to_first_token_s: float | None  # None where the engine does not report it
    peak_memory_gib: float | None
    outputs: list[list[int]] = field(repr=False)
    details: dict = field(default_factory=dict)  # backend-specific, e.g. GraphDecoder's prefill/capture/decode seconds

    def to_dict(self) -> dict:
        """JSON-ready fields without the generated token ids, plus ``requests_per_s`` (what the seed reports).

        >>> BenchResult("hf", 2, 8, 4, 0.1, [0.4], 20.0, 0.05, None, [[1, 2, 3, 4]] * 2).to_dict()["requests_per_s"]
        5.0
        """
        row = {k: v for k, v in asdict(self).items() if k != "outputs"}
        return {**row, "requests_per_s": round(self.tokens_per_s / self.new_tokens, 2)}


def tuning_environment(env=None) -> dict[str, str]:
    """The variables of ``env`` (default: this process's environment) that tune torch.compile or vLLM, e.g.
    ``TORCHINDUCTOR_SHAPE_PADDING=0``: a benchmark's numbers hold for these settings only.

    >>> tuning_environment({"TORCHINDUCTOR_SHAPE_PADDING": "0", "HOME": "/root", "VLLM_API_KEY": "s3cret"})
    {'TORCHINDUCTOR_SHAPE_PADDING': '0'}
    """
    env = os.environ if env is None else env
    return {name: env[name] for name in sorted(env)
            if name.startswith(TUNING_PREFIXES) and not any(word in name for word in SECRET_WORDS)}


def timed_runs(once, repeats: int) -> tuple[float, list[tuple[list[list[int]], float | None, float]]]:
    """Call ``once()`` for a warm-up, then ``repeats`` times; returns the warm-up seconds and the timed runs.

    ``once`` returns (new token ids per prompt, seconds to the first new token or None, seconds in all).

    >>> timed_runs(lambda: ([[1]], 0.1, 0.2), repeats=2)[1]
    [([[1]], 0.1, 0.2), ([[1]], 0.1, 0.2)]
    """
    start = time.perf_counter()
    once()
    warm_up_s = time.perf_counter() - start
    return warm_up_s, [once() for _ in range(repeats)]


def result(backend: str, prompts: list[list[int]], new_tokens: int, warm_up_s: float, runs: list,
           peak_memory_gib: float | None = None, details: dict | None = None) -> BenchResult:
    """A ``BenchResult`` from ``timed_runs``' runs (median run counts); refuses runs that stopped early.

    >>> result("hf", [[1, 2]], 1, 0.5, [([[7]], 0.1, 0.25)]).tokens_per_s
    4.0
    """
    outputs = runs[-1][0]
    lengths = {len(o) for o in outputs}
    if lengths != {new_tokens}:
        raise RuntimeError(f"{backend} produced {sorted(lengths)} new tokens per prompt instead of {new_tokens}")
    seconds = sorted(r[2] for r in runs)
    firsts = sorted(r[1] for r in runs if r[1] is not None)
    return BenchResult(
        backend=backend, prompts=len(prompts), prompt_tokens=max(len(p) for p in prompts), new_tokens=new_tokens,
        warm_up_s=round(warm_up_s, 2), runs_s=[round(r[2], 3) for r in runs],
        tokens_per_s=round(len(prompts) * new_tokens / seconds[len(seconds) // 2], 1),
        time_to_first_token_s=round(firsts[len(firsts) // 2], 4) if firsts else None,
        peak_memory_gib=peak_memory_gib, outputs=outputs, details=details or {})
