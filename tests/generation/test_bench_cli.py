import json
import os
import sys
from pathlib import Path

import pytest
import torch

from llmkit.cli import main
from llmkit.environment.env import llmkit_commit

SMALL = ["bench", "--prompts", "2", "--input-len", "8", "--output-len", "4", "--repeats", "1"]


def test_bench_writes_json_and_chart(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_SHAPE_PADDING", "0")  # a compile setting the numbers hold for: recorded
    monkeypatch.setenv("VLLM_API_KEY", "not-for-result-files")
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    out.write_text("earlier results")  # replaced only because --overwrite asks for it
    code = main([*SMALL, "--backend", "hf", "hf-fast", "hf-graph", "--json", "--out", str(out), "--chart", str(chart),
                 "--overwrite"])
    printed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])  # after the two stand-in banner lines
    assert code == 0 and json.loads(out.read_text()) == printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.png"]  # no .partial left
    rows = {r["requested"]: r for r in printed["results"]}
    assert rows["hf-fast"]["backend"] == "hf"  # no CUDA here: hf-fast is plain generate
    assert all(r["new_tokens"] == 4 and r["prompts"] == 2 and r["tokens_per_s"] > 0 for r in rows.values())
    assert printed["workload"] == {"prompts": 2, "input_len": 8, "output_len": 4, "repeats": 1}
    assert printed["commit"] == llmkit_commit()  # the course's commit (this checkout's, or $LLMKIT_COMMIT)
    assert printed["tuning_environment"]["TORCHINDUCTOR_SHAPE_PADDING"] == "0"
    assert not {"HOME", "PATH", "VLLM_API_KEY"} & set(printed["tuning_environment"])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    limit = printed["bandwidth_limit"]  # measured in the same run: every weight byte once per step
    assert limit["device"] == "cpu" and limit["copy_bandwidth_gb_s"] > 0
    assert limit["limit_steps_per_s"] == pytest.approx(limit["copy_bandwidth_gb_s"] * 1e9 / limit["weights_bytes"], rel=1e-3)
    for row in rows.values():
        assert row["fraction_of_limit"] == pytest.approx(row["tokens_per_s"] / (2 * limit["limit_steps_per_s"]), abs=1e-3)


def test_bench_passes_its_compile_mode_to_the_compiled_decoder(monkeypatch, capsys):
    import llmkit.generation.bench as bench_module

    modes, real_decoder = [], bench_module.GraphDecoder

    def recording_decoder(*args, compile_mode="default", **kwargs):
        modes.append(compile_mode)  # autotuning itself takes minutes: the stand-in compiles in the default mode
        return real_decoder(*args, **kwargs)

    monkeypatch.setattr(bench_module, "GraphDecoder", recording_decoder)
    torch._dynamo.reset()  # dynamo traces again even if an earlier test compiled the same model
    code = main([*SMALL, "--backend", "hf-graph-compile", "--compile-mode", "max-autotune-no-cudagraphs", "--json"])
    printed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert code == 0 and modes == ["max-autotune-no-cudagraphs"]
    details = printed["results"][0]["details"]
    assert details["compile_mode"] == "max-autotune-no-cudagraphs"
    phases = details["compile_phases_s"]  # where the warm-up's compile went
    assert phases and all(seconds >= 0.05 for seconds in phases.values())
    assert phases["_compile.compile_inner"] <= printed["results"][0]["warm_up_s"] + 0.01
    with pytest.raises(SystemExit) as refused:
        main([*SMALL, "--compile-mode", "reduce-overhead"])  # its CUDA graphs would clash with GraphDecoder's
    assert refused.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_fresh_compile_cache_makes_the_warm_up_a_first_starts(capsys):
    def compile_cache(*flags):
        torch._dynamo.reset()  # dynamo traces again: inductor's caches on disk decide what is compiled
        code = main([*SMALL, "--backend", "hf-graph-compile", *flags, "--json"])
        printed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
        assert code == 0
        return printed["results"][0]["details"]["compile_cache"]

    compile_cache()  # compiles into the default cache, or finds it there
    warm = compile_cache()
    default_dir = os.environ["TORCHINDUCTOR_CACHE_DIR"]  # set by inductor once it has used its cache
    fresh = compile_cache("--fresh-compile-cache")
    assert warm["fresh"] is False and warm["hits"] >= 1 and warm["misses"] == 0, warm
    assert fresh["fresh"] is True and fresh["hits"] == 0 and fresh["misses"] >= 1, fresh
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default_dir  # later compiles use the default cache again


