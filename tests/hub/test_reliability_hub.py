"""llmkit.hub under failure (issue 7): typos, offline machines, broken or hanging mirrors, a download killed and run
again, file names that try to escape, pickle weights, secrets in errors, and property-based checks of locate and
verify_model_dir. The fixtures (every cache under tmp_path, the fake hub) come from test_hub."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as safetensors_bytes

from llmkit import hub
from llmkit.hub import downloading
from llmkit.cli import main
from llmkit.hub.fake import COMMIT, FakeHub
import test_hub
from test_hub import REPO, files_of, make_hf_repo, make_model

isolated, repo_files, fake_hub = test_hub.isolated, test_hub.repo_files, test_hub.fake_hub  # test_hub's fixtures

TOKEN = "hf_" + "Q7wErTy9" * 4 + "zz"  # shaped like a real Hugging Face token (hf_ + 34 letters and digits)
FIXTURES_PER_EXAMPLE = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("llmkit: error:")]


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


# --- 1. a typo'd model id: "did you mean" from what is on disk ------------------------------------------------------

def test_typo_suggests_the_model_in_the_cache_and_unrelated_ids_get_none(tmp_path):
    make_hf_repo(tmp_path / "hf_home" / "hub", "Qwen/Qwen2-7B-Instruct", [COMMIT], main=COMMIT)
    with pytest.raises(hub.ModelNotFound) as caught:
        hub.locate("Qwen/Qwen2-7B-Instuct")
    assert caught.value.suggestions == ["Qwen/Qwen2-7B-Instruct"]
    assert "did you mean Qwen/Qwen2-7B-Instruct?" in str(caught.value)
    assert caught.value.hint == ("did you mean Qwen/Qwen2-7B-Instruct? If not, download it with: "
                                 "llmkit download Qwen/Qwen2-7B-Instuct")
    with pytest.raises(hub.ModelNotFound) as unrelated:
        hub.locate("Meta/Llama-3-8B")
    assert unrelated.value.suggestions == [] and "did you mean" not in str(unrelated.value)


@pytest.mark.parametrize("relative, suggestion", [
    ("cwd/models/Qwen/Qwen2-0.5B-Instruct", "Qwen/Qwen2-0.5B-Instruct"),
    ("cwd/models/Qwen2-0.5B-Instruct", "Qwen2-0.5B-Instruct"),
    ("modelscope/hub/models/Qwen/Qwen2-0___5B-Instruct", "Qwen/Qwen2-0.5B-Instruct"),
    ("modelscope/models/Qwen--Qwen2-0.5B-Instruct/snapshots/master", "Qwen/Qwen2-0.5B-Instruct"),
    ("scow/Qwen/Qwen2-0.5B-Instruct", "Qwen/Qwen2-0.5B-Instruct"),
], ids=["models-org-name", "models-name", "modelscope-escaped", "modelscope-snapshots", "scow"])
def test_suggestions_come_from_every_layout(relative, suggestion, tmp_path, monkeypatch):
    monkeypatch.setenv("SCOW_AI_MODEL_PATH", str(tmp_path / "scow"))
    make_model(tmp_path / relative)
    with pytest.raises(hub.ModelNotFound) as caught:
        hub.locate("Qwen/Qwen2-0.5B-Instuct")
    assert caught.value.suggestions == [suggestion]


def test_cli_locate_typo_is_one_line_with_the_suggestion(tmp_path, capsys):
    make_model(tmp_path / "cwd" / "models" / "Qwen" / "Qwen2-7B-Instruct")
    assert main(["locate", "Qwen/Qwen2-7B-Instuct"]) == 3
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "llmkit: error: model 'Qwen/Qwen2-7B-Instuct' not found on this machine (7 places searched); did you mean "
        "Qwen/Qwen2-7B-Instruct? If not, download it with: llmkit download Qwen/Qwen2-7B-Instuct"]
    assert "Did you mean: Qwen/Qwen2-7B-Instruct" in out


# --- 2. offline: HF_HUB_OFFLINE ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1", "true"])
def test_offline_with_nothing_cached_fails_at_once_naming_the_variable(value, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    start = time.monotonic()
    with pytest.raises(hub.DownloadFailed) as caught:
        hub.download(REPO, source="hf")
    assert time.monotonic() - start < 3
    assert fake_hub.requests == [], "offline means no request at all"
    message = str(caught.value)
    assert f"HF_HUB_OFFLINE={value} is set" in message and "Unset HF_HUB_OFFLINE" in message
    assert "SCOW's login node" in message and "LLMKIT_MODEL_DIR" in message


def test_cli_offline_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert main(["download", REPO, "--source", "hf"]) == 1
    assert time.monotonic() - start < 3
    assert error_lines(capsys.readouterr().err) == [
        f"llmkit: error: could not download '{REPO}' (hf: OfflineMode: HF_HUB_OFFLINE=1 is set, so nothing is "
        f"downloaded, and {REPO} is not complete in the Hugging Face cache). Unset HF_HUB_OFFLINE if this machine has "
        f"internet; otherwise download on a machine that has (e.g. SCOW's login node: llmkit download {REPO}), then "
        "copy the folder here or set LLMKIT_MODEL_DIR to the folder that holds it."]


def test_offline_returns_a_copy_already_downloaded(fake_hub, repo_files, monkeypatch):
    path = hub.download(REPO, source="hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = len(fake_hub.requests)
    assert hub.download(REPO, source="hf") == path
    assert len(fake_hub.requests) == requests and files_of(path) == repo_files


def test_offline_in_auto_mode_still_names_the_variable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def unreachable_modelscope(model_id, local_dir, revision, allow_pickle):
        raise ConnectionError("cannot reach https://modelscope.cn")

    monkeypatch.setitem(downloading.SOURCES, "modelscope", unreachable_modelscope)
    with pytest.raises(hub.DownloadFailed, match="Unset HF_HUB_OFFLINE if this machine has internet"):
        hub.download(REPO)


# --- 3. a mirror that answers errors or nothing ------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 403])
def test_mirror_answering_an_http_error_fails_with_its_status_and_what_to_do(status, fake_hub, capsys):
    fake_hub.answer_status(status)
    start = time.monotonic()
    assert main(["download", REPO, "--source", "hf"]) == 1
    assert time.monotonic() - start < 30
    [line] = error_lines(capsys.readouterr().err)
    token_hint = " (a private or gated repository also needs HF_TOKEN with access to it)" if status == 403 else ""
    assert line == (f"llmkit: error: could not download '{REPO}' (hf: ConnectionError: {fake_hub.url} answered HTTP "
                    f"{status}{token_hint}). Try another mirror in HF_ENDPOINT, or unset HF_ENDPOINT to use "
                    "https://huggingface.co, or download from ModelScope with --source modelscope.")


@pytest.mark.parametrize("stalled", ["", "/resolve/"], ids=["everything", "files only"])
def test_mirror_that_never_answers_fails_after_the_answer_timeout(stalled, fake_hub, monkeypatch):
    monkeypatch.setattr(downloading, "ANSWER_TIMEOUT_S", 1)
    fake_hub.stall(stalled)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(raised_by(hub.download, REPO, source="hf")), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the download still waits for the mirror after 10 s"
    assert isinstance(outcome[0], hub.DownloadFailed) and f"no answer from {fake_hub.url} within 1 s" in str(outcome[0])


def raised_by(function, *args, **kwargs) -> BaseException | None:
    try:
        function(*args, **kwargs)
    except BaseException as error:  # the test looks at whatever it was
        return error
    return None


def test_cli_hanging_mirror_ends_within_30_s_with_the_default_timeout(fake_hub, tmp_path):
    fake_hub.stall()
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "download", REPO, "--source", "hf"],
                            capture_output=True, text=True, timeout=90, cwd=tmp_path / "cwd")
    assert time.monotonic() - start < 30
    assert result.returncode == 1
    [line] = error_lines(result.stderr)
    assert f"no answer from {fake_hub.url} within {downloading.ANSWER_TIMEOUT_S} s" in line
    assert "Try another mirror in HF_ENDPOINT, or unset HF_ENDPOINT" in line and "--source modelscope" in line


# --- 4. a download killed halfway (SIGKILL), then run again -------------------------------------------------------

def test_killed_download_is_not_complete_then_completes_and_its_partial_file_is_removed(tmp_path, monkeypatch):
    """A real kill of ``llmkit download`` while the one large file is half on disk.

    The run again resumes file by file: files finished before the kill (a whole shard) are kept and not fetched again.
    huggingface_hub 2.4 resumes a dropped connection within one run (test_hub's Range test), but after a kill it starts
    the cut file again: each process writes to its own ``<etag>.<random>.incomplete`` (huggingface_hub PR #4228) and no
    later process reads it. llmkit's part: the killed copy is never reported complete, and its orphaned partial file,
    which would otherwise stay on disk for ever (GBs per kill), is deleted by the next download.
    """
    big = safetensors_bytes({"w": np.random.default_rng(0).standard_normal(3 * 2**20).astype(np.float32)})  # 12 MiB
    first, cut = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"  # a sharded model, as 7B ones are
    index = {"metadata": {}, "weight_map": {"v": first, "w": cut}}
    files = {**{name: data for name, data in files_of(make_model(tmp_path / "source")).items()
                if name != "model.safetensors"},
             first: safetensors_bytes({"v": np.ones(2**19, dtype=np.float32)}),  # 2 MiB, not throttled
             cut: big, "model.safetensors.index.json": json.dumps(index).encode()}
    local_dir, chunk = tmp_path / "D", 10 * 2**20  # huggingface_hub writes to disk in chunks of 10 MiB
    with FakeHub(REPO, files) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        fake.throttle(cut, bytes_per_s=2**18, burst=chunk + 2**19)  # then the last 1.5 MiB take 6 s
        process = subprocess.Popen([sys.executable, "-m", "llmkit.cli", "download", REPO, "--source", "hf",
                                    "--local-dir", str(local_dir)], cwd=tmp_path / "cwd",
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # the cut file's own partial file (named after its sha256 etag): the first shard's is renamed when done
            partial = wait_for_partial_file(local_dir / ".cache" / "huggingface" / "download", timeout_s=60,
                                            pattern=f"*{hashlib.sha256(big).hexdigest()}*.incomplete")
            wait_for_partial_file(local_dir, timeout_s=60, pattern=first)  # the first shard is complete
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert 0 < partial.stat().st_size < len(big) and not (local_dir / cut).exists()
        assert not hub.verify_model_dir(local_dir)["ok"]
        assert not hub.locate(local_dir).report["ok"]

        fake.throttle(cut, None)
        long_ago = time.time() - hub.STALE_PARTIAL_S - 60
        os.utime(partial, (long_ago, long_ago))  # the next download comes later
        assert hub.download(REPO, source="hf", local_dir=local_dir) == local_dir
        assert files_of(local_dir) == files and hub.verify_model_dir(local_dir)["ok"]
        assert not partial.exists(), "the killed run's partial file is gone"
        assert fake.gets(cut)[-1] is None, "huggingface_hub 2.4 restarts the cut file (see the docstring)"
        assert fake.gets(first) == [None], "the shard finished before the kill is not fetched again"


def wait_for_partial_file(folder: Path, timeout_s: float, pattern: str = "*.incomplete") -> Path:
    """The first non-empty file matching pattern under folder, polling until timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in folder.glob(pattern):
            with contextlib.suppress(FileNotFoundError):  # renamed between the listing and the look
                if path.stat().st_size > 0:
                    return path
        time.sleep(0.05)
    raise AssertionError(f"no partial download appeared in {folder} within {timeout_s} s")


# --- 5. file names that would escape the target folder -----------------------------------------------------------

ESCAPES = ["../escape.txt", "/abs/path.txt", "sub/../../x"]


@pytest.mark.parametrize("into", ["local_dir", "cache"])
@pytest.mark.parametrize("bad", ESCAPES)
def test_names_escaping_the_folder_are_refused_and_nothing_lands_outside(bad, into, repo_files, tmp_path,
                                                                         monkeypatch):
    before = files_under(tmp_path)
    local_dir = tmp_path / "D" if into == "local_dir" else None
    with FakeHub(REPO, {**repo_files, bad: b"pwned"}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(hub.DownloadFailed) as caught:
            hub.download(REPO, source="hf", local_dir=local_dir)
    assert str(caught.value) == (
        f"refused to download {REPO}: its file list has names that would be written outside the download folder "
        f"({bad!r}); nothing was written outside it. Ask the repository's owner to rename these files, or use another "
        "repository.")
    assert_nothing_outside(tmp_path, before, local_dir)


def assert_nothing_outside(tmp_path: Path, before: set[Path], local_dir: Path | None) -> None:
    """No new file outside local_dir and the hub cache (huggingface_hub records refs there for local_dir too)."""
    inside = [tmp_path / "hf_home" / "hub", *([local_dir] if local_dir else [])]
    new = [path for path in files_under(tmp_path) - before if not any(path.is_relative_to(root) for root in inside)]
    assert new == []
    assert not [path for path in files_under(tmp_path) if path.name in {"escape.txt", "path.txt", "x"}]
    assert not Path("/abs/path.txt").exists()


@pytest.mark.parametrize("bad", ESCAPES)
def test_huggingface_hub_itself_refuses_them_behind_llmkits_check(bad, repo_files, tmp_path, monkeypatch):
    """huggingface_hub 2.4 validates every name it writes; with llmkit's own check off, nothing escapes either."""
    monkeypatch.setattr(downloading, "unsafe_file_names", lambda names: [])
    before = files_under(tmp_path)
    with FakeHub(REPO, {**repo_files, bad: b"pwned"}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        with pytest.raises(hub.DownloadFailed, match=f"names that would be written outside the download folder "
                                                     f"\\({bad!r}\\)"):
            hub.download(REPO, source="hf", local_dir=tmp_path / "D")
    assert_nothing_outside(tmp_path, before, tmp_path / "D")


def fake_modelscope(monkeypatch, names: list[str], endpoint: str) -> list[dict]:
    """ModelScope's client replaced: the repo lists ``names``; returns the snapshot_download calls it gets."""
    calls = []
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", endpoint)  # something must listen there: llmkit checks it first
    monkeypatch.setattr(downloading, "_modelscope_files", lambda model_id, revision: names)
    module = types.SimpleNamespace(snapshot_download=lambda model_id, **options: calls.append(options) or "/m")
    monkeypatch.setitem(sys.modules, "modelscope", module)
    return calls


def test_modelscope_names_escaping_the_folder_are_refused_before_its_client_downloads(fake_hub, monkeypatch):
    calls = fake_modelscope(monkeypatch, ["config.json", "../escape.txt"], fake_hub.url)
    with pytest.raises(hub.DownloadFailed, match="outside the download folder \\('../escape.txt'\\)"):
        hub.download_report(REPO, source="modelscope")
    assert calls == [], "modelscope's snapshot_download joins names to the folder unchecked: never called"


def test_cli_refusal_is_one_line(repo_files, tmp_path, monkeypatch, capsys):
    with FakeHub(REPO, {**repo_files, "../escape.txt": b"pwned"}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        assert main(["download", REPO, "--source", "hf", "--local-dir", str(tmp_path / "D")]) == 1
    assert error_lines(capsys.readouterr().err) == [
        f"llmkit: error: refused to download {REPO}: its file list has names that would be written outside the "
        "download folder ('../escape.txt'); nothing was written outside it. Ask the repository's owner to rename "
        "these files, or use another repository."]


# --- 6. pickle weights -------------------------------------------------------------------------------------------

PICKLES = {"pytorch_model.bin": b"pickle", "training_args.bin": b"pickle", "optimizer.pt": b"pickle",
           "pytorch_model.bin.index.json": b'{"weight_map": {"a": "pytorch_model.bin"}}'}


def test_pickle_files_are_skipped_beside_safetensors(repo_files, tmp_path, monkeypatch):
    with FakeHub(REPO, {**repo_files, **PICKLES}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        assert files_of(hub.download(REPO, source="hf", local_dir=tmp_path / "D")) == repo_files
        cached = hub.download(REPO, source="hf")
        assert files_of(cached) == repo_files and hub.locate(REPO).report["ok"], "skipped on purpose: not missing"
        assert not [path for path, *_ in fake.requests if path.endswith((".bin", ".pt"))]
        allowed = hub.download(REPO, source="hf", local_dir=tmp_path / "all", allow_pickle=True)
    assert files_of(allowed) == {**repo_files, **PICKLES}


def test_pickle_only_weights_are_refused_with_how_to_allow_them(repo_files, tmp_path, monkeypatch, capsys):
    files = {name: data for name, data in repo_files.items() if name != "model.safetensors"}
    files["pytorch_model.bin"] = b"pickle"
    with FakeHub(REPO, files) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        assert main(["download", REPO, "--source", "hf", "--local-dir", str(tmp_path / "D")]) == 1
        assert error_lines(capsys.readouterr().err) == [
            f"llmkit: error: {REPO} has only pickle weights (pytorch_model.bin); loading a pickle can run code, so "
            "they were not downloaded. If you trust this source, download again with --allow-pickle "
            "(download(..., allow_pickle=True) in Python)."]
        assert fake.gets("pytorch_model.bin") == [] and not (tmp_path / "D").exists()
        assert main(["download", REPO, "--source", "hf", "--local-dir", str(tmp_path / "D"), "--allow-pickle"]) == 0
    assert (tmp_path / "D" / "pytorch_model.bin").read_bytes() == b"pickle"


@pytest.mark.parametrize("allow_pickle, ignored", [(False, list(hub.SKIPPED_WITHOUT_PICKLE)), (True, None)])
def test_modelscope_gets_the_pickle_patterns(allow_pickle, ignored, fake_hub, monkeypatch):
    calls = fake_modelscope(monkeypatch, ["config.json", "model.safetensors", "pytorch_model.bin"], fake_hub.url)
    hub.download_report(REPO, source="modelscope", allow_pickle=allow_pickle)
    assert calls[0]["ignore_file_pattern"] == ignored


def test_modelscope_pickle_only_is_refused(fake_hub, monkeypatch):
    calls = fake_modelscope(monkeypatch, ["config.json", "pytorch_model.bin"], fake_hub.url)
    with pytest.raises(hub.DownloadFailed, match="has only pickle weights \\(pytorch_model.bin\\)"):
        hub.download_report(REPO, source="modelscope")
    assert calls == []


# --- 7. secrets --------------------------------------------------------------------------------------------------

def failing_with_the_token(model_id, local_dir, revision, allow_pickle):
    """An error whose message carries the token twice: in a URL and in a header dump; the first copy straddles the
    400 characters a summary keeps."""
    url, kept = f"https://hf-mirror.example/api/models/{model_id}?token={TOKEN}", 18  # "hf_" and 15 more characters
    padding = "x" * (400 - kept - len("RuntimeError: GET ") - url.index(TOKEN))
    raise RuntimeError(f"GET {padding}{url} failed\nAuthorization: Bearer {TOKEN}\nheaders={{'token': '{TOKEN}'}}")


def assert_no_token(text: str) -> None:
    assert TOKEN[3:13] not in text, "not even part of the token"


def test_download_failure_carrying_the_token_never_prints_it(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setitem(downloading.SOURCES, "hf", failing_with_the_token)
    with pytest.raises(hub.DownloadFailed) as caught:
        hub.download(REPO, source="hf")
    assert_no_token(str(caught.value) + json.dumps(caught.value.attempts))
    for argv in (["download", REPO, "--source", "hf"], ["--debug", "download", REPO, "--source", "hf", "--json"],
                 ["locate", REPO], ["--debug", "locate", REPO]):
        main(argv)
        out, err = capsys.readouterr()
        assert_no_token(out + err)
        assert error_lines(err)


def test_download_failed_masks_any_message_given_to_it(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    error = hub.DownloadFailed(f"GET https://student:pw-9@mirror.example/x?token={TOKEN} failed", [])
    assert str(error) == "GET https://student:***@mirror.example/x?token=*** failed"


def test_a_mirror_url_with_the_token_is_masked(repo_files, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(REPO, repo_files) as fake:
        fake.answer_status(502)
        monkeypatch.setenv("HF_ENDPOINT", fake.url.replace("://", f"://student:{TOKEN}@"))
        assert main(["download", REPO, "--source", "hf"]) == 1
    out, err = capsys.readouterr()
    assert_no_token(out + err)
    assert "answered HTTP 502" in error_lines(err)[0] and "student:***@127.0.0.1" in error_lines(err)[0]


# --- 8. property-based: layouts, arbitrary bytes, safetensors truncation ------------------------------------------

PART = st.from_regex(r"[A-Za-z0-9._-]{1,24}", fullmatch=True).filter(lambda part: part not in {".", ".."})
LAYOUTS = {
    "$LLMKIT_MODEL_DIR Org/Name": "llmkit_dir/{org}/{name}",
    "./models Name": "cwd/models/{name}",
    "./models Org/Name": "cwd/models/{org}/{name}",
    "./models moved HF cache": f"cwd/models/models--{{org}}--{{name}}/snapshots/{COMMIT}",
    "HF cache": f"hf_home/hub/models--{{org}}--{{name}}/snapshots/{COMMIT}",
    "ModelScope hub/Org/Name": "modelscope/hub/{org}/{name}",
    "ModelScope hub/models/Org/escaped": "modelscope/hub/models/{org}/{escaped}",
    "ModelScope models/Org--Name/snapshots": "modelscope/models/{org}--{name}/snapshots/master",
    "$SCOW_AI_MODEL_PATH Org/Name": "scow/{org}/{name}",
}
FIRST_FOLDERS = ["llmkit_dir", "cwd/models", "hf_home", "modelscope", "scow"]


@FIXTURES_PER_EXAMPLE
@given(org=PART, name=PART, layout=st.sampled_from(sorted(LAYOUTS)))
@example(org="Org", name="Tiny--1.5B", layout="HF cache")  # names huggingface_hub's repo id check rejects
@example(org="Org", name=".hidden", layout="./models moved HF cache")
def test_locate_finds_generated_ids_in_every_layout(org, name, layout, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_MODEL_DIR", str(tmp_path / "llmkit_dir"))
    monkeypatch.setenv("SCOW_AI_MODEL_PATH", str(tmp_path / "scow"))
    escaped = name.replace(".", "___")
    folder = make_model(tmp_path / LAYOUTS[layout].format(org=org, name=name, escaped=escaped))
    try:
        queries = [f"{org}/{name}"] + ([f"{org}/{escaped}"] if "escaped" in layout else [])
        for query in queries:
            found = hub.locate(query)
            assert (found.path.resolve(), found.report["ok"]) == (folder.resolve(), True), query
    finally:
        for first in FIRST_FOLDERS:
            shutil.rmtree(tmp_path / first, ignore_errors=True)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
OFFSETS = st.fixed_dictionaries({"data_offsets": st.lists(JSON_VALUES, max_size=3)})
HEADERS = st.dictionaries(st.text(max_size=8), OFFSETS | JSON_VALUES, max_size=3)  # shaped like safetensors headers
INDEXES = st.fixed_dictionaries({"weight_map": st.dictionaries(st.text(max_size=8), JSON_VALUES)})
JSON_BYTES = (JSON_VALUES | HEADERS | INDEXES).map(lambda value: json.dumps(value).encode())
CONTENTS = st.one_of(
    st.binary(max_size=200), JSON_BYTES, st.just(b"[" * 100_000),  # the last one: nested too deep for json
    st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=64)).map(lambda t: t[0].to_bytes(8, "little") + t[1]),
    JSON_BYTES.map(lambda header: len(header).to_bytes(8, "little") + header + b"\0" * 8))  # a header that reads
TARGETS = ["model.safetensors", "config.json", "tokenizer.json", "model.safetensors.index.json"]


def is_json_object(content: bytes) -> bool:
    try:
        return isinstance(json.loads(content.decode("utf-8")), dict)
    except (ValueError, RecursionError):
        return False


@given(target=st.sampled_from(TARGETS), content=CONTENTS)
@example(target="model.safetensors.index.json", content=b'{"weight_map": {"a": []}}')  # unhashable shard names
@example(target="config.json", content=b"[" * 100_000)  # nested deeper than json's recursion limit
@example(target="model.safetensors", content=(33).to_bytes(8, "little") + b'{"a": {"data_offsets": [0, "9"]}}')
def test_verify_never_raises_on_arbitrary_bytes_and_names_the_file(target, content):
    with tempfile.TemporaryDirectory() as folder:
        folder = make_model(Path(folder) / "m")
        (folder / target).write_bytes(content)
        report = hub.verify_model_dir(folder)
    assert all(isinstance(problem, str) for problem in report["problems"])
    assert report["ok"] or any(target in problem for problem in report["problems"]), report
    if target.endswith(".json") and not is_json_object(content):
        assert not report["ok"]


def test_verify_survives_a_dangling_weight_link_and_a_folder_named_like_weights(tmp_path):
    folder = make_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "blobs" / "deleted")  # a cache blob that is gone
    (folder / "extra.safetensors").mkdir()
    problems = hub.verify_model_dir(folder)["problems"]
    assert [problem.split(":")[0] for problem in problems] == ["extra.safetensors", "model.safetensors"]


DTYPES = ["float32", "float16", "int64", "int8", "uint8", "bool"]
TENSORS = st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda key: key != "__metadata__"),
                          st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3)), max_size=4)


def safetensors_file(spec: dict) -> bytes:
    rng = np.random.default_rng(0)
    return safetensors_bytes({key: np.asarray(rng.standard_normal(shape) * 100).astype(dtype)
                              for key, (dtype, shape) in spec.items()})


@given(spec=TENSORS, data=st.data())
def test_valid_safetensors_verify_and_every_truncation_is_flagged(spec, data):
    blob = safetensors_file(spec)
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    with tempfile.TemporaryDirectory() as folder:
        folder = make_model(Path(folder) / "m")
        (folder / "model.safetensors").write_bytes(blob)
        assert hub.verify_model_dir(folder)["ok"]
        (folder / "model.safetensors").write_bytes(blob[:cut])
        [problem] = hub.verify_model_dir(folder)["problems"]
    assert problem.startswith("model.safetensors: ")
