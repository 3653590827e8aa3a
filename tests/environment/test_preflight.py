"""llmkit.environment.preflight reads the real-mode result files; each status a learner can see."""

import json

import pytest

from llmkit.errors import BadInput
from llmkit.environment.preflight import preflight


def run(passed=8, failed=0, skips=(), failures=()):
    return {"passed": passed, "failed": failed, "skipped_by_notebook": len(skips), "peak_gpu_gib": 15.5, "wall_s": 80.0,
            "skips": [{"cell": 7, "message": m} for m in skips], "failures": [{"cell": 3, "error": e} for e in failures],
            "commit": "abc1234", "disk_written_gib": 2.5}


def test_each_card_says_what_was_measured_or_that_nothing_was(tmp_path, capsys):
    skip = "[skipped] Qwen/Qwen2-72B-Instruct-GPTQ-Int4 needs about 42 GiB but this card has 23 GiB free: nothing"
    (tmp_path / "realmode_24gb.json").write_text(json.dumps({"notebooks": {"03_x": run(skips=[skip])}}))
    oom = run(failed=1, failures=["OutOfMemoryError: CUDA out of memory"])
    (tmp_path / "realmode_80gb.json").write_text(json.dumps({"notebooks": {"03_x": oom}}))
    rows = preflight("03_x", ["Qwen/Qwen2-72B-Instruct-GPTQ-Int4"], results=tmp_path)
    out = capsys.readouterr().out
    assert "download: Qwen/Qwen2-72B-Instruct-GPTQ-Int4 41.6 GB" in out
    assert "disk: 41.6 GB of downloads + 2.5 GiB that the notebook writes" in out
    assert "a first run adds the download (about 14 min at 50 MB/s)" in out
    assert [r["status"].split(",")[0].split(" (")[0] for r in rows] == [
        "runs", "not measured at this size yet", "1 cell(s) failed in the last measured run"]
    assert "needs about 42 GiB but this card has 23 GiB free" in rows[0]["status"]
    assert rows[0]["peak_gib"] == 15.5 and rows[1]["peak_gib"] is None and not rows[0]["fits_by_estimate"]
    assert "abc1234" in rows[2]["status"] and "OutOfMemoryError" in rows[2]["status"]


def test_a_notebook_that_ran_fully_says_so_and_no_models_is_bad_input(tmp_path):
    (tmp_path / "realmode_24gb.json").write_text(json.dumps({"notebooks": {"02_x": run()}}))
    assert preflight("02_x", ["Qwen/Qwen2-7B-Instruct"], cards=(24,), results=tmp_path)[0]["status"] == "runs fully"
    with pytest.raises(BadInput, match="name the models"):
        preflight("02_x", [], results=tmp_path)


def test_a_run_that_used_more_than_the_card_is_not_a_confirmation(tmp_path):
    over = {**run(), "peak_gpu_gib": 30.2}
    (tmp_path / "realmode_24gb.json").write_text(json.dumps({"notebooks": {"08_x": over}}))
    status = preflight("08_x", ["Qwen/Qwen2-7B-Instruct"], cards=(24,), results=tmp_path)[0]["status"]
    assert status == "not confirmed at this size: the measured run used 30.2 GiB, more than the card has"
