import json
import subprocess
import sys

import pytest

from llmkit.cli import main as cli_main
from llmkit.errors import BadInput, LlmkitError
from llmkit.loading import WontFit


def llmkit(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "llmkit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_standin_list():
    result = llmkit("standin", "--list", "--json")
    assert result.returncode == 0
    assert [s["kind"] for s in json.loads(result.stdout)["standins"]] == ["qwen2-chat", "qwen2-gptq-int4", "xverse-chat"]


def test_standin_prints_model_dir_last(chat_dir):
    result = llmkit("standin", "qwen2-chat")
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1] == str(chat_dir)


def test_unknown_standin_is_one_clear_line_and_exit_2():
    result = llmkit("standin", "qwen9")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["llmkit: error: unknown stand-in 'qwen9'; choose one of: qwen2-chat, qwen2-gptq-int4, xverse-chat"]


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


def test_several_prompts_are_answered_each_on_its_own(chat_dir):
    result = llmkit("chat", "Qwen/Qwen2-7B-Instruct", "-p", "Who are you?", "-p", "你好", "-p", "Who are you?",
                    "--greedy", "--json", env={"LLMKIT_STANDIN": "1"})
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout[result.stdout.index("{"):])["answers"]
    assert [a["prompt"] for a in answers] == ["Who are you?", "你好", "Who are you?"]
    # a fresh conversation each time: the repeated question gets the same answer as the first time
    assert answers[0]["reply"] == answers[2]["reply"] == "I am a tiny stand-in model for testing the course notebooks."
    assert answers[1]["reply"] == "你好！我是 llmkit 的小测试模型。"


def test_model_without_standin_is_refused_in_standin_mode():
    result = llmkit("chat", "meta-llama/Llama-2-7b-chat-hf", "-p", "hi", env={"LLMKIT_STANDIN": "1"})
    assert result.returncode == 2
    assert "no stand-in for 'meta-llama/Llama-2-7b-chat-hf'" in result.stderr


def chat_on_an_empty_machine(model, tmp_path):
    """``llmkit chat MODEL -p hi`` in real mode with every model cache empty (under tmp_path)."""
    return subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", model, "-p", "hi"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "LLMKIT_STANDIN": "", "HOME": str(tmp_path),
                               "HF_HUB_CACHE": str(tmp_path / "hf"), "MODELSCOPE_CACHE": str(tmp_path / "ms")})


def test_chat_with_a_model_not_on_disk_says_how_to_download_it(tmp_path):
    result = chat_on_an_empty_machine("Org/NotDownloaded", tmp_path)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "llmkit: error: model 'Org/NotDownloaded' is not on this machine; download it with: llmkit download Org/NotDownloaded"]


def chat_session(stdin, *args, env=None):
    """``llmkit chat --greedy ARGS`` with ``stdin`` typed in; returns the result and the answers, one per prompt."""
    import os

    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", "--greedy", *args], input=stdin,
                            capture_output=True, text=True, env={**os.environ, **(env or {})})
    return result, [answer.strip() for answer in result.stdout.split("你 / you> ")[1:]]


def test_interactive_chat_remembers_until_reset_and_exits_0(chat_dir):
    result, answers = chat_session("我叫小明。\n\n我叫什么名字？\n/reset\n我叫什么名字？\n/exit\nHello\n")
    assert result.returncode == 0, result.stderr
    assert "STAND-IN MODE" in result.stdout and "/reset" in result.stdout.split("你 / you> ")[0]
    assert answers == ["你好，小明！", "", "你叫小明。", "(conversation forgotten)", "我还不知道你的名字。", ""]


