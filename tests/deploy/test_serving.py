"""llmkit.deploy.serving: `transformers serve` on the qwen2-chat stand-in, queried with the official openai client (plain,
streaming, concurrent), compared with transformers' own greedy generate; and the server lifecycle (ready, stopped
with its whole process group, clear errors) on tiny fake servers."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from llmkit.deploy import serving
from llmkit.errors import BadInput
from llmkit.loading import load
from llmkit.data import load_qa_pairs
from llmkit.standins.qwen2_chat import greedy_answer

QUESTIONS = [qa["messages"] for qa in load_qa_pairs() if len(qa["messages"]) == 1][:8]
MAX_TOKENS = 48  # the stand-in's answers are shorter; greedy_answer's default length

# A stand-in for a server: answers GET /ready with --status; with --child it first starts a grandchild (`sleep`)
# and writes its pid to --child, so a test can check that the whole process group is stopped.
FAKE_SERVER = r"""
import argparse, http.server, subprocess
p = argparse.ArgumentParser()
p.add_argument("--host"); p.add_argument("--port", type=int); p.add_argument("--status", type=int, default=200)
p.add_argument("--child")
a = p.parse_args()
if a.child:
    child = subprocess.Popen(["sleep", "600"])
    open(a.child, "w").write(str(child.pid))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(a.status if self.path == "/ready" else 404); self.end_headers()
print("fake server listening", flush=True)
http.server.HTTPServer((a.host, a.port), H).serve_forever()
"""


def fake_server(*extra: str, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-c", FAKE_SERVER, "--host", host, "--port", str(serving.free_port()), *extra]


def exits_at_once(host: str = "127.0.0.1") -> list[str]:
    script = "import sys; print('loading model...'); print('OSError: no such model: /nowhere', flush=True); sys.exit(3)"
    return [sys.executable, "-c", script, "--host", host, "--port", str(serving.free_port())]


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether process ``pid`` has exited (a killed process may take a moment to disappear)."""
    deadline = time.monotonic() + within_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def reference(chat_dir):
    """transformers' own greedy answers to QUESTIONS (same chat template, same generation_config)."""
    model, tokenizer = load(str(chat_dir))
    answers = [greedy_answer(model, tokenizer, messages, max_new_tokens=MAX_TOKENS) for messages in QUESTIONS]
    assert all(answers)
    return answers


@pytest.fixture(scope="module")
def server(chat_dir):
    command = [serving.cli_path("transformers"), "serve", str(chat_dir), "--host", "127.0.0.1",
               "--port", str(serving.free_port()), "--device", "cpu"]
    with serving.serve(command, ready_path="/health", timeout_s=180) as running:
        yield running
    assert not running.running, "the server process is gone after the block"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)


def chat(client, model, messages, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=MAX_TOKENS,
                                          **kwargs)


def test_server_listens_on_loopback_only(server):
    assert server.host == "127.0.0.1" and server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert "Uvicorn running on http://127.0.0.1:" in server.log_tail(50)


def test_chat_completion_equals_local_greedy_generate(client, chat_dir, reference):
    for messages, expected in zip(QUESTIONS[:3], reference):
        response = chat(client, str(chat_dir), messages)
        assert response.choices[0].message.content == expected
        assert response.choices[0].finish_reason == "stop"
        assert response.model.startswith(str(chat_dir))
        assert response.usage.completion_tokens > 0


def test_the_known_answers_come_through_the_server(client, chat_dir):
    qa = load_qa_pairs()[0]
    assert chat(client, str(chat_dir), qa["messages"]).choices[0].message.content == qa["answer"]


