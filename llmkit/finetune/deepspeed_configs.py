"""DeepSpeed ZeRO configs for LLaMA-Factory's multi-GPU route (``deepspeed: FILE`` in the train YAML).

They follow the files LLaMA-Factory ships as ``examples/deepspeed/ds_z2_config.json`` and ``ds_z3_config.json``:
every batch size, the gradient clipping and the precision are ``"auto"`` (the Hugging Face Trainer fills them in
from the train YAML, so the two never disagree), and ZeRO-3 gathers the 16-bit weights when it saves so that the
saved adapter / model is whole. ZeRO-2 shards optimizer states and gradients; ZeRO-3 also shards the parameters
(slower, for models whose weights do not fit one GPU).
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import BadInput
from llmkit.safe_output import write_text

STAGES = (2, 3)

_COMMON = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
}

_ZERO = {
    2: {"stage": 2, "allgather_partitions": True, "allgather_bucket_size": 5e8, "overlap_comm": False,
        "reduce_scatter": True, "reduce_bucket_size": 5e8, "contiguous_gradients": True, "round_robin_gradients": True},
    3: {"stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1e9,
        "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True},
}


def zero_config(stage: int) -> dict:
    """The DeepSpeed config dict for ZeRO ``stage`` (2 or 3), as LLaMA-Factory's examples write it.

    >>> zero_config(3)["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    True
    >>> zero_config(2)["bf16"], zero_config(2)["train_micro_batch_size_per_gpu"]
    ({'enabled': 'auto'}, 'auto')
    >>> zero_config(1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    llmkit.errors.BadInput: stage must be 2 or 3 (ZeRO-2: optimizer states and gradients sharded; ...), got 1
    """
    if stage not in STAGES:
        raise BadInput(f"stage must be 2 or 3 (ZeRO-2: optimizer states and gradients sharded; ZeRO-3: parameters "
                       f"too), got {stage!r}")
    return {**json.loads(json.dumps(_COMMON)), "zero_optimization": dict(_ZERO[stage])}


def write_zero_config(stage: int, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``zero_config(stage)`` as JSON to ``path`` (refused if it exists, unless ``overwrite=True``).

    >>> write_zero_config(3, "llmkit-ds_z3_config.json", overwrite=True).name
    'llmkit-ds_z3_config.json'
    """
    path = Path(path)
    config = zero_config(stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(config, indent=2) + "\n", overwrite)
