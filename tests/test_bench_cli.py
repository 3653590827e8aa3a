import json

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