def test_interactive_system_command_sets_the_prompt_and_forgets(chat_dir, monkeypatch, capsys):
    from llmkit.cli import main
    from llmkit.generation.session import ChatSession

    seen, ask = [], ChatSession.ask

    def recording_ask(self, text, *args, **kwargs):
        seen.append((self.system, len(self.history)))  # what the model is given with this message
        return ask(self, text, *args, **kwargs)

    lines = iter(["我叫小明。", "/system Be brief.", "我叫什么名字？"])

    def typed(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(ChatSession, "ask", recording_ask)
    monkeypatch.setattr("builtins.input", typed)
    assert main(["chat", "--greedy"]) == 0
    out = capsys.readouterr().out
    assert seen == [(None, 0), ("Be brief.", 0)]  # the new prompt is used, the earlier turn forgotten
    assert "你好，小明！\n(new system prompt; conversation forgotten)\n" in out


def test_interactive_max_new_tokens_over_the_context_is_reported_and_the_chat_goes_on_until_eof(chat_dir):
    result, answers = chat_session("Hello\n\n", "Qwen/Qwen2-7B-Instruct", "--max-new-tokens", "40000",
                                   env={"LLMKIT_STANDIN": "1"})
    assert result.returncode == 0
    assert answers == ["", "", ""]  # no answer, the empty line, then end of input
    assert result.stderr.strip().splitlines()[-1].startswith("llmkit: error: the chat template and system prompt need ")
    assert "more than the context budget of 32768 tokens; lower max_new_tokens" in result.stderr


def test_interactive_chat_ends_at_ctrl_c_with_exit_0(chat_dir, monkeypatch, capsys):
    from llmkit.cli import main

    lines = iter(["My name is Alice."])

    def typed(prompt):
        print(prompt, end="")
        try:
            return next(lines)
        except StopIteration:
            raise KeyboardInterrupt from None

    monkeypatch.setattr("builtins.input", typed)
    assert main(["chat", "--greedy"]) == 0
    assert "you> Nice to meet you, Alice!\n你 / you> \n" in capsys.readouterr().out


def test_one_shot_chat_honours_max_new_tokens():
    result = llmkit("chat", "-p", "What is LoRA?", "--greedy", "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "LoRA trains"


def test_json_needs_a_prompt():
    result = llmkit("chat", "--json")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["llmkit: error: --json needs -p PROMPT (the interactive chat prints text)"]


def test_chat_with_a_missing_path_says_so_in_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    result = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", str(missing), "-p", "hi"],
                            capture_output=True, text=True, cwd=tmp_path,
                            env={**__import__("os").environ, "LLMKIT_STANDIN": ""})
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"llmkit: error: model {str(missing)!r} is not on this machine; check the path"]


@pytest.mark.parametrize("raised, code, line", [
    (KeyboardInterrupt(), 130, "llmkit: interrupted"),
    (OSError(28, "No space left on device"), 1, "llmkit: error: [Errno 28] No space left on device"),
    (LlmkitError("shard 2 is truncated;\n download it again"), 1, "llmkit: error: shard 2 is truncated; download it again"),
    (BadInput("choose another folder"), 2, "llmkit: error: choose another folder"),
    (WontFit("needs 140 GiB, 79 GiB free"), 4, "llmkit: error: needs 140 GiB, 79 GiB free"),
    (ZeroDivisionError("division by zero"), 1,
     "llmkit: error: unexpected ZeroDivisionError: division by zero (rerun with llmkit --debug ... for the traceback)"),
])
def test_every_error_is_one_line_with_its_documented_exit_code(raised, code, line, monkeypatch, capsys):
    def fail(args):
        raise raised

    monkeypatch.setattr("llmkit.cli.standin_cmd.run", fail)
    for debug in ([], ["--debug"]):
        parser_args = debug + ["standin", "qwen2-chat"]
        assert cli_main(parser_args) == code
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == line
        assert ("Traceback" in err) == (bool(debug) and code != 130), "a traceback only with --debug"


def test_repetition_penalty_option_reaches_the_session(monkeypatch, capsys):
    seen = {}

    class Session:
        def __init__(self, model, tokenizer, **kwargs):
            seen.update(kwargs)

        def ask(self, text, on_token=None):
            return "ok"

        def reset(self):
            """A fresh conversation (each -p question gets one)."""

    monkeypatch.setattr("llmkit.loading.load", lambda ref, **kwargs: (None, None))
    monkeypatch.setattr("llmkit.generation.session.ChatSession", Session)
    assert cli_main(["chat", "-p", "hi", "--greedy", "--repetition-penalty", "1.0", "--json"]) == 0
    assert seen["do_sample"] is False and seen["repetition_penalty"] == 1.0
    seen.clear()
    assert cli_main(["chat", "-p", "hi", "--json"]) == 0
    assert "repetition_penalty" not in seen and "do_sample" not in seen


def test_the_cli_starts_without_torch_or_transformers():
    # `llmkit --help` and every command's parser: each command imports its heavy libraries only when it runs
    code = "import sys, llmkit.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_typo_of_a_course_model_suggests_the_course_model_not_downloading_the_typo(tmp_path):
    result = chat_on_an_empty_machine("Qwen/Qwen2-7B-Instuct", tmp_path)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "llmkit: error: model 'Qwen/Qwen2-7B-Instuct' is not on this machine; did you mean Qwen/Qwen2-7B-Instruct? "
        "download it with: llmkit download Qwen/Qwen2-7B-Instruct"]


@pytest.mark.parametrize("args, line", [
    (["chat", "--bogus"], "llmkit: error: unrecognized arguments: --bogus (see llmkit --help)"),
    (["bench", "--prompts", "x"], "llmkit bench: error: argument --prompts: invalid int value: 'x' (see llmkit bench --help)"),
])
def test_usage_errors_are_one_line_and_exit_2(args, line):
    result = llmkit(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]
