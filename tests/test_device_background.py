"""benchmarks/device_background.sh: GPU work longer than one device call, started in one call and collected later."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_background.sh"


def background(*args, tmp_path, out=None):
    env = {"PATH": "/usr/bin:/bin", "BG_DIR": str(tmp_path / "bg"), "OUT": str(out or tmp_path / "unused")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_started_work_is_collected_once_done_with_its_exit_code(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job = "sleep 6; echo 42 > $OUT/result.json; echo finished; exit 4"
    assert background("start", "job", "bash", "-c", job, tmp_path=tmp_path).returncode == 0
    early = background("wait", "job", "0", tmp_path=tmp_path, out=out)
    assert early.returncode == 3 and "still running" in early.stdout and not list(out.iterdir())
    done = background("wait", "job", "30", tmp_path=tmp_path, out=out)
    assert done.returncode == 0 and "job done, exit 4" in done.stdout
    assert (out / "result.json").read_text() == "42\n" and "finished" in (out / "job.log").read_text()


def test_a_name_is_started_once_and_bad_calls_say_how_to_call(tmp_path):
    assert background("start", "job", "true", tmp_path=tmp_path).returncode == 0
    again = background("start", "job", "true", tmp_path=tmp_path)
    assert again.returncode == 2 and "started on this machine already" in again.stderr
    for args in ([], ["start"], ["stop", "job"]):
        wrong = background(*args, tmp_path=tmp_path)
        assert wrong.returncode == 2 and "usage:" in wrong.stderr
