"""llmkit.import_fixes: a model is freed by `del` although gptqmodel was first imported inside get_peft_model."""

import subprocess
import sys

import pytest

from llmkit import import_fixes

pytest.importorskip("gptqmodel")

# A fresh process in which llama-cpp-python cannot be imported (as in the course's main venv on a GPU machine), so
# gptqmodel keeps an ImportError; gptqmodel is first imported by get_peft_model, while the model is in its frames.
FINE_TUNE_THEN_DEL = """
import sys; sys.modules["llama_cpp"] = None
{setup}
import gc, weakref
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen2Config
assert "gptqmodel" not in sys.modules
model = AutoModelForCausalLM.from_config(Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=2, num_key_value_heads=1, vocab_size=128))
alive = weakref.ref(model)
peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
assert "gptqmodel" in sys.modules
del model, peft_model
gc.collect()
print("alive" if alive() is not None else "freed")
"""


@pytest.mark.parametrize("setup, expected", [("import llmkit", "freed"), ("", "alive")])
def test_a_model_is_freed_when_gptqmodel_was_first_imported_while_it_was_held(setup, expected):
    # without llmkit's fix the model stays alive: the control shows the test can fail (and tells when gptqmodel
    # no longer keeps the traceback, so that the fix can go)
    run = subprocess.run([sys.executable, "-c", FINE_TUNE_THEN_DEL.format(setup=setup)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == expected


def test_after_import_runs_once_the_module_is_executed_not_when_it_is_looked_up():
    probe = ("import importlib.util, sys; from llmkit.import_fixes import after_import; seen = []; "
             "after_import('wave', seen.append); importlib.util.find_spec('wave'); print(len(seen)); "
             "import wave; print(len(seen), seen[0] is wave)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert run.stdout.split() == ["0", "1", "True"]


def test_drop_tracebacks_clears_the_chained_exceptions_too():
    module = type(sys)("m")
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ImportError("outer") from inner
    except ImportError as outer:
        module.ERROR = outer
    import_fixes._drop_tracebacks(module)
    assert module.ERROR.__traceback__ is None and module.ERROR.__cause__.__traceback__ is None
    assert str(module.ERROR) == "outer"
