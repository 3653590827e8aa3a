"""Why notebook 06's "free the trained model" step leaves the 7B on the GPU in real mode (GPU machine, 24 GB card:
"after freeing: 14.25 GiB allocated", then the next model's load is offloaded to the CPU and crawls). On the CPU
stand-in, in a script and in a Jupyter kernel, the model is freed.

Runs notebook 06 itself, in a Jupyter kernel, up to the ``del`` (training shortened to a few steps), then reports
whether the two Trainers are still alive and what still holds the model, as chains of referrers:

    python benchmarks/lora_free_probe.py --card 24 --out $OUT
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))
import realmode_gpu  # noqa: E402

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "06_lora_finetune.ipynb"
FREE_CELL_END = "assert trained() is None"  # notebook 06's check that its del freed the trained model
SHORTER = {"num_train_epochs=3.0 if STANDIN else 15.0": "num_train_epochs=3.0",  # 9 steps, a save at step 3
           "save_steps=40 if STANDIN else 15, eval_steps=40 if STANDIN else 15": "save_steps=3, eval_steps=3",
           "assert steps >= 40": "assert steps >= 1"}
DIAGNOSIS = '''
import sys, threading, types, torch
ITERATORS = (type(iter([])), type(iter(())))

def keys_of(mapping, value):
    keys = []
    for key, item in mapping.items():
        if item is value:
            keys.append(key)
    return keys[:3]

def times_referred(ref, node):
    if isinstance(ref, dict):
        return sum(v is node for v in ref.values()) + sum(k is node for k in ref)
    if isinstance(ref, (list, tuple)):
        return sum(v is node for v in ref)
    return 1

def describe(node):
    """What a node is, in a few words: the function of a bound method or closure, a cell's content, a dict's keys."""
    if isinstance(node, types.MethodType):
        return f" [bound {node.__func__.__qualname__} of {type(node.__self__).__name__}]"
    if isinstance(node, types.FunctionType):
        return f" [function {node.__qualname__} in {node.__module__}]"
    if isinstance(node, types.CellType):
        return f" [cell holding {type(node.cell_contents).__qualname__}]"
    if isinstance(node, dict):
        return f" [dict keys {list(node)[:8]}]"
    return f" [{type(node).__module__}.{type(node).__qualname__}]"

def chains(obj, depth=10, paths=12):
    """Print chains of referrers from obj up to a notebook global, a module, a frame outside this cell (another
    thread, a generator) or `depth` steps, one per line."""
    own_frames, frame = set(), sys._getframe()
    while frame is not None:
        own_frames.add(id(frame))
        frame = frame.f_back
    objects, mine = {id(obj): obj}, set()  # the stack holds ids and labels only: it never refers to what it walks
    stack, found = [(id(obj), ())], 0
    while stack and found < paths:
        node_id, labels = stack.pop(0)  # breadth first: the shortest chains first
        node = objects[node_id]
        refs = gc.get_referrers(node)
        mine.add(id(refs))
        for ref in refs:
            if (isinstance(ref, ITERATORS) or id(ref) in mine or id(ref) in own_frames or ref is objects
                    or id(ref) in objects):  # each object once, on its shortest chain
                continue
            module = sys.modules.get(ref.get("__name__", "")) if isinstance(ref, dict) else None
            if ref is globals():
                label = "globals " + str(keys_of(ref, node))
            elif module is not None and vars(module) is ref:
                label = f"module {module.__name__} {keys_of(ref, node)}"
            elif isinstance(ref, types.FrameType):
                label = f"frame {ref.f_code.co_name} {ref.f_code.co_filename}:{ref.f_lineno}"
            else:
                label = type(ref).__module__ + "." + type(ref).__qualname__ + describe(ref)
                if isinstance(ref, dict):
                    label += str(keys_of(ref, node))
                elif isinstance(ref, (list, tuple)):
                    label += f"[{len(ref)}]"
            if (ref is globals() or label.startswith("module ") or isinstance(ref, (types.ModuleType, types.FrameType))
                    or len(labels) + 1 >= depth):
                print(" <- ".join(labels + (label[:160],)))
                found += 1
            else:
                objects[id(ref)] = ref
                stack.append((id(ref), labels + (label[:160],)))
        visible = 0  # a plain loop: a generator expression would put `node` in a closure cell
        for ref in refs:
            if id(ref) not in mine and id(ref) not in own_frames and ref is not objects:
                visible += times_referred(ref, node)
        # the getrefcount call, `node` and `objects` refer to it, and for the model also `obj` and inspect_model's `held`
        unexplained = sys.getrefcount(node) - 3 - visible - (2 if node is obj else 0)
        if unexplained > 0:
            print(f"{unexplained} reference(s) from outside Python containers (C) to: "
                  + " <- ".join(labels[-3:] or ("the model",)) + describe(node))
            found += 1
        del refs, node
    for thread, frame in sys._current_frames().items():  # running frames of other threads are not gc-tracked
        while frame is not None and thread != threading.get_ident():
            for name, value in frame.f_locals.items():
                if id(value) in objects:
                    print(f"thread {thread}: {frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno}) "
                          f"local {name!r}: {type(value).__qualname__}")
                    found += 1
            frame = frame.f_back
    if not found:
        print("no chain: held outside Python containers (C: an autograd node, a torch hook) or by this cell")

def allocated(step):
    gc.collect()
    torch.cuda.empty_cache()
    print(f"{step}: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated, model alive: {PROBE_MODEL() is not None}")

def global_fixes():
    """Reset, one at a time, state that lives outside Python containers or in library singletons."""
    x = torch.ones(4, device="cuda", requires_grad=True)
    (x * 2).sum().backward()
    allocated("after a fresh backward on the GPU (autograd worker thread)")
    from torch.utils.checkpoint import checkpoint
    checkpoint(lambda t: t * 2, x, use_reentrant=False).sum().backward()
    allocated("after a checkpointed backward")
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    allocated("after resetting accelerate's state")
    torch._dynamo.reset()
    allocated("after torch._dynamo.reset()")
    get_ipython().run_line_magic("reset", "-f out")
    allocated("after %reset -f out")

print("threads:", [t.name for t in threading.enumerate()])
gc.collect()
print(f"allocated after del: {torch.cuda.memory_allocated() / 2**30:.2f} GiB")
print("trainers alive:", [t() is not None for t in PROBE_TRAINERS])

def inspect_model():  # a local, not a global: the walk skips this frame
    held = PROBE_MODEL()
    print("model still alive:", held is not None)
    if held is not None:
        chains(held)

inspect_model()
if PROBE_MODEL() is not None:
    global_fixes()
'''


def probe_notebook(path: Path = NOTEBOOK, replace: tuple = ()):
    """Notebook 06 up to its ``del`` of the trained model, with a weak reference taken at load and the diagnosis
    cell at the end (raises if the notebook's text it patches has changed). ``replace``: more (old, new) pairs, to
    try a change to the notebook (e.g. training without gradient checkpointing)."""
    patches = {**SHORTER, **dict(replace)}
    nb = nbformat.read(path, as_version=4)
    cells = []
    for cell in nb.cells:
        cell = copy.deepcopy(cell)
        if cell.cell_type == "code":
            for old, new in patches.items():
                cell.source = cell.source.replace(old, new)
            if "model, tokenizer = llmkit.load(MODEL)" in cell.source:
                cell.source += "\nimport weakref\nPROBE_MODEL, PROBE_TRAINERS = weakref.ref(model), []"
            if "trainer.train(" in cell.source:
                cell.source += "\nPROBE_TRAINERS.append(weakref.ref(trainer))"
            if FREE_CELL_END in cell.source:
                cell.source = cell.source.split(FREE_CELL_END)[0]
                cells += [cell, nbformat.v4.new_code_cell(DIAGNOSIS)]
                break
        cells.append(cell)
    text = "\n".join(c.source for c in cells)
    missing = [new for new in [*patches.values(), "PROBE_MODEL, PROBE_TRAINERS = weakref", "allocated after del"] if new not in text]
    if missing:
        raise SystemExit(f"notebook 06 changed, the probe no longer patches it: {missing}")
    nb.cells = cells
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--card", type=int, default=24)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--replace", nargs=2, action="append", default=[], metavar=("OLD", "NEW"),
                        help="also replace OLD with NEW in the notebook's code (repeatable)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    probe = NOTEBOOK.with_name("probe_06_free.ipynb")  # beside 06: its relative paths hold
    nbformat.write(probe_notebook(replace=args.replace), probe)
    try:
        report = realmode_gpu.run_notebook(probe, args.card, args.out, timeout_s=300, notebook_timeout_s=400)
    finally:
        probe.unlink()
    executed = nbformat.read(args.out / f"{probe.stem}_{args.card}gb.ipynb", as_version=4)
    report["replaced"] = args.replace
    report["diagnosis"] = "".join(o.get("text", "") for o in executed.cells[-1].outputs if o.output_type == "stream")
    (args.out / "lora_free_probe.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(report["diagnosis"] or json.dumps(report["failures"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
