"""Reliability and safety of loading and chatting (issue 7): damaged model folders, pickle weights, remote code,
NaN/inf logits from fp16 overflow, prompts longer than the context, models that will not fit. Each case goes
through the Python API and through ``llmkit chat``; the damaged folders are copies of the qwen2-chat stand-in."""

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import llmkit
from llmkit import loading
from llmkit.chat import NonFiniteLogits, generate_reply
from llmkit.cli import main
from llmkit.errors import BadInput
from llmkit.loading import IncompleteModel
from llmkit.generation.session import ChatSession
from llmkit.data import load_qa_pairs
from llmkit.standins.qwen2_chat import greedy_answer

HELLO = [{"role": "user", "content": "你好"}]
HELLO_ANSWER = "你好！我是 llmkit 的小测试模型。"
FRANCE = "What is the capital of France?"
NAN_MESSAGE = (r"the model's logits became NaN/inf at new token 1 while computing in torch.float16: float16 holds at "
               r"most 65504 and the activations overflowed \(what makes fp16 and GPTQ models answer '!!!!'\)\. Load "
               r"the model in bfloat16 \(GPUs of compute capability >= 8.0: llmkit.load\(..., dtype=torch.bfloat16\), "
               r"llmkit chat --dtype bfloat16\) or in float32 \(dtype=torch.float32, --dtype float32\)\.")


@pytest.fixture(autouse=True)
def no_standin_mode(monkeypatch):
    monkeypatch.delenv("LLMKIT_STANDIN", raising=False)


