"""llmkit.memory: weight bytes against published checkpoints, the estimate against published peak memory,
config.json on disk, verdicts, the CLI, bad input."""

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llmkit.errors import BadInput
from llmkit.memory import (CARD_SIZES_GIB, PUBLISHED_MEASUREMENTS, QUANTS, check_published, estimate, fit_table,
                           load_facts, per_gpu_gib, shipped_config, shipped_models)


def llmkit(*args):
    return subprocess.run([sys.executable, "-m", "llmkit.cli", *args], capture_output=True, text=True)


# --- weights against published checkpoints ------------------------------------------------------------------

def test_qwen2_7b_bf16_weights_match_the_published_checkpoint():
    e = estimate("Qwen/Qwen2-7B-Instruct", "bf16")
    assert round(e["params"] / 1e9, 2) == 7.62  # model card: 7.62B parameters
    assert e["weights_bytes"] == e["params"] * 2
    assert e["weights_bytes"] / 1e9 == pytest.approx(15.23, abs=0.01)  # safetensors shards: 15.23 GB


def test_qwen2_72b_param_count_matches_the_model_card():
    assert round(estimate("Qwen/Qwen2-72B-Instruct")["params"] / 1e9, 1) == 72.7


def test_qwen2_72b_gptq_int4_weights_near_the_published_checkpoint():
    # Qwen/Qwen2-72B-Instruct-GPTQ-Int4 lists 11 shards: 3.94+3.92+4+4+3.92+4+4+3.92+4+3.46+2.49 GB
    published_gb = 41.65
    e = estimate("Qwen/Qwen2-72B-Instruct-GPTQ-Int4")
    assert e["quant"] == "gptq-int4"
    assert e["weights_bytes"] / 1e9 == pytest.approx(published_gb, rel=0.01)
    # 4 bits per linear weight + fp16 scales/zeros per 128 inputs + 16-bit embeddings: 3.5x smaller than bf16
    assert 3.3 < estimate("Qwen/Qwen2-72B-Instruct")["weights_gib"] / e["weights_gib"] < 3.6


@pytest.mark.parametrize("kind", ["qwen2-chat", "qwen2-gptq-int4"])
def test_standin_weights_within_10_percent_of_its_safetensors(kind, request):
    path = request.getfixturevalue("chat_dir" if kind == "qwen2-chat" else "gptq_dir")
    e = estimate(path)
    assert e["quant"] == ("fp32" if kind == "qwen2-chat" else "gptq-int4")
    size = (path / "model.safetensors").stat().st_size
    assert e["weights_bytes"] == pytest.approx(size, rel=0.10)


# --- config.json on disk ---------------------------------------------------------------------------------

def test_estimate_from_a_config_json_on_disk_equals_the_shipped_facts(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(shipped_config("Qwen/Qwen2-7B-Instruct")))
    from_disk, shipped = estimate(tmp_path, context=8192), estimate("Qwen/Qwen2-7B-Instruct", context=8192)
    assert from_disk["model"] == str(tmp_path)
    for key in ("weights_gib", "kv_cache_gib", "overhead_gib", "total_gib", "verdicts"):
        assert from_disk[key] == shipped[key]
    assert estimate(tmp_path / "config.json")["total_gib"] == estimate(tmp_path)["total_gib"]