def test_streaming_chunks_join_to_the_greedy_answer(client, chat_dir, reference):
    stream = chat(client, str(chat_dir), QUESTIONS[4], stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1, "the answer arrives in several chunks"
    assert "".join(pieces) == reference[4]


def test_eight_concurrent_requests_are_all_answered(client, chat_dir, reference):
    def ask(messages):
        raw = client.chat.completions.with_raw_response.create(
            model=str(chat_dir), messages=messages, temperature=0, max_tokens=MAX_TOKENS)
        return raw.status_code, raw.parse().choices[0].message.content

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        results = list(pool.map(ask, QUESTIONS))
    assert len(results) == 8
    assert [status for status, _ in results] == [200] * 8
    assert [content for _, content in results] == reference


MANY = 40  # concurrent requests, half of them streamed, against a server that answers one at a time or in batches


def ask(client, model, messages, stream):
    """The answer, plain or streamed. An error status, a timeout or a dropped connection raises: that request was
    refused or lost, and the test fails with what happened."""
    if stream:
        chunks = chat(client, model, messages, stream=True)
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return chat(client, model, messages).choices[0].message.content


@pytest.fixture(scope="module")
def batching_client(chat_dir):
    command = [serving.cli_path("transformers"), "serve", str(chat_dir), "--host", "127.0.0.1",
               "--port", str(serving.free_port()), "--device", "cpu", "--continuous-batching",
               "--cb-num-blocks", "128", "--cb-max-batch-tokens", "512"]
    with serving.serve(command, ready_path="/health", timeout_s=180) as running:
        yield openai.OpenAI(base_url=running.base_url, api_key="not-needed", max_retries=0, timeout=300)


@pytest.mark.parametrize("which", ["client", "batching_client"])
def test_many_concurrent_requests_are_all_answered_none_lost(which, request, chat_dir, reference):
    client = request.getfixturevalue(which)
    jobs = [(QUESTIONS[i % len(QUESTIONS)], i % 2 == 1) for i in range(MANY)]
    with ThreadPoolExecutor(MANY) as pool:
        answers = list(pool.map(lambda job: ask(client, str(chat_dir), *job), jobs))
    assert answers == [reference[i % len(QUESTIONS)] for i in range(MANY)], "every request got its own greedy answer"
    assert ask(client, str(chat_dir), QUESTIONS[0], False) == reference[0], "the server still answers afterwards"


def test_the_server_is_pinned_to_its_model(client):
    with pytest.raises(openai.BadRequestError) as raised:
        chat(client, "Qwen/Qwen2-72B-Instruct", QUESTIONS[0])
    assert raised.value.status_code == 400 and "pinned" in str(raised.value.body)


def test_process_group_is_stopped_when_the_block_ends(tmp_path):
    pid_file = tmp_path / "child.pid"
    with serving.serve(fake_server("--child", str(pid_file)), ready_path="/ready", timeout_s=30) as server:
        child = int(pid_file.read_text())
        assert server.running and alive(child)
    assert not server.running and gone(child), "the server and what it started are stopped"
    assert not server.log_path.exists(), "the temporary log is removed after a clean exit"


def test_server_is_stopped_when_the_body_raises(tmp_path):
    pid_file = tmp_path / "child.pid"
    with pytest.raises(KeyError, match="from the body"):
        with serving.serve(fake_server("--child", str(pid_file)), ready_path="/ready", timeout_s=30,
                           log_path=tmp_path / "server.log") as server:
            raise KeyError("from the body")
    assert server.process.returncode is not None and gone(int(pid_file.read_text()))
    assert "fake server listening" in (tmp_path / "server.log").read_text(), "a log it was given is kept"


def test_a_server_that_exits_at_once_is_reported_with_its_log(tmp_path):
    start = time.monotonic()
    with pytest.raises(serving.ServerFailed) as raised:
        with serving.serve(exits_at_once(), timeout_s=60, log_path=tmp_path / "server.log"):
            pytest.fail("the block must not run")
    message = str(raised.value)
    assert "exited with code 3" in message and "OSError: no such model: /nowhere" in message
    assert str(tmp_path / "server.log") in message
    assert time.monotonic() - start < 30, "a dead server is reported at once, not after the timeout"


def test_a_dead_server_is_reported_with_the_first_error_of_its_log_beyond_the_last_lines(tmp_path):
    # like vLLM: the worker's root cause, then the front end's own traceback, longer than the tail that is shown
    script = ("import sys; print('(EngineCore pid=7) RuntimeError: No CTK flavor installed'); "
              "[print(f'(APIServer pid=5)   frame {i}') for i in range(60)]; "
              "print('RuntimeError: Engine core initialization failed. See root cause above.'); sys.exit(1)")
    with pytest.raises(serving.ServerFailed) as raised:
        with serving.serve([sys.executable, "-c", script, "--host", "127.0.0.1", "--port", str(serving.free_port())],
                           timeout_s=60,
                           log_path=tmp_path / "server.log"):
            pytest.fail("the block must not run")
    message = str(raised.value)
    assert "First error in its log: (EngineCore pid=7) RuntimeError: No CTK flavor installed\n" in message
    assert "frame 10\n" not in message and "See root cause above" in message


def test_readiness_timeout_is_reported_and_the_server_stopped(tmp_path):
    pid_file = tmp_path / "child.pid"
    with pytest.raises(serving.ServerFailed) as raised:
        with serving.serve(fake_server("--status", "503", "--child", str(pid_file)), ready_path="/ready",
                           timeout_s=3, log_path=tmp_path / "server.log"):
            pytest.fail("the block must not run")
    message = str(raised.value)
    assert "within 3 s" in message and "(last: 503)" in message and "fake server listening" in message
    assert gone(int(pid_file.read_text()))


def test_a_block_left_open_is_stopped_when_python_exits(tmp_path):
    """A notebook cell that failed leaves its server's block open; the server must not outlive the kernel."""
    pid_file = tmp_path / "child.pid"
    script = ("import atexit, os, sys; from llmkit.deploy import serving\n"
              "block = serving.serve(sys.argv[2:], ready_path='/ready', timeout_s=30, log_path=sys.argv[1])\n"
              "server = block.__enter__()\n"
              "atexit._run_exitfuncs()  # what Python runs when it exits\n"
              "print(server.process.pid, server.running, flush=True)\n"
              "os._exit(0)  # no further clean-up: only the exit functions had a chance")
    command = fake_server("--child", str(pid_file))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "server.log"), *command],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pid, running = done.stdout.split()
    assert running == "False" and gone(int(pid)) and gone(int(pid_file.read_text()))


