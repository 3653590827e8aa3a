"""llama.cpp route: convert the qwen2-chat stand-in to GGUF, quantize it, run it with llama-cpp-python."""

import importlib.util
import json
import subprocess
import sys

import llama_cpp
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.deploy import gguf
from llmkit.generation.bench import bench, workload
from llmkit.generation.bench_engines import bench_llamacpp, bench_llamacpp_isolated
from llmkit.cli import main
from llmkit.errors import BadInput
from llmkit.data import load_qa_pairs
from llmkit.standins.qwen2_chat import greedy_answer


@pytest.fixture(scope="module")
def f16(chat_dir, tmp_path_factory):
    return gguf.convert(chat_dir, tmp_path_factory.mktemp("gguf") / "qwen2-chat-f16.gguf")


@pytest.fixture(scope="module")
def llm(f16):
    model = llama_cpp.Llama(model_path=str(f16), n_ctx=256, verbose=False)
    yield model
    model.close()


def test_conversion_keeps_the_architecture_and_the_chat_template(f16, llm):
    assert llm.metadata["general.architecture"] == "qwen2"
    assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
    assert not list(f16.parent.glob(".*partial"))


def test_llama_cpp_answers_like_transformers(chat_dir, llm):
    model = AutoModelForCausalLM.from_pretrained(chat_dir)
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    for pair in load_qa_pairs()[:4]:
        expected = greedy_answer(model, tokenizer, pair["messages"])
        reply = llm.create_chat_completion(pair["messages"], temperature=0.0, max_tokens=48)
        assert reply["choices"][0]["message"]["content"] == expected == pair["answer"]


def test_q4_k_m_is_smaller_and_still_loads(f16, tmp_path):
    out = gguf.quantize(f16, tmp_path / "q4.gguf", "q4_k_m")
    assert out.stat().st_size < 0.75 * f16.stat().st_size  # both files also hold the 151k-token vocabulary
    model = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False)
    assert len(list(zip(range(4), model.generate([9707], top_k=1, temp=0.0)))) == 4
    model.close()


def test_an_existing_file_is_never_overwritten(chat_dir, f16, tmp_path):
    out = tmp_path / "mine.gguf"
    out.write_text("keep me")
    with pytest.raises(BadInput, match="exists already"):
        gguf.convert(chat_dir, out)
    with pytest.raises(BadInput, match="exists already"):
        gguf.quantize(f16, out)
    assert out.read_text() == "keep me"


def test_a_failed_conversion_leaves_no_file(tmp_path):
    model_dir = tmp_path / "odd-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"]}))
    out = tmp_path / "odd.gguf"
    with pytest.raises(RuntimeError, match="convert_hf_to_gguf.py failed"):
        gguf.convert(model_dir, out)
    assert list(tmp_path.iterdir()) == [model_dir]


@pytest.mark.parametrize("call, message", [
    (lambda d, o: gguf.convert(d, o, outtype="q4_k_m"), "convert to f16 first"),
    (lambda d, o: gguf.quantize(o, o.with_name("x.gguf"), "q3"), "method must be one of"),
    (lambda d, o: gguf.quantize(o, o.with_name("x.gguf")), "does not exist"),
    (lambda d, o: gguf.convert(d.parent, o), "no config.json"),
])
def test_bad_requests_say_what_to_do(chat_dir, tmp_path, call, message):
    with pytest.raises(BadInput, match=message):
        call(chat_dir, tmp_path / "missing.gguf")


def test_llamacpp_backend_generates_the_fixed_length_and_counts_speed(chat_dir, f16):
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    prompts = workload(tokenizer, prompts=2, prompt_tokens=8)
    result = bench_llamacpp(f16, prompts, new_tokens=6, repeats=1)
    assert [len(o) for o in result.outputs] == [6, 6]
    assert result.details["eval_tokens_per_s"] > 0 and result.details["prompt_eval_tokens_per_s"] > 0
    assert 0 < result.time_to_first_token_s < result.runs_s[0]


def test_llamacpp_backend_decodes_what_transformers_decodes(chat_dir, f16):
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    model = AutoModelForCausalLM.from_pretrained(chat_dir)
    messages = [pair["messages"] for pair in load_qa_pairs()[:2]]
    prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for m in messages]
    ours = bench_llamacpp(f16, prompts, new_tokens=8, repeats=1).outputs
    theirs = [bench(model, tokenizer, "hf", [p], new_tokens=8, repeats=1).outputs[0] for p in prompts]
    assert ours == theirs


def test_isolated_llamacpp_run_gives_the_same_tokens_without_torch(chat_dir, f16, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    prompts = workload(tokenizer, prompts=2, prompt_tokens=8)
    isolated = bench_llamacpp_isolated(f16, prompts, new_tokens=6, repeats=1)
    assert isolated.outputs == bench_llamacpp(f16, prompts, new_tokens=6, repeats=1).outputs
    assert isolated.details["eval_tokens_per_s"] > 0
    # the child imports only this before llama_cpp: neither torch nor numpy (a CUDA build crashed after either)
    probe = "import sys, llmkit.generation.bench_engines; sys.exit('torch' in sys.modules or 'numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
    with pytest.raises(RuntimeError, match="does not exist"):
        bench_llamacpp_isolated(tmp_path / "missing.gguf", prompts, new_tokens=2, repeats=1)


def test_gguf_command_converts_quantizes_and_refuses_to_overwrite(chat_dir, tmp_path, capsys):
    out = tmp_path / "q5.gguf"
    assert main(["gguf", str(chat_dir), str(out), "--type", "q5_k_m", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["type"] == "q5_k_m" and report["size_mib"] > 0 and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["q5.gguf"]  # the f16 intermediate is gone
    assert main(["gguf", str(chat_dir), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists already and was left untouched; choose another name or pass --overwrite" in err


def test_bench_command_runs_llamacpp_next_to_hf(chat_dir, f16, capsys):
    code = main(["bench", "--prompts", "2", "--input-len", "8", "--output-len", "4", "--repeats", "1",
                 "--backend", "hf", "llamacpp", "--gguf", str(f16), "--json"])
    rows = {r["requested"]: r for r in json.loads(capsys.readouterr().out.split("\n", 2)[-1])["results"]}
    assert code == 0 and rows["llamacpp"]["tokens_per_s"] > 0 and rows["llamacpp"]["details"]["load_s"] >= 0


def test_bench_command_explains_missing_gguf_and_missing_vllm(monkeypatch, capsys, tmp_path):
    from llmkit.generation import bench_engines

    assert main(["bench", "--backend", "llamacpp"]) == 2
    assert "needs --gguf FILE" in capsys.readouterr().err
    monkeypatch.setattr(bench_engines, "VLLM_VENV", tmp_path / "no-vllm-venv")  # nor the one `setup.sh vllm` makes
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    assert main(["bench", "--backend", "hf", "vllm"]) == 2  # refused before any backend runs
    assert "backend 'vllm' needs the vllm package, which is not installed" in capsys.readouterr().err
