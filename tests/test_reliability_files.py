"""Outputs are never overwritten unless asked, never left half-written (a full disk, a write past a file-size limit),
and a training run killed with SIGKILL resumes from its last complete checkpoint."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers.trainer_utils import get_last_checkpoint

from llmkit.deploy import gguf
from llmkit.finetune import llamafactory as lf
from llmkit.cli import error_line, main
from llmkit.errors import BadInput, LlmkitError
from llmkit.safe_output import atomic_output, partial_path
from llmkit.finetune.sft import prepare_output_dir, save_model
from llmkit.finetune.sft_data import write_identity_dataset

REPO = Path(__file__).resolve().parents[1]
OLD = b"old complete output \x00\xff"
BENCH = ["bench", "--prompts", "2", "--input-len", "8", "--output-len", "4", "--repeats", "1"]


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its bytes: equal snapshots mean nothing was touched or left."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def make_old(target: Path, folder: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        (target / "sub").mkdir(parents=True)
        (target / "model.safetensors").write_bytes(OLD)
        (target / "sub" / "notes.txt").write_bytes(OLD)
    else:
        target.write_bytes(OLD)


def cli_refusal(argv: list[str], capsys) -> str:
    """Run ``llmkit ARGV``, which must refuse with exit code 2; returns its stderr."""
    assert main(argv) == 2
    return capsys.readouterr().err


# writer: (target relative to tmp_path, whether it is a folder, the call that must refuse, how to ask to overwrite)
WRITERS = {
    "sft.save_model": ("merged", True, lambda t, d, c: save_model(object(), object(), t), "overwrite=True"),
    "sft.prepare_output_dir": ("lora", True, lambda t, d, c: prepare_output_dir(t), "overwrite=True"),
    "sft_data.write_identity_dataset": (
        "data/identity.json", False, lambda t, d, c: write_identity_dataset(t.parent, "小K", "x"), "overwrite=True"),
    "llamafactory.write_configs": (
        "configs/train.yaml", False, lambda t, d, c: lf.write_configs(lf.LoraSettings("m", "d", "o", "e"), t.parent),
        "overwrite=True"),
    "llamafactory.run_cli export": (
        "lf-merged", True, lambda t, d, c: lf.run_cli("export", t.parent / "export.yaml", venv=t.parent / "no-venv"),
        "overwrite=True"),
    "gguf.convert": ("model.gguf", False, lambda t, d, c: gguf.convert(d, t), "overwrite=True"),
    "gguf.quantize": ("q4.gguf", False, lambda t, d, c: gguf.quantize(t.with_name("model.gguf"), t), "overwrite=True"),
    "llmkit gguf": ("cli.gguf", False, lambda t, d, c: cli_refusal(["gguf", str(d), str(t)], c), "--overwrite"),
    "llmkit bench --out": ("bench.json", False, lambda t, d, c: cli_refusal([*BENCH, "--out", str(t)], c),
                           "--overwrite"),
    "llmkit bench --chart": ("bench.png", False, lambda t, d, c: cli_refusal([*BENCH, "--chart", str(t)], c),
                             "--overwrite"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_refuses_an_existing_output_and_leaves_it_as_it_was(writer, tmp_path, chat_dir, capsys):
    name, folder, call, flag = WRITERS[writer]
    target = tmp_path / name
    make_old(target, folder)
    (tmp_path / "model.gguf").write_bytes(OLD)  # the quantizer's source
    (tmp_path / "export.yaml").write_text(f"export_dir: {tmp_path / 'lf-merged'}\n")  # LLaMA-Factory's export config
    before = snapshot(tmp_path)
    try:
        message = call(target, chat_dir, capsys)
    except BadInput as refusal:
        message = str(refusal)
    assert snapshot(tmp_path) == before  # byte-identical, and no .partial or other file appeared
    assert str(target) in message and "left untouched" in message
    assert f"choose another name or pass {flag} to replace it" in message


def test_a_failed_write_leaves_neither_the_file_nor_a_partial(tmp_path):
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_output(tmp_path / "results.json") as partial:
            partial.write_text("half")
            raise RuntimeError("writer crashed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_the_old_output_survives_a_failed_replacement(tmp_path, folder):
    target = tmp_path / "out"
    make_old(target, folder)
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_output(target, overwrite=True) as partial:
            make_old(partial, folder)
            raise RuntimeError("writer crashed")
    assert snapshot(tmp_path) == before


def test_the_old_folder_survives_when_the_new_one_cannot_be_moved_in(tmp_path, monkeypatch):
    target = tmp_path / "merged"
    make_old(target, folder=True)
    before = snapshot(tmp_path)
    replace = os.replace

    def failing_replace(src, dst):
        if Path(src) == partial_path(target):  # old folder already renamed aside: the worst moment to fail
            raise OSError(errno.EIO, "Input/output error")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        with atomic_output(target, overwrite=True) as partial:
            partial.mkdir()
            (partial / "model.safetensors").write_bytes(b"new")
    assert snapshot(tmp_path) == before


def test_overwriting_swaps_the_new_folder_in_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "merged"
    make_old(target, folder=True)
    (tmp_path / ".merged.partial").mkdir()  # left by a run that was killed
    save_model(Saver("model.safetensors"), Saver("tokenizer.json"), target, overwrite=True)
    assert snapshot(tmp_path) == {"merged": None, "merged/model.safetensors": b"new", "merged/tokenizer.json": b"new"}


class Saver:
    """Stands in for a model or tokenizer: ``save_pretrained`` writes one file, then fails if told to."""

    def __init__(self, file_name: str, error: Exception | None = None):
        self.file_name, self.error = file_name, error

    def save_pretrained(self, folder, **kwargs):
        Path(folder).mkdir(exist_ok=True)
        (Path(folder) / self.file_name).write_bytes(b"new")
        if self.error:
            raise self.error


def test_a_full_disk_keeps_the_old_model_and_says_where_and_how_much_room_is_left(tmp_path, monkeypatch):
    target = tmp_path / "merged"
    make_old(target, folder=True)
    before = snapshot(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 300 * 2**20, 300 * 2**20))
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(LlmkitError) as raised:
        save_model(Saver("model-00001-of-00002.safetensors", full), Saver("tokenizer.json"), target, overwrite=True)
    assert str(raised.value) == (
        f"the disk is full: could not finish writing {target} (300.0 MiB free in {tmp_path}); nothing half-written "
        "was left and the previous merged is unchanged. Free some space there or choose a folder on another disk")
    assert raised.value.__cause__ is full and error_line(raised.value)[1] == 1
    assert snapshot(tmp_path) == before


LIMITED_WRITES = r"""
import json, resource, signal, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmkit.deploy import gguf
from llmkit.finetune.sft import save_model

