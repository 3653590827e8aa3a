"""Fine-tuning plumbing: the identity dataset, the dataset checker, loss masking, output folders, saving."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from transformers import AutoConfig, AutoTokenizer

from llmkit.errors import BadInput, LlmkitError
from llmkit.finetune.sft import IGNORE_INDEX, prepare_output_dir, refuse_quantized_merge, save_model, tokenize_alpaca
from llmkit.finetune.sft_data import (OPTIONAL, REQUIRED, Problem, check_dataset, identity_records, load_alpaca,
                             write_identity_dataset)


@pytest.fixture
def data(tmp_path):
    return write_identity_dataset(tmp_path / "data", "小K", "llmkit 课程")


def test_identity_dataset_is_bilingual_filled_and_clean(data):
    records = json.loads((data / "identity.json").read_text(encoding="utf-8"))
    assert len(records) >= 40 and check_dataset(data) == []
    text = json.dumps(records, ensure_ascii=False)
    assert "{{" not in text and "小K" in text and "llmkit 课程" in text
    assert any("你" in r["instruction"] for r in records) and any("you" in r["instruction"] for r in records)
    assert json.loads((data / "dataset_info.json").read_text()) == {"identity": {"file_name": "identity.json"}}


def test_writing_the_dataset_never_replaces_files(data):
    (data / "identity.json").write_text("[]")
    with pytest.raises(BadInput, match="identity.json, .*dataset_info.json exist already and were left untouched"):
        write_identity_dataset(data, "A", "B")
    assert (data / "identity.json").read_text() == "[]"


@pytest.mark.parametrize("name, author", [("", "x"), ("x", "  ")])
def test_identity_needs_a_name_and_author(name, author):
    with pytest.raises(BadInput, match="non-empty name and author"):
        identity_records(name, author)


def test_checker_names_file_record_and_field(data):
    records = json.loads((data / "identity.json").read_text(encoding="utf-8"))
    del records[2]["output"]
    records[5]["output"] = "  "
    records[7]["instruction"] = 42
    records[9] = "not a record"
    (data / "identity.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    assert check_dataset(data) == [
        Problem("identity.json", 2, "output", "missing"), Problem("identity.json", 5, "output", "is empty"),
        Problem("identity.json", 7, "instruction", "must be text, got int"),
        Problem("identity.json", 9, None, "must be an object, got str")]
    with pytest.raises(BadInput, match='4 problem\\(s\\).*record 2, field "output": missing'):
        load_alpaca(data)


def test_checker_reports_broken_json_with_its_position(data):
    (data / "identity.json").write_text('[{"instruction": "a", "output": "b"},\n {"instruction": }]')
    [problem] = check_dataset(data)
    assert problem.file == "identity.json" and "broken JSON at line 2, column 18" in problem.message


def test_checker_reports_missing_registry_and_files(tmp_path, data):
    assert "not found" in check_dataset(tmp_path)[0].message
    (data / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "gone.json"}, "x": {}}))
    assert [str(p) for p in check_dataset(data)] == [
        'dataset_info.json: field "identity": names gone.json, which is not in ' + str(data),
        'dataset_info.json: field "x": needs {"file_name": "<file>.json"}']


def test_checker_flags_records_over_the_cutoff(data, chat_dir):
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    problems = check_dataset(data, tokenizer, cutoff_len=40)
    assert problems and all("over cutoff_len 40" in p.message for p in problems)
    assert check_dataset(data, tokenizer, cutoff_len=512) == []


def test_loss_is_masked_on_the_prompt(data, chat_dir):
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    record = load_alpaca(data)[0]
    row = tokenize_alpaca([record], tokenizer)[0]
    answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == record["output"] + "<|im_end|>"
    assert row["labels"][: len(row["labels"]) - len(answer)] == [IGNORE_INDEX] * (len(row["labels"]) - len(answer))
    assert len(tokenize_alpaca([record], tokenizer, cutoff_len=10)[0]["input_ids"]) == 10


def test_output_dir_refused_resumed_or_replaced(tmp_path):
    out = tmp_path / "run"
    assert prepare_output_dir(out) is None and out.is_dir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="holds files but no checkpoint"):
        prepare_output_dir(out)
    assert (out / "notes.txt").read_text() == "mine"
    for step in (10, 20):
        (out / f"checkpoint-{step}").mkdir()
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert prepare_output_dir(out).endswith("checkpoint-20")
    assert prepare_output_dir(out, overwrite=True) is None and not any(out.iterdir())


def test_merging_into_gptq_is_refused_with_the_supported_route(gptq_dir, chat_dir):
    with pytest.raises(BadInput, match="gptq-quantized.*Merge the adapter into the bf16 base"):
        refuse_quantized_merge(AutoConfig.from_pretrained(gptq_dir))
    refuse_quantized_merge(AutoConfig.from_pretrained(chat_dir))


class _FailingModel:
    def save_pretrained(self, folder, max_shard_size):
        folder.mkdir()
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")


def test_a_failed_save_leaves_nothing_where_the_model_should_be(tmp_path, chat_dir):
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    with pytest.raises(LlmkitError, match="the disk is full: could not finish writing .*merged"):
        save_model(_FailingModel(), tokenizer, tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []


def test_save_model_writes_safetensors_and_refuses_to_replace(tmp_path, chat_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(chat_dir, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    out = save_model(model, tokenizer, tmp_path / "merged", max_shard_size="10MB")
    assert len(list(out.glob("*.safetensors"))) >= 2 and not list(out.glob("*.bin"))
    with pytest.raises(BadInput, match="exists already"):
        save_model(model, tokenizer, out)


# Property-based: whatever the files hold, the checker answers with problems that say where, and never raises.
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12)
FILE_NAMES = st.text() | st.sampled_from(["identity.json", "dataset_info.json", "", ".", "..", "/", "a\x00b",
                                          "x" * 300])  # "x" * 300: a name too long to look up
REGISTRY = st.dictionaries(st.text(), st.fixed_dictionaries({"file_name": FILE_NAMES | JSON}) | JSON, max_size=3)
CONTENT = (st.binary(max_size=300) | st.text().map(str.encode) | JSON.map(lambda v: json.dumps(v).encode())
           | REGISTRY.map(lambda v: json.dumps(v).encode()))
TEXT = st.text(min_size=1).filter(str.strip)
RECORD = st.fixed_dictionaries({"instruction": TEXT, "output": TEXT},
                               optional={"input": st.text(), "system": st.text()})
REGISTERED = json.dumps({"identity": {"file_name": "identity.json"}})


def dataset_folder(tmp: str, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        Path(tmp, name).write_bytes(content)
    return Path(tmp)


@given(content=CONTENT)
@example(content=b"[" * 100_000)  # nested deeper than Python's recursion limit
@example(content=b"1" * 5000)  # an integer over Python's 4300-digit limit
def test_any_bytes_as_the_alpaca_file_give_problems_naming_it(content):
    with tempfile.TemporaryDirectory() as tmp:
        folder = dataset_folder(tmp, {"dataset_info.json": REGISTERED.encode(), "identity.json": content})
        problems = check_dataset(folder)
        with pytest.raises(BadInput, match="problem\\(s\\) in .*identity.json"):
            load_alpaca(folder)
    assert problems and all(str(p).startswith("identity.json: ") for p in problems)


@given(content=CONTENT)
@example(content=json.dumps({"identity": {"file_name": "x" * 300}}).encode())  # a name too long to look up
@example(content=b"[" * 100_000)
def test_any_bytes_as_dataset_info_give_problems_naming_it(content):
    with tempfile.TemporaryDirectory() as tmp:
        problems = check_dataset(dataset_folder(tmp, {"dataset_info.json": content}))
    assert problems and all(str(p).startswith("dataset_info.json: ") for p in problems)


@given(records=st.lists(RECORD, min_size=1, max_size=5))
def test_valid_records_have_no_problems_and_round_trip(records):
    with tempfile.TemporaryDirectory() as tmp:
        folder = dataset_folder(tmp, {"dataset_info.json": REGISTERED.encode(),
                                      "identity.json": json.dumps(records, ensure_ascii=False).encode()})
        assert check_dataset(folder) == [] and load_alpaca(folder) == records


@given(records=st.lists(RECORD, min_size=1, max_size=5), data=st.data())
def test_one_injected_fault_is_reported_at_exactly_its_record_and_field(records, data):
    k = data.draw(st.integers(0, len(records) - 1), label="record")
    fault = data.draw(st.sampled_from(["drop", "number", "blank", "list"]), label="fault")
    field = data.draw(st.sampled_from(REQUIRED if fault in ("drop", "blank") else REQUIRED + OPTIONAL), label="field")
    if fault == "drop":
        del records[k][field]
        expected = Problem("identity.json", k, field, "missing")
    elif fault == "number":
        records[k][field] = data.draw(st.integers() | st.floats(), label="number")
        expected = Problem("identity.json", k, field, f"must be text, got {type(records[k][field]).__name__}")
    elif fault == "blank":
        records[k][field] = data.draw(st.sampled_from(["", " ", "\n\t", "\u3000"]), label="blank")  # U+3000: CJK space
        expected = Problem("identity.json", k, field, "is empty")
    else:
        records[k] = list(records[k].values())
        expected = Problem("identity.json", k, None, "must be an object, got list")
    with tempfile.TemporaryDirectory() as tmp:
        files = {"dataset_info.json": REGISTERED.encode(), "identity.json": json.dumps(records).encode()}
        assert check_dataset(dataset_folder(tmp, files)) == [expected]
