import json
import subprocess
import sys


def llmkit(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "llmkit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_standin_list():
    result = llmkit("standin", "--list", "--json")
    assert result.returncode == 0
    assert [s["kind"] for s in json.loads(result.stdout)["standins"]] == ["qwen2-chat", "qwen2-gptq-int4"]


def test_standin_prints_model_dir_last(chat_dir):
    result = llmkit("standin", "qwen2-chat")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1] == str(chat_dir)


def test_unknown_standin_is_one_clear_line_and_exit_2():
    result = llmkit("standin", "qwen9")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["llmkit: error: unknown stand-in 'qwen9'; choose one of: qwen2-chat, qwen2-gptq-int4"]


def test_one_shot_chat_with_default_standin(chat_dir):
    result = llmkit("chat", "-p", "你好", "--greedy")
    assert result.returncode == 0, result.stderr
    assert "STAND-IN MODE" in result.stdout
    assert "你好！我是 llmkit 的小测试模型。" in result.stdout


def test_chat_json_reply(chat_dir):
    result = llmkit("chat", "Qwen/Qwen2-7B-Instruct", "-p", "Who are you?", "--greedy", "--json",
                    env={"LLMKIT_STANDIN": "1"})
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout[result.stdout.index("{"):])
    assert reply["reply"] == "I am a tiny stand-in model for testing the course notebooks."


def test_model_without_standin_is_refused_in_standin_mode():
    result = llmkit("chat", "xverse/XVERSE-7B-Chat", "-p", "hi", env={"LLMKIT_STANDIN": "1"})
    assert result.returncode == 2
    assert "no stand-in for 'xverse/XVERSE-7B-Chat'" in result.stderr


def test_chat_with_a_model_not_on_disk_says_how_to_download_it(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", "Org/NotDownloaded", "-p", "hi"],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={**__import__("os").environ, "LLMKIT_STANDIN": "", "HOME": str(tmp_path),
                                 "HF_HUB_CACHE": str(tmp_path / "hf"), "MODELSCOPE_CACHE": str(tmp_path / "ms")})
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "llmkit: error: model 'Org/NotDownloaded' is not on this machine; download it with: llmkit download Org/NotDownloaded"]
