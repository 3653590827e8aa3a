import json
import os
import sys
from pathlib import Path

import pytest

from llmkit.cli import main

SMALL = ["bench", "--prompts", "2", "--input-len", "8", "--output-len", "4", "--repeats", "1"]


def test_bench_writes_json_and_chart(tmp_path, capsys):
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
    code = main([*SMALL, "--backend", "hf-graph-compile", "--compile-mode", "max-autotune-no-cudagraphs", "--json"])
    printed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert code == 0 and modes == ["max-autotune-no-cudagraphs"]
    assert printed["results"][0]["details"]["compile_mode"] == "max-autotune-no-cudagraphs"
    with pytest.raises(SystemExit) as refused:
        main([*SMALL, "--compile-mode", "reduce-overhead"])  # its CUDA graphs would clash with GraphDecoder's
    assert refused.value.code == 2 and "invalid choice" in capsys.readouterr().err


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


def test_bench_rejects_an_unknown_backend(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--backend", "vllm-typo"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


FAKE_VLLM = '''
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

    def generate(self, prompts, params, use_tqdm=False):
        return [_Output(list(range(params.max_tokens)), 0.25 + i if self.stats else None) for i, _ in enumerate(prompts)]
'''


def test_bench_runs_vllm_with_the_vllm_venvs_python_after_releasing_its_model(tmp_path, monkeypatch, capsys):
    # vLLM is not installed here: a stand-in `vllm` package and a `.venv-vllm` whose python is this one check the
    # plumbing (one run, vLLM in a process of its own venv, the transformers model freed first), not vLLM itself
    from llmkit.generation import bench_engines
    from llmkit.cli import bench_cmd

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
    ratio = printed["vllm_over_hf"]  # next to the source tutorial's 1479.95 / 800.48
    assert ratio == {"this_run": round(rows["vllm"]["tokens_per_s"] / rows["hf"]["tokens_per_s"], 2),
                     "source_tutorial": 1.85}
    assert released == [True]  # the loaded transformers model was dropped before vLLM started



def test_the_table_puts_the_vllm_ratio_next_to_the_source_tutorials(capsys):
    from llmkit.cli.bench_cmd import render

    rows = [{"requested": b, "backend": b, "tokens_per_s": t} for b, t in (("hf", 1000.0), ("vllm", 1500.0))]
    render({"model": "m", "device": "GPU", "workload": {"prompts": 25, "input_len": 64, "output_len": 128},
            "bandwidth_limit": {"limit_steps_per_s": 280.0, "copy_bandwidth_gb_s": 4250.0, "device": "cuda"},
            "results": rows, "vllm_over_hf": {"this_run": 1.5, "source_tutorial": 1.85}})
    assert "vllm / hf: 1.5x in this run; 1.85x in the source tutorial" in capsys.readouterr().out