def test_bench_never_overwrites_a_results_file(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("earlier results")
    assert main([*SMALL, "--out", str(out)]) == 2
    assert out.read_text() == "earlier results"
    err = capsys.readouterr().err
    assert f"{out} exists already and was left untouched; choose another name or pass --overwrite" in err


@pytest.mark.parametrize("args, message", [(["--prompts", "0"], "--prompts must be at least 1"),
                                           (["--output-len", "-3"], "--output-len must be at least 1")])
def test_bench_rejects_bad_sizes(args, message, capsys):
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size splits the vllm backend over GPUs; add --backend vllm"),
    (["--backend", "hf", "--tensor-parallel-size", "0"], "--tensor-parallel-size must be at least 1, got 0")])
def test_bench_rejects_a_split_without_vllm_or_of_size_zero(args, message, capsys):
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


def test_bench_refuses_a_split_over_more_gpus_than_torch_sees_or_one_that_cuts_the_heads(monkeypatch, capsys):
    import torch

    from llmkit.cli import bench_cmd

    monkeypatch.setattr(bench_cmd, "require_engine_python", lambda backend: sys.executable)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([*SMALL, "--backend", "vllm", "--tensor-parallel-size", "1", "2"]) == 2
    assert "--tensor-parallel-size 2 needs 2 GPUs; torch sees 1 here" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert main([*SMALL, "--backend", "vllm", "--tensor-parallel-size", "3"]) == 2  # the stand-in has 4 heads
    assert "--tensor-parallel-size 3 does not divide the model's 4 attention heads; choose one of [1, 2, 4]" in \
        capsys.readouterr().err


@pytest.mark.parametrize("width, sizes, refused", [(29696, [2, 4, 8], None),  # Qwen2-72B-Instruct-GPTQ-Int4
                                                   (29568, [2], 2)])  # the bf16 model's width: 14784 = 115.5 x 128
def test_a_gptq_split_must_keep_whole_quantization_groups(tmp_path, width, sizes, refused):
    from transformers import Qwen2Config

    from llmkit.cli.bench_cmd import _check_split
    from llmkit.errors import BadInput

    Qwen2Config(hidden_size=8192, intermediate_size=width, num_attention_heads=64, num_key_value_heads=8,
                quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128}).save_pretrained(tmp_path)
    if refused is None:
        _check_split(sizes, tmp_path, gpus=8)
        return
    with pytest.raises(BadInput, match=rf"--tensor-parallel-size {refused} splits the MLP's {width} columns into "
                                       r"parts of 14784, not whole GPTQ groups of 128.*Choose one of \[1\]"):
        _check_split(sizes, tmp_path, gpus=2)


def test_bench_rejects_an_unknown_backend(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--backend", "vllm-typo"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


FAKE_VLLM = '''
import json
import os


class SamplingParams:
    def __init__(self, **kwargs):
        self.max_tokens = kwargs["max_tokens"]


class _Output:
    def __init__(self, ids, first_token_latency):
        self.outputs = [type("Completion", (), {"token_ids": ids})()]
        self.metrics = first_token_latency and type("RequestStateStats", (), {"first_token_latency": first_token_latency})()


__version__ = "0.0.fake"


class LLM:
    def __init__(self, model, max_model_len, disable_log_stats=True, **kwargs):
        self.stats = not disable_log_stats  # vLLM fills RequestOutput.metrics only then
        with open(os.environ["FAKE_VLLM_CALLS"], "a") as calls:  # what each LLM(...) was asked beyond the model
            calls.write(json.dumps(kwargs) + "\\n")

    def generate(self, prompts, params, use_tqdm=False):
        return [_Output(list(range(params.max_tokens)), 0.25 + i if self.stats else None) for i, _ in enumerate(prompts)]
'''


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """vLLM is not installed here: a stand-in `vllm` package and a `.venv-vllm` whose python is this one check the
    plumbing (vLLM in a process of its own venv), not vLLM itself. Returns the file of each LLM(...)'s arguments."""
    from llmkit.generation import bench_engines

    fake = tmp_path / "fake" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_VLLM)
    (fake / "inputs.py").write_text("def TokensPrompt(prompt_token_ids):\n    return {'prompt_token_ids': prompt_token_ids}\n")
    venv = tmp_path / ".venv-vllm"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this venv's Python
    (venv / "bin" / "python").chmod(0o755)
    monkeypatch.setattr(bench_engines, "VLLM_VENV", venv)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "fake"), str(Path(bench_engines.__file__).parents[2])]))
    monkeypatch.setenv("FAKE_VLLM_CALLS", str(tmp_path / "llm_calls.jsonl"))
    return tmp_path / "llm_calls.jsonl"