chat_dir, work = sys.argv[1], Path(sys.argv[2])
model, tokenizer = AutoModelForCausalLM.from_pretrained(chat_dir), AutoTokenizer.from_pretrained(chat_dir)
gguf.convert(chat_dir, work / "f16.gguf")  # the quantizer's source, written before the limit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, resource.RLIM_INFINITY))  # files stop growing at 2 MiB
calls = {
    "save_model over an old copy": lambda: save_model(model, tokenizer, work / "merged", True, "10MB"),
    "save_model to a new folder": lambda: save_model(model, tokenizer, work / "new-merged", max_shard_size="10MB"),
    "convert": lambda: gguf.convert(chat_dir, work / "model.gguf", overwrite=True),
    "quantize": lambda: gguf.quantize(work / "f16.gguf", work / "q8.gguf", "q8_0", overwrite=True),
}
results = {}
for name, call in calls.items():
    try:
        results[name] = {"type": "no error", "path": str(call())}
    except Exception as error:
        results[name] = {"type": type(error).__name__, "message": str(error), "cause": type(error.__cause__).__name__}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def limited(chat_dir, tmp_path_factory):
    """Saves and conversions run in a process whose files cannot grow past 2 MiB (RLIMIT_FSIZE): real failed writes."""
    work = tmp_path_factory.mktemp("limited")
    shutil.copytree(chat_dir, work / "merged")  # an older complete model, to be replaced
    (work / "model.gguf").write_bytes(OLD)
    (work / "q8.gguf").write_bytes(OLD)
    before = snapshot(work)
    done = subprocess.run([sys.executable, "-c", LIMITED_WRITES, str(chat_dir), str(work)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    before["f16.gguf"] = (work / "f16.gguf").read_bytes()
    return work, before, json.loads(done.stdout.strip().splitlines()[-1])


def test_a_model_save_cut_off_by_a_file_size_limit_keeps_the_old_copy(limited):
    work, before, results = limited
    for call in ("save_model over an old copy", "save_model to a new folder"):
        result = results[call]
        assert (result["type"], result["cause"]) == ("LlmkitError", "SafetensorError")
        assert result["message"].startswith("a file grew past the largest size allowed here (`ulimit -f`")
        assert room_left(work).search(result["message"])
    assert "the previous merged is unchanged" in results["save_model over an old copy"]["message"]
    assert snapshot(work) == before  # the old model byte-identical; no new-merged, no .partial


@pytest.mark.parametrize("call", ["convert", "quantize"])
def test_a_gguf_write_cut_off_by_a_file_size_limit_keeps_the_old_file(limited, call):
    work, before, results = limited
    result = results[call]
    if call == "convert":  # the converter's traceback says [Errno 27]: explained like a full disk
        assert result["type"] == "LlmkitError" and result["message"].startswith("a file grew past the largest size")
        assert "the previous model.gguf is unchanged" in result["message"]
    else:  # llama.cpp returns only a status; the message says it stopped while writing, and the room left
        assert result["type"] == "RuntimeError" and "stopped while writing .q8.gguf.partial" in result["message"]
        assert "if the disk is full, free some space there" in result["message"]
    assert room_left(work).search(result["message"])
    assert snapshot(work) == before


def room_left(folder: Path) -> re.Pattern:
    return re.compile(rf"\(\d+\.\d [GM]iB free in {re.escape(str(folder))}\)")


def complete_checkpoint(folder: Path, step: int) -> None:
    """A small checkpoint with the files ``Trainer`` writes for a LoRA run (weights, optimizer, state last)."""
    folder.mkdir(parents=True)
    save_file({"lora_A": torch.zeros(4, 8)}, folder / "adapter_model.safetensors")
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BREAKS = {
    "no trainer_state.json": lambda c: (c / "trainer_state.json").unlink(),
    "trainer_state.json is cut short": lambda c: cut_short(c / "trainer_state.json"),
    "adapter_model.safetensors is cut short": lambda c: cut_short(c / "adapter_model.safetensors"),
    "optimizer.pt is cut short": lambda c: cut_short(c / "optimizer.pt"),
}


@pytest.mark.parametrize("problem", BREAKS)
def test_a_half_written_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, problem):
    complete_checkpoint(tmp_path / "checkpoint-6", 6)
    complete_checkpoint(tmp_path / "checkpoint-9", 9)
    BREAKS[problem](tmp_path / "checkpoint-9")
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-9")  # transformers would take it
    with pytest.warns(UserWarning, match=f"skipped {re.escape(str(tmp_path))}/checkpoint-9: {problem}, so its save"):
        assert prepare_output_dir(tmp_path) == str(tmp_path / "checkpoint-6")


def test_with_no_complete_checkpoint_training_starts_afresh(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.warns(UserWarning, match="checkpoint-3: no trainer_state.json"):
        assert prepare_output_dir(tmp_path) is None


SCRIPT = REPO / "tests" / "finetune" / "lora_train_script.py"
MAX_STEPS, SAVE_STEPS = 12, 3  # as in the script


def train(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)


def steps(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if re.fullmatch(r"step \d+", line)]


def test_a_training_run_killed_mid_run_resumes_losing_at_most_one_save_interval(tmp_path):
    out = tmp_path / "lora"
    first = train(out, "0.3")  # slowed steps: the kill lands mid-run, not after the end
    guard = threading.Timer(150, first.kill)
    guard.start()
    seen = []
    for line in first.stdout:
        seen.append(line.strip())
        if steps(seen) and steps(seen)[-1] >= 8:  # checkpoint-6 is saved and two more steps are done
            os.kill(first.pid, signal.SIGKILL)
            break
    seen += first.stdout.read().splitlines()
    first.wait()
    guard.cancel()
    done_before_kill = max(steps(seen))
    assert first.returncode == -signal.SIGKILL and done_before_kill < MAX_STEPS, seen[-20:]

    checkpoint = prepare_output_dir(out)
    saved = int(Path(checkpoint).name.split("-")[1])
    assert 0 <= done_before_kill - saved <= SAVE_STEPS
    half_written = out / f"checkpoint-{saved + SAVE_STEPS}"  # as if the kill came while saving the next one
    if not half_written.exists():
        shutil.copytree(checkpoint, half_written)
        (half_written / "trainer_state.json").unlink()
        cut_short(half_written / "adapter_model.safetensors")

    second = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, cwd=REPO,
                            timeout=150)
    lines = second.stdout.splitlines()
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resume-from checkpoint-{saved}" in lines and f"skipped {half_written}" in second.stderr
    assert steps(lines) == list(range(saved + 1, MAX_STEPS + 1)) and lines[-1] == f"done {MAX_STEPS}"
    state = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    assert [row["step"] for row in state["log_history"] if "loss" in row] == list(range(1, MAX_STEPS + 1))
