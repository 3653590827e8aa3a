"""``llmkit bench [MODEL]``: generation speed per backend (transformers; llama.cpp on a GGUF; vLLM where
installed) on the seed's workload (25 prompts, 64 tokens in, 128 out), with warm-up, tokens/s, time to first
token and peak memory; JSON and a chart."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

from llmkit.generation.bench_engines import ENGINE_BACKENDS, require_engine_python
from llmkit.generation.bench_limit import fraction_of_limit
from llmkit.generation.bench_result import ALL_BACKENDS, COMPILE_MODES, tuning_environment
from llmkit.cli.table import print_table
from llmkit.errors import BadInput
from llmkit.pick import DEFAULT_STANDIN, model_or_default
from llmkit.safe_output import atomic_output, refuse_existing, write_text


# The tutorial this course started from, `benchmark_throughput.py` on 25 prompts x 64 in / 128 out (its GPU, float16).
# Its tokens/s count input and output tokens; on one workload the ratio of two backends is the same either way, so
# it is compared with the ratio of this run's vllm and hf rows.
SOURCE_TUTORIAL_TOKENS_PER_S = {"vllm": 1479.95, "hf": 800.48}


def register(sub) -> None:
    parser = sub.add_parser("bench", help="measure generation speed (tokens/s, first-token time, memory) per backend")
    parser.add_argument("model", nargs="?", help="model id or path (default: the embedded qwen2-chat stand-in)")
    choices = (*ALL_BACKENDS, *ENGINE_BACKENDS)
    parser.add_argument("--backend", nargs="+", default=["hf", "hf-fast"], choices=choices, metavar="BACKEND",
                        help=f"one or more of {', '.join(choices)} (default: hf hf-fast)")
    parser.add_argument("--gguf", type=Path, help="GGUF file of the same model for the llamacpp backend "
                                                  "(make one with: llmkit gguf MODEL FILE)")
    parser.add_argument("--prompts", type=int, default=25, help="number of prompts, generated together (default 25)")
    parser.add_argument("--input-len", type=int, default=64, help="tokens per prompt (default 64)")
    parser.add_argument("--output-len", type=int, default=128, help="new tokens per prompt, fixed (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up; the median counts")
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                        help="torch.compile mode of hf-graph-compile (hf-fast on CUDA); max-autotune-no-cudagraphs "
                             "also tunes the matrix products: minutes more warm-up (default: default)")
    parser.add_argument("--fresh-compile-cache", action="store_true",
                        help="hf-graph-compile (hf-fast on CUDA) compiles into an empty temporary cache, so its warm-up "
                             "is a first start's even where earlier runs left compiled kernels behind")
    parser.add_argument("--tensor-parallel-size", type=int, nargs="+", default=[1], metavar="N",
                        help="vllm only: run it once per N on N GPUs (tensor parallelism), e.g. 1 2; N must divide "
                             "the model's attention heads (default: 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--chart", type=Path, help="save a bar chart of tokens/s to this image file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out and --chart files")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def _check(args) -> None:
    for name in ("prompts", "input_len", "output_len", "repeats"):
        if getattr(args, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    refuse_existing([p for p in (args.out, args.chart) if p is not None], args.overwrite, flag="--overwrite")
    for backend in set(args.backend) & set(ENGINE_BACKENDS):
        require_engine_python(backend)
    if "llamacpp" in args.backend and args.gguf is None:
        raise BadInput("the llamacpp backend needs --gguf FILE, a GGUF of the same model; "
                       "make one with: llmkit gguf MODEL FILE")
    if args.gguf is not None and not args.gguf.is_file():
        raise BadInput(f"GGUF file {args.gguf} does not exist; make one with: llmkit gguf MODEL FILE")
    if min(args.tensor_parallel_size) < 1:
        raise BadInput(f"--tensor-parallel-size must be at least 1, got {min(args.tensor_parallel_size)}")
    if max(args.tensor_parallel_size) > 1 and "vllm" not in args.backend:
        raise BadInput("--tensor-parallel-size splits the vllm backend over GPUs; add --backend vllm")


def _check_split(sizes: list[int], model_dir, gpus: int) -> None:
    """Refuse a tensor-parallel size the machine or the model cannot take, before anything loads."""
    from transformers import AutoConfig

    if max(sizes) > gpus:
        raise BadInput(f"--tensor-parallel-size {max(sizes)} needs {max(sizes)} GPUs; torch sees {gpus} here "
                       "(check CUDA_VISIBLE_DEVICES and nvidia-smi)")
    config = AutoConfig.from_pretrained(model_dir)
    heads = config.num_attention_heads
    if bad := [n for n in sizes if heads % n]:
        raise BadInput(f"--tensor-parallel-size {bad[0]} does not divide the model's {heads} attention heads; "
                       f"choose one of {[n for n in range(1, min(gpus, heads) + 1) if heads % n == 0]}")
    # GPTQ: each GPU's share of the MLP's down projection must hold whole quantization groups (why Qwen pads
    # Qwen2-72B-Instruct-GPTQ-Int4's MLP to 29696 = 2 x 116 x 128 columns)
    group = (getattr(config, "quantization_config", None) or {}).get("group_size", -1)
    width = config.intermediate_size
    if group > 0 and (bad := [n for n in sizes if width % (n * group)]):
        raise BadInput(f"--tensor-parallel-size {bad[0]} splits the MLP's {width} columns into parts of "
                       f"{width / bad[0]:g}, not whole GPTQ groups of {group}; vLLM cannot load that split. Choose "
                       f"one of {[n for n in range(1, gpus + 1) if heads % n == 0 and width % (n * group) == 0]}")


def run(args) -> tuple[dict, int]:
    """Benchmark each backend in turn on one loaded model; exit code 1 when a backend failed.

    >>> from llmkit.cli import build_parser
    >>> run(build_parser().parse_args(["bench", "--prompts", "2", "--output-len", "4", "--repeats", "1"]))  # doctest: +SKIP
    """
    import torch
    import transformers

    from llmkit.environment.env import llmkit_commit
    from llmkit.generation.bench import workload
    from llmkit.hub import locate

    _check(args)
    model_ref = model_or_default(args.model,
                                 hint="Name a model for real numbers, e.g. llmkit bench Qwen/Qwen2-7B-Instruct.")
    model_dir = locate(model_ref).path
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    prompts = workload(tokenizer, args.prompts, args.input_len)
    if max(args.tensor_parallel_size) > 1:
        _check_split(args.tensor_parallel_size, model_dir, torch.cuda.device_count())
    cuda = torch.cuda.is_available()
    limit = memory_limit(model_dir, "cuda" if cuda else "cpu")  # measured first, while no model holds the GPU
    hf_model = _LazyModel(model_ref)
    rows = []
    for backend, split in _runs(args.backend, args.tensor_parallel_size):
        try:
            row = _bench_one(backend, args, hf_model, tokenizer, model_dir, prompts, split).to_dict()
        except (RuntimeError, ValueError) as error:  # reported in the results; the exit code says a backend failed
            row = {"backend": backend, "error": f"{type(error).__name__}: {error}"}
        if "tokens_per_s" in row:  # N GPUs each read 1/N of the weights per step: N times one card's limit
            row["fraction_of_limit"] = fraction_of_limit(row["tokens_per_s"], row["prompts"],
                                                         split * limit["limit_steps_per_s"])
        rows.append({"requested": backend if split == 1 else f"{backend}-tp{split}", **row})
    data = {
        "date": datetime.date.today().isoformat(), "commit": llmkit_commit(), "model": model_ref,
        "model_id": args.model or DEFAULT_STANDIN,
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()})",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "workload": {"prompts": args.prompts, "input_len": args.input_len, "output_len": args.output_len,
                     "repeats": args.repeats},
        "tuning_environment": tuning_environment(),  # the vLLM process inherits it
        "bandwidth_limit": limit,
        "results": rows,
    }
    speeds = {r["requested"]: r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    if "vllm" in speeds and "hf" in speeds:
        data["vllm_over_hf"] = {"this_run": round(speeds["vllm"] / speeds["hf"], 2),
                                "source_tutorial": round(SOURCE_TUTORIAL_TOKENS_PER_S["vllm"]
                                                         / SOURCE_TUTORIAL_TOKENS_PER_S["hf"], 2)}
    if args.out:
        write_text(args.out, json.dumps(data, indent=2, ensure_ascii=False), args.overwrite, flag="--overwrite")
    if args.chart:
        save_chart(data, args.chart, args.overwrite)
    return data, 1 if any("error" in r for r in rows) else 0


def _runs(backends: list[str], splits: list[int]) -> list[tuple[str, int]]:
    """(backend, GPUs) pairs in the order asked: vllm once per tensor-parallel size, every other backend on one GPU.

    >>> _runs(["hf", "vllm"], [1, 2])
    [('hf', 1), ('vllm', 1), ('vllm', 2)]
    """
    return [(backend, split) for backend in backends for split in (splits if backend == "vllm" else [1])]


def memory_limit(model_dir, device: str) -> dict:
    """``bench_limit.bandwidth_limit`` for the checkpoint in ``model_dir`` (weight bytes from its config, as stored).

    >>> memory_limit("/models/Qwen2-7B-Instruct", "cuda")["weights_bytes"]  # doctest: +SKIP
    15231233024
    """
    from llmkit.generation.bench_limit import bandwidth_limit
    from llmkit.memory import estimate, load_facts, weight_parts

    weights = estimate(str(model_dir))
    embeddings = weight_parts(load_facts(str(model_dir)), weights["quant"])["embeddings"]
    return bandwidth_limit(weights["weights_bytes"], embeddings, device)


class _LazyModel:
    """The transformers model, loaded on first use and released before an engine backend runs, so llama.cpp and
    vLLM (each in its own process) have the GPU to themselves; a later transformers backend loads it again."""

    def __init__(self, model_ref: str):
        self.model_ref, self.model = model_ref, None

    def __call__(self):
        if self.model is None:
            from llmkit.loading import load

            self.model = load(self.model_ref)[0]
        return self.model

    def release(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _bench_one(backend: str, args, hf_model: _LazyModel, tokenizer, model_dir, prompts, split: int = 1):
    from llmkit.generation import bench_engines
    from llmkit.generation.bench import bench

    if backend in ENGINE_BACKENDS:
        hf_model.release()
    if backend == "llamacpp":
        return bench_engines.bench_llamacpp_isolated(args.gguf, prompts, args.output_len, args.repeats)
    if backend == "vllm":
        return bench_engines.bench_vllm_isolated(model_dir, prompts, args.output_len, args.repeats,
                                                 **({"tensor_parallel_size": split} if split > 1 else {}))
    return bench(hf_model(), tokenizer, backend, prompts, new_tokens=args.output_len, repeats=args.repeats,
                 compile_mode=args.compile_mode, fresh_compile_cache=args.fresh_compile_cache)


def save_chart(data: dict, path: Path, overwrite: bool = False) -> None:
    """Bar chart of generated tokens/s per backend (failed backends are left out), each bar labelled with its share of
    the bandwidth limit, which is drawn as a dashed line; the format follows the suffix.

    >>> save_chart({"model": "m", "device": "cpu", "workload": {"prompts": 1, "input_len": 8, "output_len": 4},
    ...             "results": [{"requested": "hf", "backend": "hf", "tokens_per_s": 10.0}]}, Path("/tmp/c.png"))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in data["results"] if "tokens_per_s" in r]
    labels = [r["requested"] if r["requested"] == r["backend"] else f"{r['requested']}\n({r['backend']})" for r in ok]
    fig, ax = plt.subplots(figsize=(1.6 * max(len(ok), 2) + 2.5, 3.4))
    ax.bar(labels, [r["tokens_per_s"] for r in ok], color="#4a8")
    w = data["workload"]
    steps = data.get("bandwidth_limit", {}).get("limit_steps_per_s")
    if steps:  # every weight byte read once per decode step, each step one token per prompt
        one_gpu = any("-tp" in r["requested"] for r in ok)
        ax.axhline(steps * w["prompts"], ls="--", color="k", lw=1,
                   label="bandwidth limit" + (" of one GPU" if one_gpu else ""))
        ax.legend(fontsize=8, loc="lower right")
    ax.margins(y=0.1)
    top = ax.get_ylim()[1]
    for x, r in enumerate(ok):  # the value inside a tall bar, above a short one
        text = f"{r['tokens_per_s']:,.{0 if r['tokens_per_s'] >= 100 else 1}f}"
        text += f"\n{r['fraction_of_limit']:.0%}" if r.get("fraction_of_limit") else ""
        inside = r["tokens_per_s"] > 0.25 * top
        ax.text(x, r["tokens_per_s"] * (0.97 if inside else 1) + (0 if inside else 0.01 * top), text, ha="center",
                va="top" if inside else "bottom", fontsize=8, color="white" if inside else "black")
    ax.set_ylabel("generated tokens/s")
    name = data.get("model_id") or Path(data["model"]).name
    ax.set_title(f"{name} on {data['device']}\n{w['prompts']} prompt{'s' * (w['prompts'] != 1)}, {w['input_len']} tokens in, "
                 f"{w['output_len']} out", fontsize=9)
    fig.tight_layout()
    with atomic_output(path, overwrite, flag="--overwrite") as partial:
        fig.savefig(partial, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def render(data: dict) -> None:
    """Print one table row per backend."""
    columns = ["requested", "backend", "tokens_per_s", "fraction_of_limit", "requests_per_s", "time_to_first_token_s",
               "warm_up_s", "peak_memory_gib", "error"]
    rows = [{c: ("" if r.get(c) is None else r.get(c)) for c in columns} for r in data["results"]]
    w = data["workload"]
    print_table(rows, columns, title=f"{data['model']} | {data['device']} | {w['prompts']} prompts x "
                                     f"{w['input_len']} tokens in, {w['output_len']} out")
    limit = data["bandwidth_limit"]
    print(f"fraction_of_limit: tokens/s over prompts x {limit['limit_steps_per_s']} steps/s, every weight byte read "
          f"once per step at the measured copy bandwidth of {limit['copy_bandwidth_gb_s']} GB/s ({limit['device']})")
    if "vllm_over_hf" in data:
        ratio = data["vllm_over_hf"]
        seed = SOURCE_TUTORIAL_TOKENS_PER_S
        print(f"vllm / hf: {ratio['this_run']}x in this run; {ratio['source_tutorial']}x in the source tutorial "
              f"({seed['vllm']} vs {seed['hf']} tokens/s, 25 x 64 in / 128 out)")
