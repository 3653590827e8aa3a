"""llmkit.hub: locate in every layout and in order, verification, and downloads against a local fake hub."""

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmkit.hub.fake import COMMIT, FakeHub
from llmkit import hub
from llmkit.hub import downloading
from llmkit.cli import main
from llmkit.errors import BadInput

REPO = "Org/Tiny-1.5B"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every cache and search place under tmp_path; no endpoint, token or model variable from outside."""
    for variable in ("HF_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "LLMKIT_MODEL_DIR",
                     "SCOW_AI_MODEL_PATH", "MODELSCOPE_ENDPOINT", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def make_model(folder: Path, shards: int = 1) -> Path:
    """A tiny complete model: config.json, a tokenizer.json stub, real safetensors weights (sharded if asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    tensors = {f"layers.{i}.weight": torch.arange(64, dtype=torch.float32) + i for i in range(2 * shards)}
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    weight_map = {}
    for k in range(shards):
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: t for name, t in tensors.items() if int(name.split(".")[1]) // 2 == k}
        save_file(part, str(folder / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def make_hf_repo(cache: Path, repo_id: str, revisions: list[str], main: str | None = None) -> Path:
    """A Hugging Face cache entry models--Org--Name with complete snapshots; refs/main -> ``main``."""
    repo_folder = cache / f"models--{repo_id.replace('/', '--')}"
    for revision in revisions:
        make_model(repo_folder / "snapshots" / revision)
    if main:
        (repo_folder / "refs").mkdir(parents=True)
        (repo_folder / "refs" / "main").write_text(main)
    return repo_folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --- locate: every layout --------------------------------------------------------------------------------------

LAYOUTS = {
    "$LLMKIT_MODEL_DIR Org/Name": ("$LLMKIT_MODEL_DIR", "llmkit_dir/Org/Tiny-1.5B"),
    "./models/Name": ("./models", "cwd/models/Tiny-1.5B"),
    "./models/Org/Name": ("./models", "cwd/models/Org/Tiny-1.5B"),
    "./models moved HF cache": ("./models", f"cwd/models/models--Org--Tiny-1.5B/snapshots/{COMMIT}"),
    "HF cache": ("Hugging Face cache", f"hf_home/hub/models--Org--Tiny-1.5B/snapshots/{COMMIT}"),
    "ModelScope old hub/Org/Name": ("ModelScope cache", "modelscope/hub/Org/Tiny-1.5B"),
    "ModelScope new hub/models/Org/Name": ("ModelScope cache", "modelscope/hub/models/Org/Tiny-1___5B"),
    "ModelScope >=1.38 models/Org--Name/snapshots": ("ModelScope cache", "modelscope/models/Org--Tiny-1.5B/snapshots/master"),
    "$SCOW_AI_MODEL_PATH Org/Name": ("$SCOW_AI_MODEL_PATH", "scow/Org/Tiny-1.5B"),
    "case-insensitive ./models/org/name": ("./models", "cwd/models/org/tiny-1.5b"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_locate_finds_each_layout(layout, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_MODEL_DIR", str(tmp_path / "llmkit_dir"))
    monkeypatch.setenv("SCOW_AI_MODEL_PATH", str(tmp_path / "scow"))
    where, relative = LAYOUTS[layout]
    folder = make_model(tmp_path / relative)
    if "HF cache" in layout:
        (folder.parent.parent / "refs").mkdir()
        (folder.parent.parent / "refs" / "main").write_text(COMMIT)
    found = hub.locate(REPO)
    assert (found.where, found.path, found.report["ok"]) == (where, folder, True)


def test_locate_explicit_path_comes_first(tmp_path):
    make_model(tmp_path / "cwd" / "models" / "Org" / "Tiny-1.5B")
    folder = make_model(tmp_path / "elsewhere")
    found = hub.locate(folder)
    assert (found.where, found.path, found.searched) == ("path", folder, [f"path {folder}"])


def test_locate_hf_cache_from_hf_home_when_hf_hub_cache_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    make_hf_repo(tmp_path / "hf_home" / "hub", REPO, [COMMIT], main=COMMIT)
    assert hub.locate(REPO).where == "Hugging Face cache"


def test_locate_default_modelscope_cache_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELSCOPE_CACHE")
    folder = make_model(tmp_path / "home" / ".cache" / "modelscope" / "hub" / "models" / "Org" / "Tiny-1___5B")
    assert hub.locate(REPO).path == folder


def test_locate_searches_in_documented_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_MODEL_DIR", str(tmp_path / "llmkit_dir"))
    monkeypatch.setenv("SCOW_AI_MODEL_PATH", str(tmp_path / "scow"))
    copies = [
        ("$LLMKIT_MODEL_DIR", make_model(tmp_path / "llmkit_dir" / REPO)),
        ("./models", make_model(tmp_path / "cwd" / "models" / REPO)),
        ("Hugging Face cache", make_hf_repo(tmp_path / "hf_home" / "hub", REPO, [COMMIT], main=COMMIT)),
        ("ModelScope cache", make_model(tmp_path / "modelscope" / "hub" / "models" / "Org" / "Tiny-1___5B")),
        ("$SCOW_AI_MODEL_PATH", make_model(tmp_path / "scow" / REPO)),
    ]
    for where, folder in copies:
        found = hub.locate(REPO)
        assert found.where == where
        shutil.rmtree(folder)
    assert [place.split(":")[0] for place in found.searched] == [
        f"path {REPO}", "$LLMKIT_MODEL_DIR", "./models", "Hugging Face cache", "ModelScope cache", "ModelScope cache",
        "$SCOW_AI_MODEL_PATH"]


def test_locate_prefers_a_complete_copy_then_falls_back_to_the_first_found(tmp_path):
    broken = make_model(tmp_path / "cwd" / "models" / REPO)
    (broken / "config.json").unlink()
    complete = make_model(tmp_path / "modelscope" / "hub" / REPO.replace(".", "___"))
    assert hub.locate(REPO).path == complete
    shutil.rmtree(complete)
    found = hub.locate(REPO)
    assert (found.path, found.report["ok"], found.report["problems"]) == (broken, False, ["config.json: missing"])


def test_moved_hf_cache_picks_refs_main_else_newest_complete(tmp_path):
    models = tmp_path / "cwd" / "models"
    old, new = "a" * 40, "b" * 40
    repo_folder = make_hf_repo(models, REPO, [old, new], main=old)
    assert hub.locate(REPO).path == repo_folder / "snapshots" / old
    shutil.rmtree(repo_folder / "refs")
    os.utime(repo_folder / "snapshots" / old, (1, 1))
    assert hub.locate(REPO).path == repo_folder / "snapshots" / new
    (repo_folder / "snapshots" / new / "tokenizer.json").unlink()
    assert hub.locate(REPO).path == repo_folder / "snapshots" / old


# --- not found -------------------------------------------------------------------------------------------------

def test_not_found_lists_places_and_download_commands(tmp_path):
    with pytest.raises(hub.ModelNotFound) as caught:
        hub.locate(REPO)
    message = str(caught.value)
    assert isinstance(caught.value, LookupError)
    for place in ("$LLMKIT_MODEL_DIR: not set", str(tmp_path / "cwd" / "models"), str(tmp_path / "hf_home" / "hub"),
                  str(tmp_path / "modelscope" / "hub"), "$SCOW_AI_MODEL_PATH: not set"):
        assert place in message
    for command in (f"llmkit download {REPO}", f"hf download {REPO}", f"modelscope download --model {REPO}"):
        assert command in message


def test_cli_locate_not_found_exits_3_with_one_line(capsys):
    assert main(["locate", REPO, "--json"]) == 3
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f"llmkit: error: model '{REPO}' not found on this machine (7 places searched); "
        f"download it with: llmkit download {REPO}"]
    data = json.loads(out)
    assert data["found"] is False and data["download"][0] == f"llmkit download {REPO}"


def test_cli_locate_found_and_incomplete(tmp_path, capsys):
    folder = make_model(tmp_path / "cwd" / "models" / REPO)
    assert main(["locate", REPO]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(folder)
    (folder / "tokenizer.json").unlink()
    assert main(["locate", REPO]) == 1
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out and "problem: tokenizer.json" in out


# --- verification ----------------------------------------------------------------------------------------------

def test_complete_models_verify(tmp_path):
    assert hub.verify_model_dir(make_model(tmp_path / "one")) == {"ok": True, "problems": [], "notes": []}
    assert hub.verify_model_dir(make_model(tmp_path / "sharded", shards=2))["ok"]


def test_truncated_shard_is_named(tmp_path):
    folder = make_model(tmp_path / "m", shards=2)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    problems = hub.verify_model_dir(folder)["problems"]
    assert len(problems) == 1 and problems[0].startswith("model-00002-of-00002.safetensors: ")
    assert "truncated" in problems[0]


@pytest.mark.parametrize("damage, expected", [
    (lambda data: data[:5], "truncated or corrupted"),
    (lambda data: (2**40).to_bytes(8, "little") + data[8:], "truncated or corrupted"),
    (lambda data: data[:8] + b"{not json" + data[17:], "unreadable header"),
    (lambda data: data + b"extra", "but its header describes"),
])
def test_corrupted_safetensors_is_named(tmp_path, damage, expected):
    folder = make_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    [problem] = hub.verify_model_dir(folder)["problems"]
    assert problem.startswith("model.safetensors: ") and expected in problem


def test_shard_missing_from_index_is_named(tmp_path):
    folder = make_model(tmp_path / "m", shards=2)
    (folder / "model-00001-of-00002.safetensors").unlink()
    assert hub.verify_model_dir(folder)["problems"] == [
        "model-00001-of-00002.safetensors: missing (listed in model.safetensors.index.json)"]


def test_download_cut_before_its_index_is_not_complete(tmp_path):
    """The shards' names say how many there are: a folder with shard 1 of 2 and no index is not a model yet."""
    folder = make_model(tmp_path / "m", shards=2)
    (folder / "model.safetensors.index.json").unlink()
    (folder / "model-00002-of-00002.safetensors").unlink()
    assert hub.verify_model_dir(folder)["problems"] == [
        "model-00002-of-00002.safetensors: missing (one of 2 shards)",
        "model.safetensors.index.json: missing (the weights are in 2 shards)"]


def test_malformed_config_is_named(tmp_path):
    folder = make_model(tmp_path / "m")
    (folder / "config.json").write_text('{"model_type": "qwen2",')
    [problem] = hub.verify_model_dir(folder)["problems"]
    assert problem.startswith("config.json: not valid JSON")


def test_missing_tokenizer_is_named_and_alternatives_count(tmp_path):
    folder = make_model(tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    [problem] = hub.verify_model_dir(folder)["problems"]
    assert problem.startswith("tokenizer.json (or tokenizer.model, vocab.json + merges.txt, *.tiktoken): missing")
    for files in (["tokenizer.model"], ["vocab.json", "merges.txt"], ["qwen.tiktoken"]):
        for name in files:
            (folder / name).write_text("{}")
        assert hub.verify_model_dir(folder)["ok"], files
        for name in files:
            (folder / name).unlink()


def test_pickle_weights_are_reported_not_loaded(tmp_path):
    folder = make_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: loading it would fail")
    report = hub.verify_model_dir(folder)
    assert report["ok"] and report["notes"] == ["pytorch_model.bin: pickle weights, present but not loaded or checked"]
    (folder / "pytorch_model.bin").unlink()
    assert hub.verify_model_dir(folder)["problems"] == [
        "model.safetensors: missing (no *.safetensors, no weight index, no *.bin)"]


# --- download against the fake hub -----------------------------------------------------------------------------

@pytest.fixture
def repo_files(tmp_path):
    source = make_model(tmp_path / "source")
    (source / "generation_config.json").write_text('{"do_sample": true}')
    return files_of(source)


@pytest.fixture
def fake_hub(repo_files, monkeypatch):
    with FakeHub(REPO, repo_files) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def never_called(*args, **kwargs):
    raise AssertionError("ModelScope must not be tried after Hugging Face succeeded")


def test_download_is_byte_identical_and_located(fake_hub, repo_files, tmp_path, monkeypatch):
    monkeypatch.setitem(downloading.SOURCES, "modelscope", never_called)
    path = hub.download(REPO)
    assert path == tmp_path / "hf_home" / "hub" / "models--Org--Tiny-1.5B" / "snapshots" / COMMIT
    assert files_of(path) == repo_files
    found = hub.locate(REPO)
    assert (found.where, found.path, found.report["ok"]) == ("Hugging Face cache", path, True)
    (path / "generation_config.json").unlink()  # not checked by name, but the Hub listed it for this revision
    assert hub.locate(REPO).report["problems"] == [
        f"generation_config.json: missing (the Hub lists it for revision {COMMIT[:12]})"]


def test_download_to_local_dir_and_llmkit_model_dir(fake_hub, repo_files, tmp_path, monkeypatch, capsys):
    assert main(["download", REPO, "--source", "hf", "--local-dir", str(tmp_path / "here"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(tmp_path / "here") and data["ok"] and data["attempts"][0]["source"] == "hf"
    assert files_of(tmp_path / "here") == repo_files
    monkeypatch.setenv("LLMKIT_MODEL_DIR", str(tmp_path / "llmkit_dir"))
    assert hub.download(REPO, source="hf") == tmp_path / "llmkit_dir" / REPO
    assert hub.locate(REPO).where == "$LLMKIT_MODEL_DIR"


def test_dropped_connection_is_resumed_with_a_range_request(fake_hub, repo_files, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)  # so the first half reaches the file before the cut
    fake_hub.cut("model.safetensors", times=1)
    path = hub.download(REPO, source="hf")
    first, resumed = fake_hub.gets("model.safetensors")
    assert first is None and 0 < int(resumed.removeprefix("bytes=").rstrip("-")) <= len(repo_files["model.safetensors"]) // 2
    assert files_of(path) == repo_files


def test_interrupted_download_fails_is_not_accepted_then_resumes(fake_hub, repo_files, tmp_path):
    fake_hub.cut("model.safetensors", times=100)
    start = time.monotonic()
    with pytest.raises(hub.DownloadFailed) as caught:
        hub.download(REPO, source="hf")
    assert time.monotonic() - start < 30
    assert caught.value.attempts[0]["source"] == "hf" and "RemoteProtocolError" in caught.value.attempts[0]["error"]
    cache = tmp_path / "hf_home" / "hub"
    assert not list(cache.rglob("*.incomplete"))
    partial = hub.locate(REPO)
    assert partial.where == "Hugging Face cache" and not partial.report["ok"]
    assert [p for p in partial.report["problems"] if p.startswith("model.safetensors: missing")]

    fake_hub.cut("model.safetensors", times=0)
    path = hub.download(REPO, source="hf")
    assert files_of(path) == repo_files
    assert len(fake_hub.gets("config.json")) == 1  # finished files were kept, not fetched again
    assert hub.locate(REPO).report["ok"]


def test_repo_missing_on_the_hub_is_reported(fake_hub):
    with pytest.raises(hub.DownloadFailed) as caught:
        hub.download("Org/Other", source="hf")
    assert caught.value.attempts[0]["error"].startswith("RepositoryNotFoundError")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_endpoint_fails_fast_with_clear_message(monkeypatch, capsys):
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETtoken123")
    start = time.monotonic()
    assert main(["download", REPO, "--source", "hf"]) == 1
    assert time.monotonic() - start < 5
    out, err = capsys.readouterr()
    [line] = err.strip().splitlines()
    assert line.startswith(f"llmkit: error: could not download '{REPO}' (hf: ConnectionError: cannot reach {url}")
    assert "hf_SECRETtoken123" not in out + err
    with pytest.raises(hub.ModelNotFound):
        hub.locate(REPO)


def test_unreachable_modelscope_fails_fast(monkeypatch):
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed_port_url())
    start = time.monotonic()
    with pytest.raises(hub.DownloadFailed, match="modelscope: ConnectionError: cannot reach"):
        hub.download(REPO, source="modelscope")
    assert time.monotonic() - start < 5


def test_auto_falls_back_to_modelscope_and_reports_both(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    calls = []

    def fake_modelscope(model_id, local_dir, revision, allow_pickle):
        calls.append((model_id, local_dir, revision))
        return make_model(tmp_path / "modelscope" / "models" / "Org--Tiny-1.5B" / "snapshots" / "master")

    monkeypatch.setitem(downloading.SOURCES, "modelscope", fake_modelscope)
    result = hub.download_report(REPO, revision="v1")
    assert calls == [(REPO, None, "v1")]
    assert [(a["source"], a["ok"]) for a in result["attempts"]] == [("hf", False), ("modelscope", True)]
    assert "cannot reach" in result["attempts"][0]["error"]
    assert result["source"] == "modelscope" and result["report"]["ok"]
    assert hub.locate(REPO).where == "ModelScope cache"


def test_auto_reports_every_attempt_when_all_fail(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())

    def failing_modelscope(model_id, local_dir, revision, allow_pickle):
        raise RuntimeError("NotExistError: repo Org/Tiny-1.5B not found\nsecond line\nthird line")

    monkeypatch.setitem(downloading.SOURCES, "modelscope", failing_modelscope)
    with pytest.raises(hub.DownloadFailed) as caught:
        hub.download(REPO)
    assert [(a["source"], a["ok"]) for a in caught.value.attempts] == [("hf", False), ("modelscope", False)]
    assert caught.value.attempts[1]["error"] == "RuntimeError: NotExistError: repo Org/Tiny-1.5B not found second line"


def test_bad_source_or_id_is_bad_input():
    with pytest.raises(BadInput):
        hub.download(REPO, source="github")
    with pytest.raises(BadInput):
        hub.download("just-a-name")
