"""``llmkit.quantize(model, bits)``: XVERSE's one-line ``model.quantize(4)``, for any loaded model, on CUDA or the CPU.

A model with its own ``quantize(bits)`` method (XVERSE's and ChatGLM's remote code) gets that method called. Every
other model gets torchao's weight-only quantization, in place: the linear layers of the decoder are stored in
8 bits (one scale per output row) or 4 bits (a scale and zero point per group of 128, or 64/32 input columns when
the layer is narrower); the embeddings, the LM head and the norms keep their dtype, as in GPTQ checkpoints and
in ``llmkit.memory``'s int8/int4 estimates. Activations stay 16-bit. The report says what was done and what it cost.

Why torchao (measured here on a 2-core CPU, torch 2.13, bf16; each library on the same 512x256 linear layer):

* torchao 0.18 (already pinned): int8 ``Int8WeightOnlyConfig`` works on CPU and CUDA, 0.49% relative output error,
  bytes 262,144 -> 133,632. int4 needs one config per device: on CUDA ``Int4WeightOnlyConfig(int4_packing_format=
  "tile_packed_to_4d")`` (tinygemm kernel, bf16 weights only; the default "plain" format needs the ``mslk``
  package); on the CPU ``PrototypeInt4WeightOnlyConfig`` (the same tinygemm layout for
  ``_weight_int4pack_mm_for_cpu``, still under ``torchao.prototype``): 6.2% error, 262,144 -> 81,920 bytes
  (group 32). ``IntxWeightOnlyConfig(weight_dtype=torch.int4)`` runs everywhere but stores each 4-bit value in a
  byte: 143,360 bytes, more than int8. On CUDA, tinygemm pads each layer's input width to a multiple of 1024:
  XVERSE-7B's 11008 becomes 11264 (+2%), but the stand-in's 64-wide layers grow, so there its int4 copy is larger.
* bitsandbytes 0.50 (not installed; a 125 MB download): int8 0.49% and nf4 8.9% error on the CPU too, packed to 4
  bits, but only through swapping modules (transformers does it while loading, with ``BitsAndBytesConfig``).
* optimum-quanto: not measured; torchao already covers both devices without a new package.

Measured on an H100 (``benchmarks/quantize_gpu.py`` -> ``benchmarks/results/quantize_gpu_h100.json``; torch 2.11,
transformers 5.23, torchao 0.18) with a random full-shape XVERSE-7B through the Llama route: weights 13.60 GiB bf16
-> 7.57 GiB int8 -> 4.76 GiB int4 (``llmkit.estimate``: 13.60 / 7.71 / 4.67); batch-1 decode with ``GraphDecoder``
118.8 / 37.9 / 176.8 tok/s (torchao's int8 weight-only matmul is slow uncompiled; tinygemm int4 is fast).

So torchao: no new dependency, ``quantize_(model, config)`` quantizes a model already in memory, and it counts its
own bytes (``torchao.utils.get_model_size_in_bytes``).

(The module is ``quantization``, not ``quantize``, for the reason ``load`` lives in ``loading``: importing a submodule
named like the function would rebind ``llmkit.quantize`` to the module.)

>>> report = quantize(model, bits=8, tokenizer=tokenizer)  # doctest: +SKIP
>>> report.bytes_after < report.bytes_before, report.answers_agreeing == report.answers_total  # doctest: +SKIP
(True, True)
"""

from __future__ import annotations

import dataclasses
import gc
import math
import sys
from dataclasses import dataclass

import torch

from llmkit.chat import generate_reply
from llmkit.errors import BadInput
from llmkit.data import load_qa_pairs

BITS = (4, 8)
INT4_GROUP_SIZES = (128, 64, 32)  # tinygemm's group sizes, largest (fewest scales) first
ANSWER_TOKENS = 48


@dataclass
class QuantizeReport:
    """What ``quantize`` did and what it cost; the perplexity and answer fields are None without a tokenizer.

    ``bytes_*`` count parameters and buffers (packed tensors by their parts); ``library_bytes_after`` is torchao's
    own count. Perplexity is over the course's 15 bilingual Q&A conversations (``qa_pairs.json``) in the model's
    chat format; ``answers_agreeing`` counts greedy answers to their questions equal to the unquantized model's.

    >>> QuantizeReport("torchao", 8, "all", 200, 100, 100, None, None, None, None).shrink
    0.5
    """

    method: str
    bits: int
    quantized: str
    bytes_before: int
    bytes_after: int
    library_bytes_after: int | None
    perplexity_before: float | None
    perplexity_after: float | None
    answers_agreeing: int | None
    answers_total: int | None

    @property
    def shrink(self) -> float:
        """Memory after / before."""
        return self.bytes_after / self.bytes_before


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; a packed (tensor-subclass) weight counts the tensors it is made of.

    >>> tensor_bytes(torch.zeros(4, 8, dtype=torch.bfloat16))
    64
    """
    if hasattr(tensor, "__tensor_flatten__"):
        return sum(tensor_bytes(getattr(tensor, name)) for name in tensor.__tensor_flatten__()[0])
    return tensor.numel() * tensor.element_size()


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared weights counted once).

    >>> model_bytes(torch.nn.Linear(8, 4, bias=False))
    128
    """
    return sum(tensor_bytes(t) for t in [*model.parameters(), *model.buffers()])


