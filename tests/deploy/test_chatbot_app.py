"""The streamlit chatbot under streamlit's AppTest (the page script runs in this process, no server, no browser),
answered by the qwen2-chat stand-in, whose greedy answers are known (llmkit/data/qa_pairs.json)."""

import re
import sys

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from test_reliability_load import NAN_MESSAGE, copy_model, overflow, remote_code_model, truncate_shard
from transformers import AutoTokenizer

import llmkit.loading
import llmkit.generation.session
from llmkit.deploy.apps import chatbot
from llmkit.generation.session import ChatSession

TIMEOUT = 120  # s for one script run: the first one loads the model


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setenv("LLMKIT_STANDIN", "1")


def open_page(temperature=0.0):
    """A fresh browser tab: run the script once, then set the temperature slider (0 = greedy, known answers)."""
    at = AppTest.from_file(chatbot.__file__, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    if temperature is not None:
        at.slider(key="temperature").set_value(temperature).run()
    return at


def ask(at, text):
    at.chat_input[0].set_value(text).run()
    assert not at.exception, at.exception
    return at.chat_message[-1].markdown[0].value


def shown(at):
    return [(m.name, m.markdown[0].value) for m in at.chat_message]


def test_first_page_shows_the_banner_and_the_sidebar(standin):
    at = open_page(temperature=None)
    assert at.title[0].value == "💬 llmkit chatbot"
    assert "STAND-IN MODE: Qwen/Qwen2-7B-Instruct" in at.warning[0].value  # pick_model's banner, in the page
    assert at.text_area(key="system").value == ""
    assert at.slider(key="max_new_tokens").value == 512
    assert at.slider(key="temperature").value == 0.7  # the model's own generation_config
    assert at.button(key="clear").label == "清空对话 / Clear history"
    assert len(at.chat_input) == 1 and not at.chat_message


def test_a_known_question_gets_the_known_answer_streamed(standin, monkeypatch):
    pieces, stream = [], ChatSession.stream

    def recorded(self, text):
        for piece in stream(self, text):
            pieces.append(piece)
            yield piece

    monkeypatch.setattr(ChatSession, "stream", recorded)
    at = open_page()
    assert ask(at, "What is the capital of France?") == "The capital of France is Paris."
    assert len(pieces) > 1 and "".join(pieces) == "The capital of France is Paris."  # arrived piece by piece
    assert shown(at) == [("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")]


def test_history_is_kept_across_turns_and_reruns(standin):
    at = open_page()
    assert ask(at, "我叫小明。") == "你好，小明！"
    assert ask(at, "我叫什么名字？") == "你叫小明。"  # only right if the first turn was sent again
    at.run()  # any other interaction reruns the script: the conversation stays
    assert shown(at) == [("user", "我叫小明。"), ("assistant", "你好，小明！"),
                         ("user", "我叫什么名字？"), ("assistant", "你叫小明。")]


def test_the_system_prompt_is_sent_first(standin, monkeypatch):
    sent, generate_reply = [], llmkit.generation.session.generate_reply

    def recording(model, tokenizer, messages, *args, **kwargs):
        sent.append(messages)
        return generate_reply(model, tokenizer, messages, *args, **kwargs)

    monkeypatch.setattr(llmkit.generation.session, "generate_reply", recording)
    at = open_page()
    at.text_area(key="system").input("Be brief.").run()
    ask(at, "Hello")
    assert sent[-1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    at.text_area(key="system").input("").run()
    ask(at, "Who are you?")
    assert sent[-1][0] == {"role": "user", "content": "Hello"}  # empty box: no system message of ours


def test_clear_button_empties_the_history(standin):
    at = open_page()
    ask(at, "我叫小明。")
    at.button(key="clear").click().run()
    assert not at.chat_message and at.session_state.chat.history == []
    assert ask(at, "我叫什么名字？") == "我还不知道你的名字。"  # the forgotten turn is not sent


def test_max_new_tokens_is_applied(standin, chat_dir):
    full = "Hello! I am the tiny llmkit test model."
    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    ids = tokenizer(full)["input_ids"]
    at = open_page()
    replies = {}
    for limit in (3, 6, 512):
        at.slider(key="max_new_tokens").set_value(limit).run()
        at.button(key="clear").click().run()
        replies[limit] = ask(at, "Hello")
    assert replies[3] == tokenizer.decode(ids[:3]) and len(tokenizer(replies[3])["input_ids"]) <= 3
    assert replies[6] == tokenizer.decode(ids[:6]) and len(replies[6]) > len(replies[3])
    assert replies[512] == full and len(ids) > 6


def test_the_model_loads_once_across_reruns_and_tabs(standin, monkeypatch):
    st.cache_resource.clear()
    loads, load = [], llmkit.loading.load

    def counting_load(path, **kwargs):
        loads.append(path)
        return load(path, **kwargs)

    monkeypatch.setattr(llmkit.loading, "load", counting_load)
    first = open_page()
    ask(first, "Hello")
    first.run()
    second = open_page()  # another browser tab: its own history, the same model
    assert not second.chat_message
    assert ask(second, "你好") == "你好！我是 llmkit 的小测试模型。"
    assert len(loads) == 1


def test_model_option_after_double_dash_is_used(chat_dir, monkeypatch):
    monkeypatch.delenv("LLMKIT_STANDIN", raising=False)
    # what `streamlit run chatbot.py -- --model DIR --temperature 0` leaves in sys.argv
    monkeypatch.setattr(sys, "argv", [chatbot.__file__, "--model", str(chat_dir), "--temperature", "0"])
    at = open_page(temperature=None)
    assert not at.warning  # a real model path: no stand-in banner
    assert f"`{chat_dir}`" in at.sidebar.markdown[0].value
    assert at.slider(key="temperature").value == 0.0
    assert ask(at, "Hello") == "Hello! I am the tiny llmkit test model."


def test_a_model_found_by_its_id_in_real_mode_shows_no_stand_in_banner(chat_dir, monkeypatch, tmp_path):
    # real mode: pick_model returns the folder llmkit.locate found for the id (here under LLMKIT_MODEL_DIR)
    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen2-7B-Instruct").symlink_to(chat_dir, target_is_directory=True)
    monkeypatch.setenv("LLMKIT_STANDIN", "0")
    monkeypatch.setenv("LLMKIT_MODEL_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [chatbot.__file__, "--model", "Qwen/Qwen2-7B-Instruct"])
    at = open_page(temperature=None)
    assert not at.warning, at.warning[0].value
    assert "`Qwen/Qwen2-7B-Instruct`" in at.sidebar.markdown[0].value


def test_a_missing_model_is_a_clear_error_in_the_page(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMKIT_STANDIN", raising=False)
    monkeypatch.setattr(sys, "argv", [chatbot.__file__, "--model", str(tmp_path / "no-model")])
    at = open_page(temperature=None)
    assert "The model could not be loaded (ModelNotFound)" in at.error[0].value
    assert f"model '{tmp_path / 'no-model'}' is not on this machine. Searched:" in at.code[0].value
    assert not at.chat_input  # nothing to chat with


# --- issue 7: failures are shown in the page, never a crash ---------------------------------------------------

def open_model_page(monkeypatch, model):
    monkeypatch.delenv("LLMKIT_STANDIN", raising=False)
    monkeypatch.setattr(sys, "argv", [chatbot.__file__, "--model", str(model), "--temperature", "0"])
    return open_page(temperature=None)


def test_an_incomplete_model_is_a_clear_error_in_the_page(monkeypatch, tmp_path, chat_dir):
    folder = copy_model(chat_dir, tmp_path / "damaged", copy=["model.safetensors"])
    truncate_shard(folder)
    at = open_model_page(monkeypatch, folder)
    assert "The model could not be loaded (IncompleteModel)" in at.error[0].value
    assert at.code[0].value.startswith(f"the model folder {folder} is incomplete or corrupted: model.safetensors: ")
    assert not at.chat_input


def test_the_page_never_runs_a_models_own_code(monkeypatch, tmp_path, chat_dir):
    folder, sentinel = remote_code_model(chat_dir, tmp_path / "evil", "evil")
    at = open_model_page(monkeypatch, folder)
    assert "The model could not be loaded (BadInput)" in at.error[0].value
    assert "needs its own Python code (configuration_evil.py, modeling_evil.py" in at.code[0].value
    assert not sentinel.exists()


def test_non_finite_logits_are_an_error_in_the_chat_not_a_crash(monkeypatch, tmp_path, chat_dir):
    model, tokenizer = llmkit.loading.load(str(chat_dir), dtype=torch.float16)
    monkeypatch.setattr(llmkit.loading, "load", lambda path, **kwargs: (overflow(model), tokenizer))
    at = open_model_page(monkeypatch, copy_model(chat_dir, tmp_path / "fp16-model"))  # a path of its own: not a cached model
    at.chat_input[0].set_value("你好").run()
    assert not at.exception, at.exception
    assert re.fullmatch(NAN_MESSAGE, at.error[0].value)
    assert at.session_state.chat.history == []
