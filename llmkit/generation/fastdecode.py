"""Greedy decoding with transformers' ``StaticCache`` and one CUDA graph per decode step.

Why this exists: plain ``generate`` launches every kernel of every layer from Python for each new token, so at
batch 1 a GPU spends most of its time waiting (measured on an H100: 17 % of the memory-bandwidth limit for
Qwen2-7B, 15 % for Qwen2-72B GPTQ-Int4). transformers' own remedies do not reach GPTQ models here:
``cache_implementation="static"`` compiles with ``torch.compile``, which cannot trace gptqmodel's Marlin ops
(no fake-tensor kernels); continuous batching captures CUDA graphs, but without flash-attn it pads every decode
step to 64 query tokens and a 16k-token mask (7.1 tok/s on the 72B, slower than plain ``generate``).
A CUDA graph captured with PyTorch's ``torch.cuda.graph`` records whatever kernels run, custom ones included,
and replays the whole step with one launch. The model, cache and attention stay the stock transformers ones.

On the CPU (no graphs) the same steps run eagerly, which is how CI checks the tokens against ``generate``.
"""

from __future__ import annotations

import copy
import itertools
import time
import weakref

import torch
from transformers import StaticCache

from llmkit.generation import grouped_attention


def _prefill_mask(attention_mask: torch.Tensor, max_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive [batch, 1, prompt, max_len] mask (0 = attend, dtype's minimum = hidden): causal, hiding left
    padding; each row sees at least itself (no NaN in the cache). A 4-D mask is used as-is by every model
    (``masking_utils``) and works for SDPA and eager attention alike."""
    batch, prompt = attention_mask.shape
    keys = torch.arange(max_len, device=attention_mask.device)
    queries = torch.arange(prompt, device=attention_mask.device)
    valid = torch.zeros(batch, max_len, dtype=torch.bool, device=attention_mask.device)
    valid[:, :prompt] = attention_mask.bool()
    allowed = (keys[None, :] <= queries[:, None])[None] & valid[:, None, :]
    allowed |= keys[None, None, :] == queries[None, :, None]
    hidden = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=attention_mask.device)
    return hidden.masked_fill(allowed, 0.0)[:, None]


class GraphDecoder:
    """Greedy decoding of a fixed batch size and length budget, reusing one captured decode step across calls.

    ``max_len`` bounds prompt + new tokens. The first ``generate`` captures the step (on CUDA); later calls of
    the same batch size reuse it, as a server would. ``timings`` holds the last call's prefill / capture / decode
    seconds. ``compile_small_ops=True`` additionally runs the step through ``torch.compile`` with the quantized
    linear layers left out (their custom kernels cannot be traced): norms, rotary and residual adds fuse;
    ``compile_mode`` is passed to ``torch.compile`` ("max-autotune-no-cudagraphs" also tunes the matrix products).
    A compiled step also attends with the query heads grouped by key/value head
    (``llmkit.generation.grouped_attention``; a model on SDPA attention with fewer key/value heads than query heads,
    as Qwen2): traced, transformers' SDPA attention would copy every key and value head once per query head, and on an
    H100 the 25-row step of Qwen2-7B took 8.86 ms that way and 6.58 ms grouped (``decode_profile_grouped_h100.json``).
    On a CUDA GPU with Triton that attention runs ``llmkit.generation.triton_decode``'s kernel (``hf-fast`` on an H100:
    3916.5 tok/s on 25 prompts and a first start of 29.83 s on a fresh machine, ``bench_seed_merge_h100.json``; 173.0
    tok/s at batch 1, ``bench_batch1_merge_h100.json``; a start of 6.82 s with inductor's cache warm,
    ``bench_seed_hf_fast_vllm_custom_op_h100.json``).
    The step is compiled for this decoder's fixed shapes (``dynamic=False``): without it, a second decoder of another
    batch size or length in the same process made torch.compile's automatic dynamic shapes recompile the step with a
    symbolic batch and length (kernels not specialised to the sizes; ``decode_fast_h100.json``'s 25-prompt rows were
    compiled that way, after batch 1 in the same process).
    ``fuse_projections=True`` computes each attention layer's q, k and v projections as one matrix product, and
    each MLP's gate and up projections as another (fewer, larger products; the profile in
    ``benchmarks/results/decode_profile_h200.json`` found the three separate q/k/v products at about a third of the
    bandwidth the MLP's reach; on an H200 the compiled batch-1 step took 5.69 ms unfused and 4.85 ms with both:
    ``decode_profile_fused_h200.json``); the weights are not copied: the layers' weights become views of one fused
    tensor. A model whose forward calls the projections in another order stops with an error. gptqmodel's GPTQ
    Marlin layers fuse the same way (packed weights, scales and bias side by side), for layers a multiple of 64
    columns wide without act-order: Qwen2-72B-Instruct-GPTQ-Int4's batch-1 compiled step took 22.71 ms with its 560
    Marlin products per step and 19.15 ms with 320 (H100, the fused product equal to the separate layers':
    ``benchmarks/results/decode_profile_marlin_72b_h100.json``).
    ``capture_prefill=True`` (on CUDA) also captures the prompt's forward pass, once per prompt shape, and replays it
    in later calls of that shape: for workloads that repeat a shape (benchmarks, a server with fixed-size buckets);
    eager, a prefill launches every kernel from Python (44.6 ms for 64 tokens of a 7B model on an H200 in
    ``decode_profile_h200.json``: 3.5 % of a 256-token batch-1 answer at 4.85 ms per step). Each shape keeps a graph
    and its activations. ``compile_prefill=True`` (with ``compile_small_ops``) sends the prompt's forward pass
    through the compiled model too, at the cost of a compile per prompt shape: for a server that keeps its shapes
    (H100, Qwen2-7B, 25 prompts of 64 tokens: prefill 54.7 ms eager, 41.4 ms compiled; the first call 22.1 s without,
    41.1 s with it: ``decode_profile_prefill_h100.json``). Quantized layers and the fused projections get their own
    ``forward`` and layers back when the decoder is closed (``close()``, the end of a ``with`` block, or when it is
    garbage-collected); the model is left as it was.

    >>> decoder = GraphDecoder(model, batch_size=1, max_len=128)  # doctest: +SKIP
    >>> decoder.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=8).shape  # doctest: +SKIP
    torch.Size([1, 8])
    """

    def __init__(self, model, batch_size: int, max_len: int, cuda_graph: bool | None = None,
                 compile_small_ops: bool = False, compile_mode: str = "default", fuse_projections: bool = False,
                 capture_prefill: bool = False, compile_prefill: bool = False):
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.cuda_graph = model.device.type == "cuda" if cuda_graph is None else cuda_graph
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        device = model.device
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.step_mask = torch.zeros(batch_size, 1, 1, max_len, dtype=model.dtype, device=device)
        # where the step writes: the cache slot of its input token, and the column of its output in ``generated``
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        self.generated = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        # fused first: a fused Marlin product then goes behind the opaque op like the other quantized layers
        fused = _fuse_projections(model) if fuse_projections else []
        patched = _put_quantized_behind_op(model) if compile_small_ops else []
        attention = _group_query_heads(model) if compile_small_ops else None
        self.forward = torch.compile(model, mode=compile_mode, dynamic=False) if compile_small_ops else model
        self._restore = weakref.finalize(self, _restore_model, model, patched, fused, attention)
        self.graph, self.timings = None, {}
        self.capture_prefill, self.prefill_graphs = capture_prefill, {}  # prompt shape: (graph, inputs, logits)
        self.compile_prefill = compile_prefill and compile_small_ops

    def close(self) -> None:
        """Give the model its own layers and ``forward`` back and drop the captured step; decode no more."""
        self._restore()
        self.graph = self.forward = None
        self.prefill_graphs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _step(self) -> None:
        """One decode step and its bookkeeping, all on the device (so all inside the captured graph): the next
        token goes to ``generated`` and becomes the next input, the position moves on and the next cache slot is
        unmasked. A replay is then the whole step: no kernels launched between replays."""
        out = self.forward(input_ids=self.token, position_ids=self.position,
                           attention_mask=self.step_mask, past_key_values=self.cache,
                           use_cache=True, logits_to_keep=1).logits
        next_token = out[:, -1].argmax(-1, keepdim=True)
        self.generated.index_copy_(1, self.column, next_token)
        self.column += 1
        self.token.copy_(next_token)
        self.position += 1
        self.slot += 1
        self.step_mask.index_fill_(-1, self.slot, 0.0)

    def _prefill_forward(self, input_ids, positions, mask) -> torch.Tensor:
        forward = self.forward if self.compile_prefill else self.model
        return forward(input_ids=input_ids, position_ids=positions, attention_mask=mask,
                       past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def _prefill(self, input_ids, positions, mask) -> torch.Tensor:
        """The last prompt position's logits, filling the (reset) cache; replayed from a graph with ``capture_prefill``."""
        if not (self.cuda_graph and self.capture_prefill):
            return self._prefill_forward(input_ids, positions, mask)
        shape = tuple(input_ids.shape)
        if shape not in self.prefill_graphs:
            inputs = (input_ids.clone(), positions.clone(), mask.clone())
            graph, logits = _graph_of(lambda: self._prefill_forward(*inputs), self.cache.reset)
            self.prefill_graphs[shape] = graph, inputs, logits
        graph, inputs, logits = self.prefill_graphs[shape]
        for buffer, value in zip(inputs, (input_ids, positions, mask)):
            buffer.copy_(value)
        self.cache.reset()
        graph.replay()
        return logits

    def _capture(self) -> None:
        state = [layer.cumulative_length for layer in self.cache.layers]
        state += [self.token, self.position, self.step_mask, self.slot, self.column]
        saved = [tensor.clone() for tensor in state]

        def restore():
            for tensor, value in zip(state, saved):
                tensor.copy_(value)

        self.graph, _ = _graph_of(self._step, restore)

    def _clock(self, name: str, start: float) -> float:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.timings[name] = round(now - start, 4)
        return now

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 128) -> torch.Tensor:
        """Exactly ``max_new_tokens`` greedy tokens per row ([batch, max_new_tokens]); prompts left-padded."""
        device = self.model.device
        input_ids = input_ids.to(device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        batch, prompt = input_ids.shape
        if batch != self.batch_size or prompt + max_new_tokens > self.max_len:
            raise ValueError(f"this decoder holds {self.batch_size} rows of at most {self.max_len} tokens; got {batch} "
                             f"rows of {prompt} + {max_new_tokens}: make a GraphDecoder of that size")
        start, self.timings = time.perf_counter(), {}
        self.cache.reset()
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # real tokens only, as generate counts
        mask = _prefill_mask(attention_mask, self.max_len, self.model.dtype)
        self.token.copy_(self._prefill(input_ids, positions, mask).argmax(-1, keepdim=True))
        self.generated[:, :1] = self.token
        self.column.fill_(1)
        self.position.copy_(positions[:, -1:] + 1)
        self.step_mask.copy_(mask[:, :, -1:])
        self.slot.fill_(prompt)
        self.step_mask[..., prompt] = 0.0
        start = self._clock("prefill_s", start)
        if self.cuda_graph and self.graph is None and max_new_tokens > 1:
            self._capture()
            start = self._clock("capture_s", start)
        for _ in range(1, max_new_tokens):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        self._clock("decode_s", start)
        return self.generated[:, :max_new_tokens].clone()


def _graph_of(step, restore) -> tuple[torch.cuda.CUDAGraph, torch.Tensor | None]:
    """``step()`` captured as a CUDA graph, and its output tensor if any (refilled by each replay). Two warm-up runs on
    a side stream come first (lazy initialisations such as the cache's, autotuning, compilation), each followed by
    ``restore()`` so that the cache is left as it was."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
            restore()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


_QUANTIZED: dict[int, torch.nn.Module] = {}  # gptqmodel layers behind the opaque op below, while a decoder uses them
_KEYS = itertools.count()


@torch.library.custom_op("llmkit::quantized_linear", mutates_args=())
def _quantized_linear(x: torch.Tensor, index: int) -> torch.Tensor:
    return _QUANTIZED[index].llmkit_eager_forward(x)


@_quantized_linear.register_fake
def _quantized_linear_shape(x: torch.Tensor, index: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], _QUANTIZED[index].out_features)


def _put_quantized_behind_op(model) -> list[torch.nn.Module]:
    """Route each gptqmodel layer's ``forward`` through the opaque custom op (run eagerly inside), so that
    ``torch.compile`` traces the rest as one graph and inductor fuses norms, rotary and residual adds between the
    GEMMs. Layers already routed by another live decoder are shared (counted); returns the layers to restore."""
    patched = [m for m in model.modules() if type(m).__module__.startswith("gptqmodel.")]
    for module in patched:
        if not hasattr(module, "llmkit_eager_forward"):
            key = next(_KEYS)
            _QUANTIZED[key] = module
            module.llmkit_eager_forward, module.llmkit_op_key, module.llmkit_op_users = module.forward, key, 0
            module.forward = lambda x, index=key: _quantized_linear(x, index)
        module.llmkit_op_users += 1
    return patched


def _restore_quantized(patched: list[torch.nn.Module]) -> None:
    """Undo ``_put_quantized_behind_op`` for the layers no other live decoder still uses."""
    for module in patched:
        module.llmkit_op_users -= 1
        if module.llmkit_op_users == 0:
            del _QUANTIZED[module.llmkit_op_key]
            del module.forward, module.llmkit_eager_forward, module.llmkit_op_key, module.llmkit_op_users
    patched.clear()


# Projections that read the same input, in the order transformers' attention and MLP forwards call them (Qwen2,
# Llama and their kin): fused, the first layer's place computes all of them and the others hand out their slices.
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# The tensors a fused group concatenates along the layers' output dimension (which dimension that is), by layer type:
# plain linear layers, and gptqmodel's GPTQ Marlin layers, whose packed weights, scales and bias keep each 64-column
# block of the output together (Marlin's 16 x 64 tiles; scales and bias permuted within 64 and 32 columns), so that
# layers 64 columns wide or a multiple of it concatenate as they are (Qwen2-72B: 8192, 1024, 29696).
_OUTPUT_DIMS = {"Linear": {"weight": 0, "bias": 0}, "MarlinLinear": {"qweight": -1, "scales": -1, "bias": -1}}


def _kind(layer) -> str | None:
    """The ``_OUTPUT_DIMS`` key of a layer a group can fuse; None for any other (LoRA-wrapped, other kernels)."""
    if type(layer) is torch.nn.Linear:
        return "Linear"
    if type(layer).__name__ == "MarlinLinear" and type(layer).__module__.startswith("gptqmodel."):
        return "MarlinLinear"
    return None


class _ConcatenatedLinear(torch.nn.Module):
    """Plain linear layers' weights (and biases) side by side, as plain tensors: ``parameters()`` counts the layers'
    own views of them once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def _concatenated(layers: list[torch.nn.Module]) -> torch.nn.Module:
    """One layer computing every layer's output side by side; the layers' own tensors become views of its tensors
    (nothing is copied twice)."""
    first, wholes = layers[0], {}
    for name, dim in _OUTPUT_DIMS[_kind(first)].items():
        parts = [getattr(layer, name) for layer in layers]
        if parts[0] is None:
            continue
        wholes[name] = torch.cat([part.detach() for part in parts], dim=dim)
        for part, view in zip(parts, wholes[name].split([part.shape[dim] for part in parts], dim=dim)):
            part.data = view
    if _kind(first) == "Linear":
        return _ConcatenatedLinear(wholes["weight"], wholes.get("bias"))
    product = copy.copy(first)  # Marlin: the same kernel settings and workspace, with the concatenated tensors
    product._parameters, product._buffers = dict(first._parameters), dict(first._buffers)
    for name, whole in wholes.items():
        setattr(product, name, torch.nn.Parameter(whole, requires_grad=False) if name in first._parameters else whole)
    product.out_features = sum(layer.out_features for layer in layers)
    return product


class _FusedLinear(torch.nn.Module):
    """Sits in the first projection's place (``q_proj``, ``gate_proj``): one product for the whole group;
    ``_FusedPart`` in the other places hands out the other slices of the same product."""

    def __init__(self, layers: list[torch.nn.Module], names: tuple[str, ...]):
        super().__init__()
        self.originals = torch.nn.ModuleList(layers)  # still in the module tree: parameters() counts them
        self.names, self.users, self.rest, self.input = names, 1, (), None
        self.sizes = [layer.out_features for layer in layers]
        self.product = _concatenated(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input = x
        first, *self.rest = self.product(x).split(self.sizes, dim=-1)
        return first

    def unfused(self) -> tuple[torch.nn.Module, ...]:
        """The layers, each with tensors of its own again."""
        for layer in self.originals:
            for name in _OUTPUT_DIMS[_kind(layer)]:
                tensor = getattr(layer, name)
                if tensor is not None:
                    tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
        return tuple(self.originals)


class _FusedPart(torch.nn.Module):
    def __init__(self, fused: _FusedLinear, index: int):
        super().__init__()
        self.source, self.index = [fused], index  # a list: not registered as a submodule twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.source[0]
        if x is not fused.input:  # a model that calls the projections in another order, or on other inputs
            raise RuntimeError(f"{fused.names[self.index + 1]} did not follow {fused.names[0]} on the same input: "
                               f"this model's forward does not call {', '.join(fused.names)} in the order that "
                               "GraphDecoder(fuse_projections=True) needs; use fuse_projections=False")
        return fused.rest[self.index]


def _fusable(module, names: tuple[str, ...]) -> bool:
    layers = [getattr(module, name, None) for name in names]
    kind = _kind(layers[0])
    if kind is None:
        return False
    if any(type(layer) is not type(layers[0]) for layer in layers) or len({layer.bias is None for layer in layers}) != 1:
        return False
    if kind == "Linear":
        weights = [layer.weight for layer in layers]
        return len({(w.device, w.dtype, w.shape[1]) for w in weights}) == 1 and weights[0].device.type != "meta"
    return (not any(hasattr(layer, "llmkit_op_key") for layer in layers)  # behind another decoder's op: left alone
            and len({(layer.in_features, layer.bits, layer.group_size, layer.qweight.device, layer.scales.dtype)
                     for layer in layers}) == 1
            and all(layer.out_features % 64 == 0 and layer._marlin_tile_padding is None and layer.adapter is None
                    and layer.g_idx.numel() == 0 for layer in layers))  # act-order layers sort their inputs apart


def _fuse_projections(model) -> list[tuple[torch.nn.Module, tuple[str, ...]]]:
    """Put ``_FusedLinear`` in every attention (q/k/v) and MLP (gate/up) whose projections are plain linear layers on
    one device or GPTQ Marlin layers of one setting; groups already fused by another live decoder are shared
    (counted); returns the groups to restore."""
    groups = []
    for module in model.modules():
        for names in FUSED_GROUPS:
            first = getattr(module, names[0], None)
            if isinstance(first, _FusedLinear):
                first.users += 1
            elif _fusable(module, names):
                fused = _FusedLinear([getattr(module, name) for name in names], names)
                for index, name in enumerate(names):
                    setattr(module, name, _FusedPart(fused, index - 1) if index else fused)
            else:
                continue
            groups.append((module, names))
    return groups


def _group_query_heads(model) -> str | None:
    """Switch a model on SDPA attention with grouped key/value heads to ``grouped_attention.GROUPED_SDPA``; returns
    the implementation to restore (None: left unchanged, e.g. eager attention or as many key/value as query heads)."""
    config = model.config
    if config._attn_implementation != "sdpa" or getattr(config, "num_key_value_heads", None) in (
            None, config.num_attention_heads):
        return None
    model.set_attn_implementation(grouped_attention.register())
    return "sdpa"


def _restore_model(model, patched: list[torch.nn.Module], fused: list[tuple[torch.nn.Module, tuple[str, ...]]],
                   attention: str | None) -> None:
    """Undo ``_put_quantized_behind_op``, ``_fuse_projections`` (for the layers no other live decoder still uses) and
    ``_group_query_heads``."""
    if attention is not None:
        model.set_attn_implementation(attention)
    _restore_quantized(patched)
    for module, names in fused:
        first = getattr(module, names[0])
        first.users -= 1
        if first.users == 0:
            for name, layer in zip(names, first.unfused()):
                setattr(module, name, layer)
    fused.clear()


def greedy_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    max_new_tokens: int = 128, cuda_graph: bool | None = None) -> torch.Tensor:
    """Exactly ``max_new_tokens`` greedy tokens per row ([batch, max_new_tokens]); prompts left-padded.

    A one-off ``GraphDecoder`` (captures, decodes, is dropped); keep a ``GraphDecoder`` to reuse the capture.
    End-of-sequence does not stop it (fixed length, as benchmarks need); cut the rows at EOS afterwards.

    >>> batch = tokenizer(["你好"], return_tensors="pt")  # doctest: +SKIP
    >>> greedy_generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=8).shape  # doctest: +SKIP
    torch.Size([1, 8])
    """
    decoder = GraphDecoder(model, input_ids.shape[0], input_ids.shape[1] + max_new_tokens, cuda_graph)
    return decoder.generate(input_ids, attention_mask, max_new_tokens)