def test_bench_runs_vllm_with_the_vllm_venvs_python_after_releasing_its_model(fake_vllm, monkeypatch, capsys):
    # one run, vLLM in a process of its own venv, the transformers model freed first
    from llmkit.cli import bench_cmd

    released = []
    release = bench_cmd._LazyModel.release
    monkeypatch.setattr(bench_cmd._LazyModel, "release", lambda self: released.append(self.model is not None) or release(self))
    code = main([*SMALL, "--backend", "hf", "vllm", "--json"])
    printed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    rows = {r["requested"]: r for r in printed["results"]}
    assert code == 0 and rows["vllm"]["backend"] == "vllm" and rows["vllm"]["new_tokens"] == 4, rows["vllm"]
    assert rows["vllm"]["tokens_per_s"] > 0 and rows["hf"]["tokens_per_s"] > 0
    assert rows["vllm"]["time_to_first_token_s"] == 0.25  # the first of the requests' first tokens
    assert rows["vllm"]["details"]["vllm"] == "0.0.fake"  # the version that ran
    # the same prompts in every run: no prefix cache carrying one run's prompts into the next
    asked = [json.loads(line) for line in fake_vllm.read_text().splitlines()]
    assert asked == [{"enable_prefix_caching": False}] and rows["vllm"]["details"]["enable_prefix_caching"] is False
    ratio = printed["vllm_over_hf"]  # next to the source tutorial's 1479.95 / 800.48
    assert ratio == {"this_run": round(rows["vllm"]["tokens_per_s"] / rows["hf"]["tokens_per_s"], 2),
                     "source_tutorial": 1.85}
    assert released == [True]  # the loaded transformers model was dropped before vLLM started


def test_bench_runs_vllm_once_per_tensor_parallel_size_against_that_many_cards_limit(fake_vllm, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code = main([*SMALL, "--backend", "hf", "vllm", "--tensor-parallel-size", "1", "2", "--json"])
    printed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    rows = {r["requested"]: r for r in printed["results"]}
    assert code == 0 and list(rows) == ["hf", "vllm", "vllm-tp2"]
    assert rows["vllm"]["details"]["tensor_parallel_size"] == 1 and rows["vllm-tp2"]["details"]["tensor_parallel_size"] == 2
    asked = [json.loads(line) for line in fake_vllm.read_text().splitlines()]
    assert [a.get("tensor_parallel_size") for a in asked] == [None, 2]  # what each LLM(...) was given
    assert all(a["enable_prefix_caching"] is False for a in asked)
    steps = printed["bandwidth_limit"]["limit_steps_per_s"]
    for name, cards in (("vllm", 1), ("vllm-tp2", 2)):
        row = rows[name]
        assert row["fraction_of_limit"] == round(row["tokens_per_s"] / (row["prompts"] * cards * steps), 3)
    assert printed["vllm_over_hf"]["this_run"] == round(rows["vllm"]["tokens_per_s"] / rows["hf"]["tokens_per_s"], 2)



def test_the_table_puts_the_vllm_ratio_next_to_the_source_tutorials(capsys):
    from llmkit.cli.bench_cmd import render

    rows = [{"requested": b, "backend": b, "tokens_per_s": t} for b, t in (("hf", 1000.0), ("vllm", 1500.0))]
    render({"model": "m", "device": "GPU", "workload": {"prompts": 25, "input_len": 64, "output_len": 128},
            "bandwidth_limit": {"limit_steps_per_s": 280.0, "copy_bandwidth_gb_s": 4250.0, "device": "cuda"},
            "results": rows, "vllm_over_hf": {"this_run": 1.5, "source_tutorial": 1.85}})
    assert "vllm / hf: 1.5x in this run; 1.85x in the source tutorial" in capsys.readouterr().out
