"""The chatbot as a learner meets it: ``python -m llmkit.deploy.apps.chatbot`` starts a real streamlit server, and Debian's
headless Chromium (selenium + /usr/bin/chromedriver) types into the page and watches the answer stream in.

The browser's last screenshot is kept in ``$LLMKIT_ARTIFACTS`` (default: test-artifacts/ at the repo root).
Without chromium and chromedriver the browser test is skipped, or fails when ``CI`` is set.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from llmkit.deploy.apps.chatbot import streamlit_command

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LLMKIT_ARTIFACTS") or ROOT / "test-artifacts")
WINDOW = (1100, 800)
TURNS = [("我叫小明。", "你好，小明！"), ("我叫什么名字？", "你叫小明。")]  # the second needs the first (history)
# Runs in the page: record [number of assistant messages, text of the newest one] at every change of the page,
# to see each answer grow piece by piece.
WATCH_REPLIES = """
window.seenReplies = [];
new MutationObserver(() => {
  const replies = [...document.querySelectorAll('[data-testid="stChatMessage"]')]
    .filter(m => m.querySelector('[data-testid="stChatMessageAvatarAssistant"]'))
    .map(m => m.querySelector('[data-testid="stChatMessageContent"]').innerText);
  const last = window.seenReplies[window.seenReplies.length - 1];
  const now = [replies.length, replies[replies.length - 1] || ''];
  if (!last || last[0] !== now[0] || last[1] !== now[1]) window.seenReplies.push(now);
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def other_ipv4() -> str | None:
    """An address of this machine that is not loopback, if there is one."""
    return next((a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                 if a.family == socket.AF_INET and not a.address.startswith("127.")), None)


def healthy(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/_stcore/health", timeout=2) as response:
            return response.read() == b"ok"
    except OSError:
        return False


@contextmanager
def chatbot_server(log_path: Path, *args: str):
    """Start the launcher on a free port (stand-in model, greedy), wait for streamlit's health check, and always
    stop the server (its whole process group) afterwards. Yields (process, port)."""
    port = free_port()
    env = {**os.environ, "LLMKIT_STANDIN": "1", "TQDM_DISABLE": "1"}
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "llmkit.deploy.apps.chatbot", "--port", str(port), *args],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not healthy("127.0.0.1", port):
            assert server.poll() is None, f"the server exited with {server.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no answer from /_stcore/health in 90 s:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield server, port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def listening(server) -> set:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(server.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_command_binds_loopback_headless_without_usage_stats():
    command = streamlit_command(["--model", "M"])
    assert command[1:4] == ["-m", "streamlit", "run"]
    flags = dict(zip(command[5:13:2], command[6:13:2]))
    assert flags == {"--server.address": "127.0.0.1", "--server.port": "8501", "--server.headless": "true",
                     "--browser.gatherUsageStats": "false"}
    assert command[13:] == ["--", "--model", "M"]
    assert streamlit_command([], host="0.0.0.0", port=6006)[5:9] == ["--server.address", "0.0.0.0", "--server.port", "6006"]


def test_a_missing_model_stops_the_launcher_with_exit_3(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLMKIT_STANDIN"}
    result = subprocess.run([sys.executable, "-m", "llmkit.deploy.apps.chatbot", "--model", str(tmp_path / "none"),
                             "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert f"llmkit: error: model '{tmp_path / 'none'}' is not on this machine." in result.stderr
    assert "running:" not in result.stdout  # no server was started


def test_the_server_listens_on_127_0_0_1_only_by_default(tmp_path, chat_dir):
    with chatbot_server(tmp_path / "server.log") as (server, port):
        assert listening(server) == {("127.0.0.1", port)}
        if other := other_ipv4():
            assert not healthy(other, port), f"reachable through {other}"
    log = (tmp_path / "server.log").read_text()
    assert f"--server.address 127.0.0.1 --server.port {port}" in log
    assert f"ssh -CN -L {port}:127.0.0.1:{port} root@<host> -p <ssh-port>" in log  # the port-forwarding hint


def test_the_host_option_is_honoured(tmp_path, chat_dir):
    with chatbot_server(tmp_path / "server.log", "--host", "0.0.0.0") as (server, port):
        assert listening(server) == {("0.0.0.0", port)}
        if other := other_ipv4():
            assert healthy(other, port)
    assert "WARNING: listening on every interface" in (tmp_path / "server.log").read_text()


def browser():
    """Debian's chromium through its chromedriver, headless, at WINDOW size; skip (fail under CI) without them."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        reason = "chromium or chromedriver not found; install Debian's packages: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    width, height = WINDOW
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def test_a_message_typed_in_chromium_gets_the_streamed_answer(tmp_path, chat_dir):
    driver = browser()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with chatbot_server(tmp_path / "server.log", "--temperature", "0") as (_, port):
            try:
                check_chat(driver, port)
            finally:  # the page as it was, also when a check failed (while the server still runs)
                driver.save_screenshot(str(ARTIFACTS / "chatbot.png"))
    finally:
        driver.quit()


def check_chat(driver, port):
    """Type each question of TURNS into the page; each answer must grow piece by piece into the known answer."""
    driver.get(f"http://127.0.0.1:{port}")
    partial = []
    for number, (question, answer) in enumerate(TURNS, start=1):
        chat_box = WebDriverWait(driver, 120).until(  # the first page load also loads the model
            lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="stChatInputTextArea"]'))
        if number == 1:
            driver.execute_script(WATCH_REPLIES)
        chat_box.send_keys(question, Keys.ENTER)
        WebDriverWait(driver, 60).until(lambda d: [e.text for e in d.find_elements(
            By.CSS_SELECTOR, '[data-testid="stChatMessageContent"]')][-2:] == [question, answer])
        shown = [text for count, text in driver.execute_script("return window.seenReplies")
                 if count == number and text]
        assert shown and all(answer.startswith(text) for text in shown), shown  # it only grew
        partial += [text for text in shown if text != answer]
    messages = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stChatMessageContent"]')]
    assert messages == [text for turn in TURNS for text in turn]
    assert partial, "the answers appeared at once, not streamed piece by piece"
