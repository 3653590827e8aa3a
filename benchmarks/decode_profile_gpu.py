"""Where a decode step of ``llmkit.generation.fastdecode.GraphDecoder`` spends its time, before anything is changed (issue 18).

For one model and batch size it measures, in one process, with the bandwidth limit of the same run:
- step time: one captured step replayed (CUDA events), against the bandwidth limit (weight bytes per step / device
  copy bandwidth; the limit that counts only one embedding row per token too);
- kernel time vs gaps: ``torch.profiler`` over replayed steps; the sum of GPU kernel time per step and what is left
  of the step (launch and dependency gaps), with the 16 kernels that take the most time;
- attention over the static cache: the step time with the same filled length in caches of different ``max_len``
  (attention that reads the whole static cache grows with ``max_len``, one that reads the filled part does not);
- sampling: the ``argmax`` over the vocabulary alone; host synchronisation: a step with and without
  ``torch.cuda.synchronize()`` after it; prefill: the prompt's forward pass, eager and replayed from a graph
  (``GraphDecoder(capture_prefill=True)``);
- the first change the profile pointed at: q, k and v as one product and gate and up as another
  (``GraphDecoder(fuse_projections=True)``), its step time and kernels; ``--variants`` also times the step through
  ``torch.compile`` (``compiled``, ``compiled_fused``: ``hf-fast``'s path; a compile per variant and batch size,
  about a minute each on a GPU), with inductor's autotuned matrix products (``compiled_fused_autotune``) and with
  other attention kernels (``compiled_fused_eager_attention``, ``compiled_fused_efficient_sdpa``,
  ``compiled_fused_grouped_matmul``: the grouped attention as matrix products and a softmax, ``compiled_fused_flex``:
  on FlexAttention's decoding kernel, ``compiled_fused_sdpa``: on SDPA's kernel, as before ``triton_decode``), and
  with the prompt's forward pass compiled too (``compiled_fused_compiled_prefill``); each variant's row has its first
  call's seconds (compilation) and its prefill's. GPTQ Marlin layers apart (``decode_profile_marlin_72b_h100.json``)
  were measured by earlier versions.
  A compiled step groups the query heads by key/value head (``GraphDecoder`` does it since
  ``decode_profile_grouped_h100.json``, which measured it as the variant ``compiled_fused_grouped_sdpa`` against K
  and V repeated per query head).

    python benchmarks/decode_profile_gpu.py --model Qwen/Qwen2-7B-Instruct --batch 1 25 --out $OUT/profile.json
On a CPU (``--standin``) the same code runs on the stand-in without graphs, events or CUDA kernels, to keep it working.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

sys.path.insert(0, str(Path(__file__).parent))
from gptq72b_gpu import model_bytes  # noqa: E402  (reused, not copied)
from load_memory_gpu import copy_bandwidth_gbs  # noqa: E402

import llmkit  # noqa: E402
from llmkit.environment.env import llmkit_commit  # noqa: E402
from llmkit.generation.bench import workload  # noqa: E402
from llmkit.generation.fastdecode import GraphDecoder  # noqa: E402
from llmkit.generation.grouped_attention import (additive_mask, grouped_query_sdpa, grouped_sdpa,  # noqa: E402
                                                 is_grouped_decode_step)


def timed(fn, repeats: int = 20) -> float:
    """Median seconds of ``fn()`` (CUDA events on a GPU, the wall clock on a CPU)."""
    cuda = torch.cuda.is_available()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(); fn(); end.record(); torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return statistics.median(times)


def decoder_at(model, tokenizer, batch: int, prompt_tokens: int, max_len: int, **options) -> GraphDecoder:
    """A decoder of ``max_len`` with a prompt of ``prompt_tokens`` prefilled and its step captured (on CUDA);
    ``options`` go to ``GraphDecoder`` (``fuse_projections``, ``compile_small_ops``)."""
    prompts = workload(tokenizer, batch, prompt_tokens)
    ids = torch.tensor(prompts)
    decoder = GraphDecoder(model, batch, max_len, **options)
    decoder.generate(ids, torch.ones_like(ids), max_new_tokens=2)  # prefill + capture
    return decoder


def step_fn(decoder: GraphDecoder):
    return decoder.graph.replay if decoder.graph is not None else torch.no_grad()(decoder._step)


def kernel_split(decoder: GraphDecoder, steps: int = 10) -> dict:
    """GPU kernel time per replayed step and the kernels that take most of it (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    replay = step_fn(decoder)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total_us = sum(e.self_device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:16]
    return {"kernel_s_per_step": round(total_us / 1e6 / steps, 6),
            "top_kernels": [{"name": e.key[:120], "share": round(e.self_device_time_total / total_us, 3),
                             "calls_per_step": e.count / steps} for e in top]}


HF_FAST = {"compile_small_ops": True, "fuse_projections": True}
VARIANTS = {  # GraphDecoder options of each variant the profile suggested; "attention" is the model's setting
    "fused": {"fuse_projections": True},
    "compiled": {"compile_small_ops": True},
    # the query heads grouped by key/value head in attention (GraphDecoder does it compiled), on CUDA with
    # llmkit.generation.triton_decode's kernel
    "compiled_fused": HF_FAST,
    "compiled_fused_autotune": {**HF_FAST, "compile_mode": "max-autotune-no-cudagraphs"},
    # the attention step (cuDNN's SDPA kernel took about 5 % of the compiled step, for 1 query row over 320 keys):
    # transformers' eager attention, whose matmuls, softmax and mask inductor can fuse; SDPA without cuDNN (the
    # memory-efficient kernel: flash cannot take the decoder's additive mask)
    "compiled_fused_eager_attention": {**HF_FAST, "attention": "eager"},
    "compiled_fused_efficient_sdpa": {**HF_FAST, "attention": "sdpa-efficient"},
    # the grouped step's attention as two matrix products and a softmax inductor fuses with the mask (cuDNN's SDPA
    # kernel took 6.3 % of the grouped 25-row step, about 4 times its bytes' time)
    "compiled_fused_grouped_matmul": {**HF_FAST, "attention": "grouped-matmul"},
    # the grouping on FlexAttention's decoding kernel (it splits the keys over thread blocks; cuDNN's kernel pads the
    # 7 grouped rows to a 64-row tile); without inductor's prologue fusion, which had pulled the query's rotary
    # embedding into flex's template and made it slower than cuDNN (decode_profile_prefill_h100.json)
    "compiled_fused_flex": {**HF_FAST, "attention": "grouped-flex", "inductor": {"prologue_fusion": False}},
    # the grouped step on SDPA's kernel (cuDNN's on an H100; before llmkit.generation.triton_decode's kernel)
    "compiled_fused_sdpa": {**HF_FAST, "attention": "grouped-sdpa"},
    # the prompt's forward pass through the compiled model too, replayed from a graph (the step is compiled_fused's)
    "compiled_fused_compiled_prefill": {**HF_FAST, "capture_prefill": True, "compile_prefill": True},
}


def grouped_matmul_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``grouped_attention.grouped_query_sdpa`` with ``query @ key.T``, softmax and ``@ value`` instead of SDPA."""
    if not is_grouped_decode_step(module, query, attention_mask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups, (batch, heads, _, dim) = module.num_key_value_groups, query.shape
    scores = query.reshape(batch, heads // groups, groups, dim) @ key.transpose(-1, -2)
    scores = scores.float() * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:  # [batch, 1, 1, length]: True (or 0.0) where a row may attend
        scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                  else scores + attention_mask)
    grouped = scores.softmax(-1).to(value.dtype) @ value  # [batch, kv_heads, groups, dim]
    return grouped.reshape(batch, 1, heads, value.shape[-1]), None


def flex_grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``grouped_attention.grouped_query_sdpa`` on ``flex_attention``: each key/value head's grouped query heads are
    its query rows (flex decoding takes only power-of-two query/key-value head ratios; Qwen2-7B's is 7), the additive
    mask a ``score_mod``. Compiled only: eager flex attention cannot be captured in a CUDA graph."""
    from torch.nn.attention.flex_attention import flex_attention

    if not is_grouped_decode_step(module, query, attention_mask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups, (batch, heads, _, dim) = module.num_key_value_groups, query.shape
    mask = None if attention_mask is None else additive_mask(attention_mask, query.dtype)

    def add_mask(score, b, h, q_index, kv_index):
        return score + mask[b, 0, 0, kv_index]

    grouped = flex_attention(query.reshape(batch, heads // groups, groups, dim), key, value,
                             score_mod=add_mask if mask is not None else None, scale=scaling)
    return grouped.reshape(batch, 1, heads, value.shape[-1]), None


def sdpa_grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``grouped_attention.grouped_query_sdpa`` on SDPA's kernel (cuDNN's on an H100) also on CUDA, where
    ``GraphDecoder`` runs ``llmkit.generation.triton_decode``'s."""
    if not is_grouped_decode_step(module, query, attention_mask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return grouped_sdpa(query, key, value, attention_mask, module.num_key_value_groups, dropout, scaling)


def efficient_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """``grouped_attention.grouped_query_sdpa`` on SDPA's memory-efficient kernel (the math one where that kernel does
    not exist, e.g. on a CPU). The kernel is chosen inside the traced function: a global switch such as
    ``torch.backends.cuda.enable_cudnn_sdp(False)`` left the compiled step on cuDNN's kernel (H100, 2026-12-07)."""
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return grouped_query_sdpa(module, query, key, value, attention_mask, **kwargs)


PROFILE_ATTENTION = {"grouped-matmul": grouped_matmul_attention, "sdpa-efficient": efficient_sdpa_attention,
                     "grouped-flex": flex_grouped_attention, "grouped-sdpa": sdpa_grouped_attention}


def profile_attention_name(choice: str) -> str:
    """The name a profile attention choice is registered under in transformers, e.g. "llmkit_profile_grouped_matmul"."""
    return "llmkit_profile_" + choice.replace("-", "_")


@contextlib.contextmanager
def attention(model, choice: str | None):
    """The model's attention as ``choice`` says ("eager", "sdpa-efficient", "grouped-matmul", "grouped-flex",
    "grouped-sdpa"; None: unchanged) inside the block."""
    implementation = model.config._attn_implementation
    if choice == "eager":
        model.set_attn_implementation("eager")
    elif choice in PROFILE_ATTENTION:
        name = profile_attention_name(choice)
        AttentionInterface.register(name, PROFILE_ATTENTION[choice])
        AttentionMaskInterface.register(name, sdpa_mask)
        model.set_attn_implementation(name)
    elif choice is not None:
        raise ValueError(f"unknown attention choice {choice!r}")
    try:
        yield
    finally:
        model.set_attn_implementation(implementation)


def variant_rows(model, tokenizer, batch: int, limit_steps_per_s: float | None, names: list[str], rows: dict,
                 save) -> None:
    """Step time (and on CUDA the top kernels) of the named ``VARIANTS``, same workload, into ``rows``;
    ``save()`` after each."""
    layer = model.model.layers[0].self_attn
    x = torch.randn(batch, 1, model.config.hidden_size, device=model.device, dtype=model.dtype)
    with torch.no_grad():  # the first layer's q, k and v, each layer on its own (plain or quantized)
        separate = torch.cat([getattr(layer, name)(x) for name in ("q_proj", "k_proj", "v_proj")], dim=-1)
    for name in names:
        options = dict(VARIANTS[name])
        with attention(model, options.pop("attention", None)), inductor_config.patch(options.pop("inductor", {})):
            start = time.perf_counter()
            decoder = decoder_at(model, tokenizer, batch, 64, 64 + 256, **options)
            first_call_s = time.perf_counter() - start  # compiles (for the step; the prompt's with compile_prefill)
            step_s = timed(step_fn(decoder))
            rows[name] = {"step_s": round(step_s, 6), "tokens_per_s": round(batch / step_s, 1),
                          "first_call_s": round(first_call_s, 2), "prefill_s": prefill_seconds(decoder, tokenizer)}
            if hasattr(layer.q_proj, "product"):  # the fused product against the layers (a wrong concatenation: ~1)
                with torch.no_grad():
                    error = (layer.q_proj.product(x) - separate).abs().max() / separate.abs().max()
                rows[name]["fused_qkv_relative_error"] = float(error)
            if limit_steps_per_s:
                rows[name]["fraction_of_limit"] = round(1 / step_s / limit_steps_per_s, 3)
            if torch.cuda.is_available():
                split = kernel_split(decoder)
                rows[name].update(kernel_s_per_step=split["kernel_s_per_step"], top_kernels=split["top_kernels"],
                                  gap_s_per_step=round(step_s - split["kernel_s_per_step"], 6))
            decoder.close()
        save()


def prefill_seconds(decoder: GraphDecoder, tokenizer, calls: int = 6) -> float:
    """Median prefill seconds of a decoder's calls on its 64-token workload (the first left out: it captures)."""
    ids = torch.tensor(workload(tokenizer, decoder.batch_size, 64))
    seconds = []
    for _ in range(calls):
        decoder.generate(ids, torch.ones_like(ids), max_new_tokens=1)
        seconds.append(decoder.timings["prefill_s"])
    return statistics.median(seconds[1:])


def profile_batch(model, tokenizer, batch: int, limit_steps_per_s: float | None) -> dict:
    cuda = torch.cuda.is_available()
    decoder = decoder_at(model, tokenizer, batch, 64, 64 + 256)
    step_s = timed(step_fn(decoder))
    row = {"batch": batch, "step_s": round(step_s, 6), "tokens_per_s": round(batch / step_s, 1)}
    if limit_steps_per_s:
        row["fraction_of_limit"] = round(1 / step_s / limit_steps_per_s, 3)
    if cuda:
        row.update(kernel_split(decoder))
        row["gap_s_per_step"] = round(step_s - row["kernel_s_per_step"], 6)
        synced = timed(lambda: (step_fn(decoder)(), torch.cuda.synchronize()))
        row["host_sync_cost_s"] = round(synced - step_s, 6)
    # attention over the static cache: the same 64 filled positions in caches of growing max_len
    row["step_s_by_max_len"] = {}
    for max_len in (128, 512, 2048):
        decoder = None  # free the last cache before the next one is built
        decoder = decoder_at(model, tokenizer, batch, 64, max_len)
        row["step_s_by_max_len"][max_len] = round(timed(step_fn(decoder)), 6)
    logits = torch.randn(batch, model.config.vocab_size, device=model.device, dtype=model.dtype)
    row["argmax_s"] = round(timed(lambda: logits.argmax(-1)), 6)
    ids = torch.tensor(workload(tokenizer, batch, 64), device=model.device)
    with torch.no_grad():
        row["prefill_s"] = round(timed(lambda: model(input_ids=ids, logits_to_keep=1), repeats=5), 6)
    decoder = None
    # the prompt's forward pass replayed from a graph (GraphDecoder(capture_prefill=True)): the first call captures
    with GraphDecoder(model, batch, 64 + 256, capture_prefill=True) as decoder:
        row["prefill_captured_s"] = prefill_seconds(decoder, tokenizer)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen/Qwen2-7B-Instruct", help="an id llmkit.pick_model resolves")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 25])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["fused"],
                        help="decoder variants to time after the profile, in this order (a compiled one: a minute or "
                             "more each on a GPU; the autotuned one: more)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    model, tokenizer = llmkit.load(llmkit.pick_model(args.model))
    result = {"date": datetime.date.today().isoformat(), "commit": llmkit_commit(), "model": args.model,
              "dtype": str(model.dtype),
              "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
              "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                           "python": platform.python_version()}}
    limit = None
    if cuda:
        sizes, bandwidth = model_bytes(model), copy_bandwidth_gbs()
        limit = bandwidth * 1e9 / sizes["total_bytes"]
        one_row = sizes["total_bytes"] - sizes["embed_tokens_bytes"]  # only one embedding row is read per token
        result.update(copy_bandwidth_gb_s=round(bandwidth, 1), bytes_per_step=sizes["total_bytes"],
                      bandwidth_limit_steps_per_s=round(limit, 1),
                      strict_limit_steps_per_s=round(bandwidth * 1e9 / one_row, 1))
    result["batches"] = []

    def save():  # after each measurement: a call that runs out of time keeps what it measured
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")

    for batch in args.batch:
        result["batches"].append(profile_batch(model, tokenizer, batch, limit))
        save()
        variant_rows(model, tokenizer, batch, limit, args.variants, result["batches"][-1].setdefault("variants", {}),
                     save)
    print(json.dumps(result)[:2000])


if __name__ == "__main__":
    main()