def test_command_must_name_host_and_port():
    with pytest.raises(BadInput, match="no --host"):
        serving.server_address(["transformers", "serve", "--port", "8000"])
    with pytest.raises(BadInput, match="no --host and no --port"):
        serving.server_address(["vllm", "serve", "model"])
    assert serving.server_address(["x", "--host=::1", "--port", "9"]) == ("::1", 9)


def test_a_port_in_use_is_refused():
    with serving.serve(fake_server(), ready_path="/ready", timeout_s=30) as first:
        with pytest.raises(BadInput, match="already listens"):
            with serving.serve([sys.executable, "-c", "", "--host", "127.0.0.1", "--port", str(first.port)]):
                pytest.fail("the block must not run")


def test_a_missing_executable_is_refused():
    with pytest.raises(BadInput, match="cannot start 'no-such-server'"):
        with serving.serve(["no-such-server", "--host", "127.0.0.1", "--port", str(serving.free_port())]):
            pytest.fail("the block must not run")


def test_other_hosts_are_warned_about(tmp_path):
    with pytest.warns(UserWarning, match="other machines"), pytest.raises(serving.ServerFailed):
        with serving.serve(exits_at_once(host="0.0.0.0"), log_path=tmp_path / "server.log"):
            pytest.fail("the block must not run")


def test_a_proxy_is_warned_about_and_readiness_bypasses_it(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.warns(UserWarning, match="NO_PROXY"):
        with serving.serve(fake_server(), ready_path="/ready", timeout_s=10) as server:
            assert server.running


def test_stop_token_ids_come_from_the_model_files(chat_dir):
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    generation_config = GenerationConfig.from_pretrained(chat_dir)
    ids = serving.stop_token_ids(tokenizer, generation_config, ["<|im_end|>"])
    assert ids == sorted(tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    assert all(token in tokenizer.all_special_tokens for token in tokenizer.convert_ids_to_tokens(ids))
    assert serving.stop_token_ids(tokenizer) == [tokenizer.eos_token_id]
    with pytest.raises(BadInput, match="not a token"):
        serving.stop_token_ids(tokenizer, generation_config, ["<|eot_id|>"])


def test_vllm_missing_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(serving.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = serving.vllm_missing()
    assert "vllm package is not installed" in reason and "no CUDA GPU" in reason
    monkeypatch.setattr(serving.importlib.util, "find_spec", lambda name: object())
    assert "not installed" not in serving.vllm_missing()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert serving.vllm_missing() is None


def test_free_port_is_bindable():
    import socket

    port = serving.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
