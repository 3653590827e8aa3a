"""Full-shape, random-weight XVERSE-7B-Chat (loaded the Llama way, ``llmkit.xverse``) quantized by ``llmkit.quantize``
to 8 and 4 bits on a GPU: memory against ``llmkit.estimate`` and batch-1 decode speed (plain ``generate`` and
``GraphDecoder``) for bf16, int8 and int4. Memory and speed do not depend on the weights' values.

    python benchmarks/quantize_gpu.py            # writes $OUT/quantize_gpu.json
    python benchmarks/quantize_gpu.py --tiny     # CPU smoke test on a 2-layer copy of the shape
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import time
import traceback
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

import llmkit
from llmkit.generation.bench import GREEDY
from llmkit.generation.fastdecode import GraphDecoder
from llmkit.memory import estimate, shipped_config
from llmkit.quantization import model_bytes
from llmkit.xverse import xverse_to_llama_config

MODEL_ID = "xverse/XVERSE-7B-Chat"
GIB = 2**30
QUANT_NAMES = {None: "bf16", 8: "int8", 4: "int4"}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_speed(model, new_tokens: int, repeats: int = 2) -> dict:
    """Batch-1 tokens/s of plain generate and of GraphDecoder on one random 64-token prompt (warm-up first)."""
    prompt = torch.randint(0, model.config.vocab_size, (1, 64), device=model.device)
    mask = torch.ones_like(prompt)
    runs = {"generate": lambda: model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, pad_token_id=0,
                                               **GREEDY)}
    decoder = GraphDecoder(model, 1, 64 + new_tokens)
    runs["GraphDecoder"] = lambda: decoder.generate(prompt, mask, new_tokens)
    speeds = {}
    for name, once in runs.items():
        try:
            start = time.perf_counter()
            once()
            _sync()
            warm_up = time.perf_counter() - start
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                once()
                _sync()
                times.append(time.perf_counter() - start)
            speeds[name] = {"tokens_per_s": round(new_tokens / min(times), 1), "warm_up_s": round(warm_up, 2),
                            "runs_s": [round(t, 3) for t in times]}
        except Exception as error:  # recorded: a path that fails with a quantized model is a result too
            speeds[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-1500:]}
    return speeds


def measure(config, bits: int | None, new_tokens: int) -> dict:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    row = {"quant": QUANT_NAMES[bits], "bytes_bf16": model_bytes(model)}
    start = time.perf_counter()
    if bits:
        report = llmkit.quantize(model, bits=bits)
        row.update(method=report.method, bytes_after=report.bytes_after, library_bytes_after=report.library_bytes_after)
    row["quantize_s"] = round(time.perf_counter() - start, 1)
    row["weights_gib"] = round(row.get("bytes_after", row["bytes_bf16"]) / GIB, 2)
    if device == "cuda":
        row["allocated_gib"] = round(torch.cuda.memory_allocated() / GIB, 2)
    row["decode_batch1"] = decode_speed(model, new_tokens)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 256: a CPU smoke test")
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    shipped = shipped_config(MODEL_ID)
    if args.tiny:
        shipped = {**shipped, "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 1024,
                   "num_attention_heads": 4}
    config = xverse_to_llama_config(shipped)
    rows = [measure(config, bits, args.new_tokens) for bits in (None, 8, 4)]
    for row in rows:
        if not args.tiny:
            row["estimate_weights_gib"] = round(estimate(MODEL_ID, quant=row["quant"])["weights_gib"], 2)
            row["estimate_error_pct"] = round(100 * (row["estimate_weights_gib"] - row["weights_gib"]) / row["weights_gib"], 1)
        print(json.dumps(row), flush=True)
    result = {"date": datetime.date.today().isoformat(), "model": MODEL_ID,
              "weights": "random (full shape)" if not args.tiny else "random, 2-layer tiny copy of the shape",
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                           "torchao": __import__("torchao").__version__, "python": platform.python_version()},
              "decode": f"batch 1, 64-token random prompt, {args.new_tokens} greedy tokens, best of 2 after a warm-up",
              "rows": rows}
    out = Path(os.environ.get("OUT", Path(__file__).parent / "results")) / "quantize_gpu.json"
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