def copy_model(source: Path, target: Path, *, drop=(), copy=()) -> Path:
    """``target`` with the stand-in's files: symlinks, except real copies of ``copy`` (to damage) and none of
    ``drop``."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.name in drop:
            continue
        if file.name in copy:
            shutil.copy(file, target / file.name)
        else:
            (target / file.name).symlink_to(file)
    return target


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()  # a symlink to the stand-in's own file: replace, never write through it
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def chat_cli(capsys, *args) -> tuple[int, str, list[str]]:
    """``llmkit chat ARGS`` in this process: (exit code, stdout, stderr lines but transformers' progress bar and
    llmkit.load's line naming the from_pretrained call it makes)."""
    capsys.readouterr()  # drop what came before
    code = main(["chat", *args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert sum(line.startswith("[llmkit] AutoModelForCausalLM.from_pretrained(") for line in lines) <= 1
    return code, captured.out, [line for line in lines
                                if line.strip() and not line.startswith(("Loading weights", "[llmkit] AutoModelForCausalLM"))]


def must_not_run(*args, **kwargs):
    raise AssertionError("nothing may be estimated or loaded from a refused folder")


# --- 1. incomplete or corrupted folders are refused before estimating or loading ------------------------------

def truncate_shard(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def corrupt_shard_header(folder):
    with (folder / "model.safetensors").open("r+b") as handle:
        handle.write((2**40).to_bytes(8, "little"))  # a header length larger than the file


DAMAGES = {  # how to damage a copy, the file the message must name, what it must say about it
    "truncated shard": (truncate_shard, ["model.safetensors"], "model.safetensors: .*truncated or corrupted"),
    "corrupted shard header": (corrupt_shard_header, ["model.safetensors"],
                               "model.safetensors: truncated or corrupted"),
    "malformed config.json": (lambda d: (d / "config.json").write_text("{not json"), ["config.json"],
                              r"config.json: not valid JSON"),
    "missing tokenizer": (lambda d: None, [], r"tokenizer.json \(or tokenizer.model, .*\): missing"),
}


@pytest.fixture(params=list(DAMAGES))
def damaged(request, chat_dir, tmp_path):
    damage, copied, problem = DAMAGES[request.param]
    folder = copy_model(chat_dir, tmp_path / "damaged", copy=copied,
                        drop=["tokenizer.json"] if request.param == "missing tokenizer" else [])
    damage(folder)
    return folder, problem


def test_load_refuses_a_damaged_folder_naming_the_file(damaged, monkeypatch):
    folder, problem = damaged
    monkeypatch.setattr(loading, "estimate", must_not_run)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", must_not_run)
    with pytest.raises(IncompleteModel, match=rf"the model folder {folder} is incomplete or corrupted: {problem}.*"
                                              r"Nothing was loaded\. Download it again: llmkit download ORG/NAME "
                                              rf"--local-dir {folder} \(it resumes an interrupted download"):
        llmkit.load(str(folder))


def test_chat_cli_refuses_a_damaged_folder_in_one_line(damaged, capsys):
    folder, problem = damaged
    code, out, err = chat_cli(capsys, str(folder), "-p", "hi")
    assert code == 1 and out == ""
    assert len(err) == 1 and err[0].startswith(f"llmkit: error: the model folder {folder} is incomplete or corrupted: ")
    assert "Download it again: llmkit download" in err[0]


def test_a_damaged_hub_copy_names_the_download_command(chat_dir, tmp_path, monkeypatch):
    copy_model(chat_dir, tmp_path / "models" / "Qwen" / "Qwen2-7B-Instruct", copy=["model.safetensors"])
    truncate_shard(tmp_path / "models" / "Qwen" / "Qwen2-7B-Instruct")
    monkeypatch.chdir(tmp_path)  # ./models is one of the places locate searches
    for variable, folder in (("HF_HUB_CACHE", "hf"), ("MODELSCOPE_CACHE", "ms"), ("LLMKIT_MODEL_DIR", "none")):
        monkeypatch.setenv(variable, str(tmp_path / folder))
    with pytest.raises(IncompleteModel, match=r"model.safetensors: .*Download it again: llmkit download "
                                              r"Qwen/Qwen2-7B-Instruct \(it resumes"):
        llmkit.load("Qwen/Qwen2-7B-Instruct")


def test_the_llmkit_command_refuses_a_truncated_shard(chat_dir, tmp_path):
    folder = copy_model(chat_dir, tmp_path / "damaged", copy=["model.safetensors"])
    truncate_shard(folder)
    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", str(folder), "-p", "hi"], capture_output=True,
                            text=True, env={**os.environ, "LLMKIT_STANDIN": ""})
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llmkit: error: the model folder {folder} is incomplete")
    assert "model.safetensors: " in lines[0] and "truncated or corrupted" in lines[0]


# --- 2. pickle weights only when allowed; safetensors preferred -----------------------------------------------

@pytest.fixture(scope="module")
def pickle_state_dict(chat_dir, tmp_path_factory):
    """pytorch_model.bin with the stand-in's weights (transformers 5 dropped save_pretrained's safe_serialization)."""
    model = AutoModelForCausalLM.from_pretrained(chat_dir)
    file = tmp_path_factory.mktemp("bin") / "pytorch_model.bin"
    torch.save(model.state_dict(), file)
    return file


@pytest.fixture
def bin_only(chat_dir, tmp_path, pickle_state_dict):
    folder = copy_model(chat_dir, tmp_path / "bin-only", drop=["model.safetensors"])
    (folder / "pytorch_model.bin").symlink_to(pickle_state_dict)
    return folder


class WritesAFile:
    """Unpickling this object creates ``path``: what a malicious pytorch_model.bin could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


PICKLE_MESSAGE = (r"has only pickle weights \(pytorch_model.bin\): loading a pickle file can run any code it "
                  r"carries\. Prefer a safetensors copy of this model \(most hub repositories have one\); pass "
                  r"allow_pickle=True \(llmkit chat --allow-pickle\) only if you trust its source\.")


def test_pickle_only_weights_are_refused_before_unpickling(chat_dir, tmp_path, monkeypatch):
    folder = copy_model(chat_dir, tmp_path / "evil-bin", drop=["model.safetensors"])
    sentinel = tmp_path / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(WritesAFile(sentinel)))
    monkeypatch.setattr(loading, "estimate", must_not_run)
    with pytest.raises(BadInput, match=PICKLE_MESSAGE):
        llmkit.load(str(folder))
    assert not sentinel.exists()


def test_pickle_only_weights_load_when_allowed(bin_only, capsys):
    with pytest.raises(BadInput, match=PICKLE_MESSAGE):
        llmkit.load(str(bin_only))
    model, tokenizer = llmkit.load(str(bin_only), allow_pickle=True)
    assert greedy_answer(model, tokenizer, HELLO) == HELLO_ANSWER
    code, _, err = chat_cli(capsys, str(bin_only), "-p", "hi")
    assert code == 2 and len(err) == 1 and "--allow-pickle" in err[0]
    code, out, _ = chat_cli(capsys, str(bin_only), "--allow-pickle", "--greedy", "-p", "你好")
    assert code == 0 and out.strip().splitlines()[-1] == HELLO_ANSWER


def test_with_both_formats_only_safetensors_are_loaded(chat_dir, tmp_path, monkeypatch):
    folder = copy_model(chat_dir, tmp_path / "both")
    model = AutoModelForCausalLM.from_pretrained(chat_dir)
    torch.save({name: torch.zeros_like(value) for name, value in model.state_dict().items()},
               folder / "pytorch_model.bin")  # other weights: an answer from them would differ
    seen, from_pretrained = [], loading.AutoModelForCausalLM.from_pretrained

    def recording(*args, **kwargs):
        seen.append(kwargs.get("use_safetensors"))
        return from_pretrained(*args, **kwargs)

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", recording)
    loaded, tokenizer = llmkit.load(str(folder))
    assert seen == [True]
    assert greedy_answer(loaded, tokenizer, HELLO) == HELLO_ANSWER


# --- 3. trust_remote_code is never implied ------------------------------------------------------------------

def remote_code_model(chat_dir: Path, folder: Path, model_type: str) -> tuple[Path, Path]:
    """A copy of the stand-in whose config.json maps to its own configuration_evil.py / modeling_evil.py; importing
    either writes the returned sentinel file."""
    copy_model(chat_dir, folder)
    edit_config(folder, model_type=model_type, architectures=["EvilForCausalLM"],
                auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    sentinel = folder.parent / f"{folder.name}-RAN"
    run = f"open({str(sentinel)!r}, 'w').write('remote code ran')\n"
    (folder / "configuration_evil.py").write_text(
        run + "from transformers import Qwen2Config\n\n\nclass EvilConfig(Qwen2Config):\n    model_type = 'evil'\n")
    (folder / "modeling_evil.py").write_text(
        run + "from transformers import Qwen2ForCausalLM\n\n\nclass EvilForCausalLM(Qwen2ForCausalLM):\n    pass\n")
    return folder, sentinel


@pytest.fixture
def evil(chat_dir, tmp_path):
    """A model type transformers does not have: only its own code could load it."""
    return remote_code_model(chat_dir, tmp_path / "evil", "evil")


@pytest.fixture
def qwen2_with_auto_map(chat_dir, tmp_path):
    """A built-in model type that also ships code: the built-in class loads it."""
    return remote_code_model(chat_dir, tmp_path / "qwen2-auto-map", "qwen2")


REMOTE_CODE_MESSAGE = (r"needs its own Python code \(configuration_evil.py, modeling_evil.py, named by auto_map in "
                       r"config.json\) for model_type 'evil', which transformers does not have; llmkit does not run "
                       r"it\. Read that code, then load\(..., trust_remote_code=True, revision='<commit>'\) if you "
                       r"trust it, or use a checkpoint of an architecture transformers has\.")


def test_load_refuses_a_model_that_needs_its_own_code(evil, monkeypatch):
    folder, sentinel = evil
    monkeypatch.setattr(loading, "estimate", must_not_run)
    with pytest.raises(BadInput, match=REMOTE_CODE_MESSAGE):
        llmkit.load(str(folder))
    assert not sentinel.exists()


def test_a_built_in_type_loads_with_the_built_in_class_not_the_shipped_code(qwen2_with_auto_map):
    folder, sentinel = qwen2_with_auto_map
    model, tokenizer = llmkit.load(str(folder))
    assert type(model).__name__ == "Qwen2ForCausalLM" and type(model).__module__.startswith("transformers.")
    assert greedy_answer(model, tokenizer, HELLO) == HELLO_ANSWER
    assert not sentinel.exists()


def test_estimate_reads_config_json_only(evil):
    folder, sentinel = evil
    assert llmkit.estimate(str(folder))["params"] > 0
    assert main(["estimate", str(folder), "--json"]) == 0
    assert not sentinel.exists()


def test_chat_cli_never_runs_a_models_code(evil, qwen2_with_auto_map, capsys):
    code, _, err = chat_cli(capsys, str(evil[0]), "-p", "hi")
    assert code == 2 and len(err) == 1 and "needs its own Python code" in err[0]
    code, out, _ = chat_cli(capsys, str(qwen2_with_auto_map[0]), "--greedy", "-p", "你好")
    assert code == 0 and out.strip().splitlines()[-1] == HELLO_ANSWER
    assert not evil[1].exists() and not qwen2_with_auto_map[1].exists()


def test_the_sentinel_works_when_remote_code_is_trusted_explicitly(evil, tmp_path):
    """The control: with trust_remote_code=True (and a pinned revision) transformers does import the files."""
    folder, sentinel = evil
    code = f"import llmkit; llmkit.load({str(folder)!r}, trust_remote_code=True, revision='pinned')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert sentinel.exists(), result.stderr[-2000:]


def literal_true_remote_code(tree: ast.AST) -> list[int]:
    """Lines passing trust_remote_code=True literally, as a keyword or as a {"trust_remote_code": True} entry."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
            pairs = [(node, node.value)]
        elif isinstance(node, ast.Dict):
            pairs = [(key, value) for key, value in zip(node.keys, node.values)
                     if isinstance(key, ast.Constant) and key.value == "trust_remote_code"]
        else:
            continue
        lines += [value.lineno for _, value in pairs if isinstance(value, ast.Constant) and value.value is True]
    return lines


def test_no_source_file_passes_trust_remote_code_true():
    assert literal_true_remote_code(ast.parse("f(trust_remote_code=True); g(**{'trust_remote_code': True})")) == [1, 1]
    package = Path(llmkit.__file__).parent
    found = {str(file.relative_to(package)): lines for file in sorted(package.rglob("*.py"))
             if (lines := literal_true_remote_code(ast.parse(file.read_text(encoding="utf-8"))))}
    assert found == {}


# --- 4. NaN/inf logits from fp16 overflow ---------------------------------------------------------------------

def overflow(model):
    """Scale one RMSNorm weight so layer 0's MLP activations pass 65504 in float16 (harmless in float32)."""
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight.mul_(1000)
    return model


@pytest.fixture(scope="module")
def fp16_overflowing(chat_dir):
    model, tokenizer = llmkit.load(str(chat_dir), dtype=torch.float16)
    return overflow(model), tokenizer


def plain_generate(model, tokenizer, messages, **kwargs) -> str:
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=8, **kwargs)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_cpu_float16_overflows_to_nan_and_decodes_as_exclamation_marks(fp16_overflowing):
    model, tokenizer = fp16_overflowing
    ones = torch.ones(2, 2, dtype=torch.float16)
    assert (ones @ ones).tolist() == [[2, 2], [2, 2]]  # this torch build multiplies float16 on the CPU
    assert torch.tensor(65504, dtype=torch.float16) * 2 == float("inf")  # and overflows past 65504
    inputs = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert model(**inputs).logits.isnan().any()
    assert plain_generate(model, tokenizer, HELLO, do_sample=False) == "!" * 8  # the symptom the guard replaces


@pytest.mark.parametrize("sampling", [{"do_sample": False}, {}], ids=["greedy", "generation_config sampling"])
def test_generate_reply_raises_non_finite_logits(fp16_overflowing, sampling):
    model, tokenizer = fp16_overflowing
    pieces = []
    with pytest.raises(NonFiniteLogits, match=NAN_MESSAGE):
        generate_reply(model, tokenizer, HELLO, on_token=pieces.append, **sampling)
    assert pieces == []  # nothing streamed


def test_chat_session_history_is_unchanged_after_non_finite_logits(fp16_overflowing):
    chat = ChatSession(*fp16_overflowing, do_sample=False)
    before = [{"role": "user", "content": "我叫小明。"}, {"role": "assistant", "content": "你好，小明！"}]
    chat.history = list(before)
    with pytest.raises(NonFiniteLogits):
        chat.ask("我叫什么名字？")
    with pytest.raises(NonFiniteLogits):
        list(chat.stream("我叫什么名字？"))
    assert chat.history == before


def test_float32_answers_are_unchanged_by_the_guard(chat_dir):
    model, tokenizer = llmkit.load(str(chat_dir), dtype=torch.float32)
    overflow(model)  # the same weights that break float16 are fine in float32
    for pair in load_qa_pairs():
        guarded = generate_reply(model, tokenizer, pair["messages"], max_new_tokens=8, do_sample=False)
        assert guarded == plain_generate(model, tokenizer, pair["messages"], do_sample=False)
    assert generate_reply(model, tokenizer, HELLO, do_sample=False) == HELLO_ANSWER


@pytest.fixture(scope="module")
def overflowing_checkpoint(chat_dir, tmp_path_factory):
    """A bf16 checkpoint whose weights overflow once loaded in float16 (bf16 and fp32 have the range)."""
    folder = tmp_path_factory.mktemp("overflowing") / "model"
    model = overflow(AutoModelForCausalLM.from_pretrained(chat_dir))
    model.save_pretrained(folder)
    for file in chat_dir.iterdir():
        if not (folder / file.name).exists():
            shutil.copy(file, folder / file.name)
    return folder


def test_chat_cli_reports_non_finite_logits_in_one_line(overflowing_checkpoint, capsys, monkeypatch):
    code, _, err = chat_cli(capsys, str(overflowing_checkpoint), "--dtype", "float16", "--greedy", "-p", "你好")
    assert code == 1 and len(err) == 1
    assert err[0].startswith("llmkit: error: the model's logits became NaN/inf") and "--dtype bfloat16" in err[0]
    code, out, _ = chat_cli(capsys, str(overflowing_checkpoint), "--dtype", "float32", "--greedy", "-p", "你好")
    assert code == 0 and out.strip().splitlines()[-1] == HELLO_ANSWER  # what the message says to do works
    lines = iter(["你好", "Hello", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(lines))
    code, _, err = chat_cli(capsys, str(overflowing_checkpoint), "--dtype", "float16", "--greedy")
    assert code == 0 and sum(line.startswith("llmkit: error: the model's logits became NaN/inf") for line in err) == 2


# --- 5. a prompt longer than the context is truncated, not a crash ---------------------------------------------

@pytest.fixture
def short_context(chat_dir, tmp_path):
    """The stand-in with a 256-token context (max_position_embeddings), so a long prompt is cheap on the CPU."""
    folder = copy_model(chat_dir, tmp_path / "short-context")
    edit_config(folder, max_position_embeddings=256)
    return folder


def test_chat_cli_truncates_a_very_long_prompt(short_context, capsys):
    pasted = "Some pasted text about many things. " * 200 + "\n" + FRANCE
    code, out, err = chat_cli(capsys, str(short_context), "--greedy", "--max-new-tokens", "16", "-p", pasted)
    assert code == 0
    assert out.strip().splitlines()[-1] == "The capital of France is Paris."  # the question at the end was kept
    assert len(err) == 1 and err[0].startswith("llmkit: warning: the message was cut to its last ")
    assert "max_new_tokens=16, no more fits max_context_tokens=256" in err[0]


def test_interactive_chat_truncates_and_goes_on(short_context, capsys, monkeypatch):
    pasted = "Some pasted text about many things. " * 200 + "\n" + FRANCE
    lines = iter([pasted, pasted, "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(lines))
    code, out, err = chat_cli(capsys, str(short_context), "--greedy", "--max-new-tokens", "16")
    assert code == 0 and out.count("The capital of France is Paris.") == 2
    assert sum(line.startswith("llmkit: warning: the message was cut") for line in err) == 2  # every turn warns


# --- 6. a model that will not fit is refused before loading ----------------------------------------------------

def test_chat_cli_refuses_a_model_that_will_not_fit(chat_dir, capsys, monkeypatch):
    monkeypatch.setattr(loading, "free_memory_gib", lambda max_memory=None: (0.01, "free memory of 1 GPU(s)"))
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", must_not_run)
    code, out, err = chat_cli(capsys, str(chat_dir), "-p", "hi")
    assert code == 4 and out == ""
    assert len(err) == 1 and err[0].startswith(f"llmkit: error: {chat_dir} needs about ")
    assert "GiB but the free memory of 1 GPU(s) is 0.0 GiB. Nothing was loaded. Options: a GPTQ-Int4" in err[0]
    assert "max_memory=" in err[0] and "force=True" in err[0]
