"""Plumbing around supervised fine-tuning with transformers + peft (notebook 06 shows the library calls).

- ``tokenize_alpaca``: chat-template formatting with the loss masked on the prompt (labels -100), cut to a length;
- ``prepare_output_dir``: never train over an existing folder unless asked; resume from its last complete
  checkpoint (``last_complete_checkpoint`` skips one whose save was interrupted);
- ``plot_losses``: training and validation loss curves from ``trainer.state.log_history``;
- ``refuse_quantized_merge`` and ``save_model``: merging LoRA into a GPTQ base is refused with the reason, and a
  merged model is written to a temporary folder first and swapped in when complete (``llmkit.safe_output``).
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path

from llmkit.chat import IGNORE_INDEX as IGNORE_INDEX  # re-exported: the label value notebook 06 shows
from llmkit.chat import encode_example
from llmkit.errors import BadInput
from llmkit.finetune.sft_data import alpaca_messages
from llmkit.safe_output import atomic_output, refusal, remove


def tokenized_rows(records: list[dict], tokenizer, cutoff_len: int = 1024) -> list[dict]:
    """``input_ids`` / ``attention_mask`` / ``labels`` of each alpaca record, cut at ``cutoff_len`` tokens: a plain
    list that ``transformers.Trainer`` takes as its dataset (``tokenize_alpaca`` wraps it in ``datasets``).

    >>> from llmkit.standins.tokenizer import build_qwen2_tokenizer
    >>> row = tokenized_rows([{"instruction": "你是谁？", "output": "我是小K。"}], build_qwen2_tokenizer())[0]
    >>> sorted(row), row["labels"][0]
    (['attention_mask', 'input_ids', 'labels'], -100)
    """
    rows = []
    for record in records:
        ids, labels = encode_example(tokenizer, alpaca_messages(record)[:-1], record["output"])
        rows.append({"input_ids": ids[:cutoff_len], "attention_mask": [1] * len(ids[:cutoff_len]),
                     "labels": labels[:cutoff_len]})
    return rows


def tokenize_alpaca(records: list[dict], tokenizer, cutoff_len: int = 1024):
    """A ``datasets.Dataset`` of ``input_ids`` / ``attention_mask`` / ``labels`` for ``transformers.Trainer``.

    Records longer than ``cutoff_len`` tokens are cut there (``llmkit.finetune.sft_data.check_dataset`` reports them first).

    >>> ds = tokenize_alpaca([{"instruction": "你是谁？", "output": "我是小K。"}], tokenizer)  # doctest: +SKIP
    >>> ds[0]["labels"][0]  # doctest: +SKIP
    -100
    """
    from datasets import Dataset

    return Dataset.from_list(tokenized_rows(records, tokenizer, cutoff_len))


def prepare_output_dir(path: str | Path, overwrite: bool = False) -> str | None:
    """Make ``path`` ready for ``Trainer``; returns the last complete checkpoint to resume from, or None (fresh start).

    A folder with checkpoints is resumed from (a killed run loses at most one ``save_steps`` interval; a checkpoint
    whose save was interrupted is skipped with a warning; with none complete, training starts afresh). Any other
    non-empty folder (or a file) is refused unless ``overwrite=True``, which deletes it first.

    >>> prepare_output_dir("lora-out", overwrite=True) is None
    True
    """
    path = Path(path)
    if overwrite:
        remove(path)
    if path.is_dir() and any(path.glob("checkpoint-*")):
        return last_complete_checkpoint(path)
    if path.is_file() or path.is_dir() and any(path.iterdir()):
        state = "is a file" if path.is_file() else "holds files but no checkpoint-* to resume from"
        raise BadInput(refusal(path, state=state))
    path.mkdir(parents=True, exist_ok=True)
    return None


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was written completely, or None; others are warned about.

    ``transformers.trainer_utils.get_last_checkpoint`` takes the highest N even when the run was killed while
    saving it, and resuming from it then fails or starts from a broken state.

    >>> last_complete_checkpoint("/tmp/llmkit-no-run-here") is None
    True
    """
    found = [(_CHECKPOINT.match(p.name), p) for p in Path(folder).glob("checkpoint-*") if p.is_dir()]
    steps = {int(match.group(1)): p for match, p in found if match}
    for step in sorted(steps, reverse=True):
        problem = checkpoint_problem(steps[step])
        if problem is None:
            return str(steps[step])
        warnings.warn(f"skipped {steps[step]}: {problem}, so its save was interrupted; resuming from the newest "
                      "complete checkpoint before it (the trainer rewrites this one when it gets there)", stacklevel=2)
    return None


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """What is missing or cut short in a ``Trainer`` checkpoint folder, or None when it is complete.

    ``Trainer`` writes ``trainer_state.json`` last; weights (safetensors) and optimizer, scheduler and RNG states
    (``torch.save`` zip files) must be readable to their end.

    >>> checkpoint_problem("/tmp")
    'no trainer_state.json'
    """
    from llmkit.hub import safetensors_problem

    checkpoint = Path(checkpoint)
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except ValueError:
        return "trainer_state.json is cut short"
    for file in sorted(checkpoint.glob("*.safetensors")):
        if safetensors_problem(file):  # the same header-and-size check locate uses on downloads
            return f"{file.name} is cut short"
    for file in sorted([*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth"), *checkpoint.glob("*.bin")]):
        if not zipfile.is_zipfile(file):
            return f"{file.name} is cut short"
    return None


def plot_losses(log_history: list[dict], ax=None):
    """Training loss per logged step and validation loss per evaluation, from ``trainer.state.log_history``.

    >>> plot_losses([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0, "eval_loss": 1.5}])  # doctest: +ELLIPSIS
    <Axes: ...>
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.2))[1]
    for key, label in (("loss", "training"), ("eval_loss", "validation")):
        points = [(row["step"], row[key]) for row in log_history if key in row]
        if points:
            ax.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return ax


def refuse_quantized_merge(config) -> None:
    """Refuse to merge a LoRA adapter into a GPTQ (or other pre-quantized) base, saying what works instead.

    >>> from transformers import AutoConfig
    >>> refuse_quantized_merge(AutoConfig.for_model("qwen2"))
    """
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
    raise BadInput(
        f"the base model is {method}-quantized: its weights are packed integers, so the LoRA update cannot be added "
        "to them (peft cannot merge into a GPTQ layer, and dequantize-then-merge loses the GPTQ calibration). "
        "Merge the adapter into the bf16 base model, then quantize the merged model (GPTQ with gptqmodel, or "
        "llmkit.quantize); or keep the adapter separate and load it on the quantized base with PeftModel.")


def save_model(model, tokenizer, out_dir: str | Path, overwrite: bool = False, max_shard_size: str = "2GB") -> Path:
    """``save_pretrained`` (safetensors shards) of model and tokenizer into a temporary folder beside
    ``out_dir``, swapped in only when everything is written: a full disk or a kill never leaves a half-written
    model where a complete one is expected. An existing ``out_dir`` is replaced only if asked, and it survives a
    failed save; a full disk raises ``LlmkitError`` saying how much room is left.

    >>> save_model(merged, tokenizer, "/tmp/merged")  # doctest: +SKIP
    PosixPath('/tmp/merged')
    """
    with atomic_output(out_dir, overwrite) as partial:
        model.save_pretrained(partial, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(partial)
    return Path(out_dir)