def already_quantized(model: torch.nn.Module) -> str | None:
    """Why the model is already quantized (a checkpoint's quantization_config, or torchao weights), else None.

    >>> already_quantized(torch.nn.Linear(8, 4)) is None
    True
    """
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        return f"it was loaded from a {getattr(method, 'value', method)}-quantized checkpoint"
    from torchao.utils import TorchAOBaseTensor

    if any(isinstance(p, TorchAOBaseTensor) for p in model.parameters()):
        return "its weights are torchao-quantized already"
    return None


def decoder_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The linear layers torchao quantizes: every ``nn.Linear`` except the LM head.

    >>> len(decoder_linears(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())))
    1
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


def int4_group_size(linears: list[torch.nn.Linear]) -> int:
    """The largest tinygemm group size that divides every layer's input width.

    >>> int4_group_size([torch.nn.Linear(64, 8), torch.nn.Linear(256, 64)])
    64
    """
    for size in INT4_GROUP_SIZES:
        if all(linear.in_features % size == 0 for linear in linears):
            return size
    raise BadInput(f"4-bit needs layer input widths divisible by {INT4_GROUP_SIZES[-1]}; use bits=8")


def torchao_config(bits: int, linears: list[torch.nn.Linear], cuda: bool):
    """The torchao config for ``bits`` on this device, and a one-line description of it.

    >>> torchao_config(8, [], cuda=False)[1]
    'torchao Int8WeightOnlyConfig (int8, one scale per output row)'
    """
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

    if bits == 8:
        return Int8WeightOnlyConfig(), "torchao Int8WeightOnlyConfig (int8, one scale per output row)"
    group = int4_group_size(linears)
    if cuda:
        if any(linear.weight.dtype != torch.bfloat16 for linear in linears):
            raise BadInput("4-bit on CUDA uses torchao's tinygemm kernel, which needs bf16 weights: "
                           "load the model with dtype=torch.bfloat16")
        config = Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d")
        return config, f"torchao Int4WeightOnlyConfig (int4, group {group}, tinygemm tile_packed_to_4d, CUDA)"
    return (PrototypeInt4WeightOnlyConfig(group_size=group),
            f"torchao PrototypeInt4WeightOnlyConfig (int4, group {group}, tinygemm layout for the CPU)")


def eval_conversations() -> list[list[dict]]:
    """The course's 15 bilingual Q&A conversations, each ending with its reference answer.

    >>> eval_conversations()[0][-1]
    {'role': 'assistant', 'content': '你好！我是 llmkit 的小测试模型。'}
    """
    return [qa["messages"] + [{"role": "assistant", "content": qa["answer"]}] for qa in load_qa_pairs()]


@torch.no_grad()
def perplexity(model, tokenizer, conversations: list[list[dict]]) -> float:
    """exp(mean next-token loss) over every token of the conversations in the model's chat format.

    >>> perplexity(model, tokenizer, eval_conversations())  # doctest: +SKIP
    1.9
    """
    total_loss, total_tokens = 0.0, 0
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
        ids = ids.to(model.device)
        predicted = ids.shape[1] - 1
        total_loss += model(input_ids=ids, labels=ids).loss.item() * predicted
        total_tokens += predicted
    return math.exp(total_loss / total_tokens)


def greedy_answers(model, tokenizer, conversations: list[list[dict]]) -> list[str]:
    """The model's greedy replies to each conversation without its last (assistant) message.

    >>> greedy_answers(model, tokenizer, eval_conversations()[:1])  # doctest: +SKIP
    ['你好！我是 llmkit 的小测试模型。']
    """
    return [generate_reply(model, tokenizer, messages[:-1], max_new_tokens=ANSWER_TOKENS, do_sample=False)
            for messages in conversations]