def test_default_quant_comes_from_quantization_config(tmp_path):
    config = shipped_config("Qwen/Qwen2-7B-Instruct")
    config["torch_dtype"] = "float16"
    config["quantization_config"] = {"quant_method": "gptq", "bits": 8, "group_size": 32, "desc_act": True, "sym": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    e = estimate(tmp_path)
    assert e["quant"] == "gptq-int8"
    # the checkpoint's group size and act-order are used: smaller groups and g_idx cost bytes
    g128 = estimate("Qwen/Qwen2-7B-Instruct", "gptq-int8")
    assert e["weights_bytes"] > g128["weights_bytes"]
    assert estimate(tmp_path, "bf16")["weights_bytes"] == estimate("Qwen/Qwen2-7B-Instruct")["weights_bytes"]
    assert estimate("Qwen/Qwen1.5-7B-Chat-GPTQ-Int4")["quant"] == "gptq-int4"
    assert estimate("xverse/XVERSE-7B-Chat")["quant"] == "bf16"


def test_v5_dtype_key_and_head_dim_are_read(tmp_path):
    config = shipped_config("Qwen/Qwen2-7B-Instruct")
    config.pop("torch_dtype")
    config.update(dtype="float16", head_dim=256)
    (tmp_path / "config.json").write_text(json.dumps(config))
    facts = load_facts(tmp_path)
    assert facts.default_quant() == "fp16" and facts.head_dim == 256
    assert estimate(tmp_path)["kv_cache_gib"] == pytest.approx(2 * estimate("Qwen/Qwen2-7B-Instruct")["kv_cache_gib"],
                                                               rel=1e-3)


# --- the parts of the estimate ----------------------------------------------------------------------------

def test_kv_cache_is_linear_in_context_and_batch():
    base = estimate("Qwen/Qwen2-7B-Instruct", context=4096)["kv_cache_gib"]
    assert base == pytest.approx(2 * 28 * 4 * 128 * 2 * 4096 / 2**30, abs=1e-4)  # 0.22 GiB
    assert estimate("Qwen/Qwen2-7B-Instruct", context=8192)["kv_cache_gib"] == pytest.approx(2 * base, rel=1e-3)
    triple = estimate("Qwen/Qwen2-7B-Instruct", context=4096, batch=3)["kv_cache_gib"]
    assert triple == pytest.approx(3 * base, rel=1e-3)
    assert estimate("Qwen/Qwen2-7B-Instruct", context=1024, batch=4)["kv_cache_gib"] == pytest.approx(base, rel=1e-3)
    per_layer = estimate("Qwen/Qwen2-7B-Instruct", context=12345, batch=7)["parts"]["per_layer_kv_gib"]
    assert per_layer == pytest.approx(2 * 4 * 128 * 2 * 12345 * 7 / 2**30, rel=1e-4)


def test_overhead_terms_add_up():
    e = estimate("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", context=8192)
    t = e["overhead_terms"]
    assert t["cuda_context_gib"] == 0.5 and t["rotary_cache_gib"] == 0
    assert t["dequant_workspace_gib"] == pytest.approx(8192 * 29696 * 2 / 2**30, abs=1e-4)  # largest weight in fp16
    assert t["logits_gib"] == pytest.approx(152064 * 6 / 2**30, abs=1e-4)  # last token only
    fixed = t["cuda_context_gib"] + t["cublas_workspace_gib"] + t["dequant_workspace_gib"]
    assert e["overhead_gib"] == pytest.approx(fixed + max(t["logits_gib"], t["prefill_activations_gib"]), abs=1e-3)
    assert e["total_gib"] == pytest.approx(e["weights_gib"] + e["kv_cache_gib"] + e["overhead_gib"], abs=1e-3)
    # a shorter prompt (the rest generated) needs fewer prefill activations, the same KV cache
    short = estimate("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", context=8192, prompt_tokens=1024)
    assert short["kv_cache_gib"] == e["kv_cache_gib"] and short["total_gib"] < e["total_gib"]


def test_quant_override_orders_the_weights():
    sizes = [estimate("Qwen/Qwen2-7B-Instruct", q)["weights_gib"] for q in ("bf16", "gptq-int8", "gptq-int4")]
    assert sizes[0] > sizes[1] > sizes[2]
    assert estimate("Qwen/Qwen2-7B-Instruct", "fp16")["weights_gib"] == sizes[0]
    assert estimate("Qwen/Qwen2-7B-Instruct", "int4")["weights_gib"] == sizes[2]  # no g_idx without desc_act


# --- verdicts and splitting ---------------------------------------------------------------------------------

def test_verdicts_for_every_card_size():
    assert CARD_SIZES_GIB == [24, 40, 48, 80, 141]
    seven = estimate("Qwen/Qwen2-7B-Instruct", context=4096)["verdicts"]
    assert list(seven) == ["24", "40", "48", "80", "141"]
    assert all(v == {**v, "verdict": "fits", "cards_needed": 1} for v in seven.values())

    int4 = estimate("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", context=4096)["verdicts"]
    assert int4["24"] == {**int4["24"], "verdict": "does not fit", "cards_needed": 2}
    assert int4["40"] == {**int4["40"], "verdict": "does not fit", "cards_needed": 2}
    assert int4["48"]["verdict"] == "fits" and int4["80"]["verdict"] == "fits" and int4["141"]["verdict"] == "fits"

    bf16 = estimate("Qwen/Qwen2-72B-Instruct", context=4096)["verdicts"]
    assert bf16["80"] == {**bf16["80"], "verdict": "does not fit", "cards_needed": 2}
    assert bf16["24"]["cards_needed"] == 7
    assert bf16["141"]["verdict"] == "fits, tight"  # 138 GiB on 141: under 10% left
    assert 0 < bf16["141"]["headroom_gib"] < 14.1


def test_tight_means_under_ten_percent_headroom():
    e = estimate("Qwen/Qwen2-7B-Instruct", context=20480, batch=2)  # about 22.4 GiB
    v = e["verdicts"]["24"]
    assert 21.6 < e["total_gib"] <= 24 and v["verdict"] == "fits, tight" and v["cards_needed"] == 1


def test_per_gpu_split():
    e = estimate("Qwen/Qwen2-72B-Instruct", context=4096)
    assert per_gpu_gib(e, 1) == [pytest.approx(e["total_gib"], abs=1e-3)]
    two = per_gpu_gib(e, 2)
    fixed = sum(e["overhead_terms"][k] for k in ("cuda_context_gib", "cublas_workspace_gib", "prefill_activations_gib"))
    assert sum(two) == pytest.approx(e["total_gib"] + fixed, abs=0.01)  # each GPU pays its own context + activations
    assert max(two) <= 80 < max(per_gpu_gib(e, 1))
    with pytest.raises(BadInput):
        per_gpu_gib(e, 81)


def test_fit_table_keeps_the_notebook_contract():
    rows = {r["model"]: r for r in fit_table(tokens=4096)}
    assert list(rows) == shipped_models()
    for row in rows.values():
        assert set(row) >= {"model", "estimate_gib", *(f"fits_{c}" for c in CARD_SIZES_GIB)}
    assert rows["Qwen/Qwen2-7B-Instruct"]["fits_24"]
    int4 = rows["Qwen/Qwen2-72B-Instruct-GPTQ-Int4"]
    assert not int4["fits_24"] and int4["fits_48"]
    assert not rows["Qwen/Qwen2-72B-Instruct"]["fits_80"]


# --- published measurements -----------------------------------------------------------------------------------

@pytest.mark.parametrize("row", check_published(), ids=lambda r: f"{r['model']}-{r['prompt']}")
def test_estimate_within_10_percent_of_published_peak_memory(row):
    assert row["within"], f"{row['model']} prompt {row['prompt']}: estimate {row['estimate_gib']} GiB vs " \
                          f"measured {row['measured_gib']} GiB ({100 * row['error']:+.1f}%)"


def test_published_table_covers_the_brief():
    seen = {(m["model"], m["quant"]) for m in PUBLISHED_MEASUREMENTS}
    assert {("Qwen/Qwen2-7B-Instruct", "bf16"), ("Qwen/Qwen2-7B-Instruct-GPTQ-Int4", "gptq-int4"),
            ("Qwen/Qwen2-7B-Instruct-GPTQ-Int8", "gptq-int8"),
            ("Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "gptq-int4")} <= seen
    assert all(m["source"].startswith("https://") and m["facts"] in shipped_models() for m in PUBLISHED_MEASUREMENTS)


def test_the_old_transformers_rows_need_the_full_prompt_logits():
    # transformers 4.38 materialised [prompt, vocab] logits (16-bit + fp32 copy): 26 GiB at a 30k prompt on Qwen2-7B
    old = next(m for m in PUBLISHED_MEASUREMENTS if m["legacy_transformers"] and m["prompt"] == 30720)
    modern = estimate(old["facts"], old["quant"], context=old["context"], prompt_tokens=old["prompt"])
    assert modern["total_gib"] < 0.6 * old["measured_gib"]


# --- CLI and bad input -------------------------------------------------------------------------------------------

def test_cli_json_fields():
    result = llmkit("estimate", "Qwen/Qwen2-72B-Instruct-GPTQ-Int4", "--context", "8192", "--batch", "2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"weights_gib", "kv_cache_gib", "overhead_gib", "total_gib", "verdicts"} <= set(data)
    assert data["quant"] == "gptq-int4" and data["context"] == 8192 and data["batch"] == 2
    assert list(data["verdicts"]) == ["24", "40", "48", "80", "141"]
    assert all(v["verdict"] in {"fits", "fits, tight", "does not fit"} for v in data["verdicts"].values())
    parts = data["weights_gib"] + data["kv_cache_gib"] + data["overhead_gib"]
    assert data["total_gib"] == pytest.approx(parts, abs=1e-3)


def test_cli_quant_and_table_output():
    result = llmkit("estimate", "Qwen/Qwen2-7B-Instruct", "--quant", "gptq-int4")
    assert result.returncode == 0, result.stderr
    assert "gptq-int4" in result.stdout and "does not fit" not in result.stdout
    assert set(QUANTS) == {"bf16", "fp16", "int8", "int4", "gptq-int4", "gptq-int8"}


def test_unknown_id_is_bad_input():
    with pytest.raises(BadInput, match="unknown model 'Qwen/Qwen9-1T'"):
        estimate("Qwen/Qwen9-1T")
    result = llmkit("estimate", "Qwen/Qwen9-1T")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmkit: error: unknown model 'Qwen/Qwen9-1T'")


def test_directory_without_config_json_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="has no config.json"):
        estimate(tmp_path)
    result = llmkit("estimate", str(tmp_path))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kwargs", [{"quant": "int3"}, {"context": 0}, {"batch": -1}, {"prompt_tokens": 5000}])
def test_bad_arguments_are_bad_input(kwargs):
    with pytest.raises(BadInput):
        estimate("Qwen/Qwen2-7B-Instruct", **kwargs)


def test_broken_config_is_bad_input(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BadInput, match="cannot read"):
        estimate(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64}))
    with pytest.raises(BadInput, match="lacks"):
        estimate(tmp_path)


# --- property-based: any config.json gives a finite estimate or BadInput naming the field ---------------------

VALID = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "torch_dtype": "bfloat16"}
FIELDS = [*VALID, "head_dim", "max_position_embeddings", "tie_word_embeddings", "attention_bias", "dtype",
          "quantization_config", "text_config"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
numbers = st.one_of(st.integers(-3, 300), st.integers(2**31 - 2, 10**400), st.floats(-1e3, 1e3), st.floats(),
                    st.sampled_from([0, -1, 1e308, 10**30, "64", True]))
field_values = numbers | json_values
quantization = st.fixed_dictionaries({}, optional={
    "quant_method": st.sampled_from(["gptq", "awq", "bitsandbytes"]) | json_values,
    "bits": st.sampled_from([2, 3, 4, 8, 4.0, 16]) | field_values, "w_bit": field_values,
    "group_size": st.sampled_from([-1, 0, 32, 128]) | field_values, "q_group_size": field_values,
    "desc_act": json_values, "load_in_4bit": json_values, "load_in_8bit": json_values}) | json_values


@st.composite
def configs(draw):
    """A valid small config with some fields removed and some replaced by anything, or any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values), {"not a JSON object", *FIELDS}  # a dict lacks the fields the message names
    config = dict(VALID)
    removed = draw(st.sets(st.sampled_from(list(VALID)), max_size=1)) if draw(st.integers(0, 3)) == 0 else set()
    for key in removed:
        del config[key]
    changed = draw(st.dictionaries(st.sampled_from(FIELDS), st.integers(1, 300) | field_values, max_size=3))
    if draw(st.booleans()):
        changed["quantization_config"] = draw(quantization)
    if draw(st.integers(0, 5)) == 0:
        changed["text_config"] = draw(st.dictionaries(st.sampled_from(list(VALID)), numbers, max_size=5))
    config.update(changed)
    return config, removed | set(changed)


def numbers_in(value):
    if isinstance(value, dict):
        return [n for key, inner in value.items() if key != "headroom_gib" for n in numbers_in(inner)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def crashed_before(**changes):
    """An example that failed before memory.py checked its fields (a crash, a hang, a negative size, a message
    naming no field): ((config, changed), quant)."""
    return ({**VALID, **changes}, set(changes)), None


@given(config_and_changed=configs(), quant=st.none() | st.sampled_from(QUANTS))
@example(*crashed_before(hidden_size=-1))  # negative weights and KV cache
@example(*crashed_before(num_attention_heads=1e-45))  # ZeroDivisionError
@example(*crashed_before(num_key_value_heads=1e308))  # OverflowError
@example(*crashed_before(num_hidden_layers=7e16))  # the card-splitting search never ended
@example(*crashed_before(quantization_config={"group_size": [False]}))  # TypeError
@example(*crashed_before(quantization_config={"group_size": "x"}))  # ValueError
@example(*crashed_before(text_config=[1]))  # "lacks a usable list indices must be integers or slices, not str"
def test_any_config_json_gives_a_finite_estimate_or_bad_input_naming_the_field(config_and_changed, quant):
    config, changed = config_and_changed
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config))
        try:
            result = estimate(folder, quant=quant)
        except BadInput as error:
            named = next((key for key in changed if key in str(error)), None)
            assert named, f"BadInput names none of the fields changed ({sorted(changed)}): {error}"
            return
    assert all(math.isfinite(n) and n >= 0 for n in numbers_in(result)), result