def quality(model, tokenizer, conversations: list[list[dict]]) -> tuple[float | None, list[str]]:
    """Perplexity and greedy answers on ``conversations``; (None, []) when there are none.

    >>> quality(torch.nn.Linear(8, 8), None, [])
    (None, [])
    """
    if not conversations:
        return None, []
    return perplexity(model, tokenizer, conversations), greedy_answers(model, tokenizer, conversations)


def config_call(config) -> str:
    """A torchao config as Python a learner could type: its class with the arguments that differ from the defaults.

    >>> config_call(torchao_config(4, [torch.nn.Linear(4096, 4096, dtype=torch.bfloat16)], cuda=True)[0])
    "Int4WeightOnlyConfig(int4_packing_format='tile_packed_to_4d')"
    """
    changed = [f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)
               if getattr(config, f.name) != f.default]
    return f"{type(config).__name__}({', '.join(changed)})"


def apply_torchao(model: torch.nn.Module, config, linears: list[torch.nn.Linear]) -> int:
    """Quantize ``linears`` of ``model`` in place with a torchao config; returns torchao's count of the model's bytes.

    >>> layer = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False))
    >>> apply_torchao(layer, torchao_config(8, list(layer), cuda=False)[0], list(layer))  # 4,096 int8 + per-row parts
    4416
    """
    from torchao.quantization import quantize_
    from torchao.utils import get_model_size_in_bytes

    chosen = set(linears)
    print(f"[llmkit] torchao.quantization.quantize_(model, {config_call(config)}, "
          f"filter_fn=<the decoder's {len(chosen)} nn.Linear layers>)", file=sys.stderr)
    quantize_(model, config, filter_fn=lambda module, _name: module in chosen)
    gc.collect()  # the replaced 16-bit weights wait for the cycle collector (H200, 7B int4: 2.3 GiB until then)
    torch.cuda.empty_cache()  # and hand them back, so the next llmkit.load sees the memory as free
    return get_model_size_in_bytes(model)


def quantize(model, bits: int = 4, tokenizer=None) -> QuantizeReport:
    """Quantize ``model``'s weights to ``bits`` (4 or 8) in place and report memory, perplexity and answers.

    The model's own ``quantize(bits)`` is used when it has one (XVERSE's remote code); otherwise torchao (module
    docstring). With a ``tokenizer`` the report also compares perplexity and greedy answers before and after.
    Raises ``BadInput`` for other ``bits`` and for models that are quantized already (GPTQ, torchao).

    >>> model, tokenizer = llmkit.load(llmkit.pick_model("xverse/XVERSE-7B-Chat"))  # doctest: +SKIP
    >>> quantize(model, bits=4, tokenizer=tokenizer).method  # doctest: +SKIP
    'torchao PrototypeInt4WeightOnlyConfig (int4, group 64, tinygemm layout for the CPU)'
    >>> quantize(torch.nn.Linear(8, 8), bits=3)
    Traceback (most recent call last):
    ...
    llmkit.errors.BadInput: bits=3: choose 4 or 8
    """
    if bits not in BITS:
        raise BadInput(f"bits={bits}: choose 4 or 8")
    reason = already_quantized(model)
    if reason:
        raise BadInput(f"the model is quantized already: {reason}. Quantize the unquantized checkpoint instead")
    own_quantize = getattr(model, "quantize", None)
    if callable(own_quantize):
        method, quantized = f"the model's own quantize({bits})", "decided by the model's own code"
    else:
        linears = decoder_linears(model)
        if not linears:
            raise BadInput(f"{type(model).__name__} has no nn.Linear layers for torchao to quantize")
        config, method = torchao_config(bits, linears, cuda=linears[0].weight.is_cuda)
        quantized = f"{len(linears)} linear layers of the decoder; embeddings, LM head and norms unchanged"

    conversations = eval_conversations() if tokenizer is not None else []
    ppl_before, answers_before = quality(model, tokenizer, conversations)
    bytes_before = model_bytes(model)
    if callable(own_quantize):
        print(f"[llmkit] {type(model).__name__} has its own quantize(): calling model.quantize({bits})")
        model, library_bytes = own_quantize(bits) or model, None
    else:
        library_bytes = apply_torchao(model, config, linears)
    ppl_after, answers_after = quality(model, tokenizer, conversations)
    return QuantizeReport(
        method=method, bits=bits, quantized=quantized, bytes_before=bytes_before, bytes_after=model_bytes(model),
        library_bytes_after=library_bytes, perplexity_before=ppl_before, perplexity_after=ppl_after,
        answers_agreeing=sum(a == b for a, b in zip(answers_before, answers_after)) if conversations else None,
        answers_total=len(conversations) or None,
    )
