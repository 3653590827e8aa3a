"""ChatSession on the qwen2-chat stand-in, which memorised history-dependent answers (see qa_pairs.json)."""

import time

import pytest

import llmkit
from llmkit.errors import BadInput
from llmkit.generation.session import ChatSession

GREEDY = {"do_sample": False}


@pytest.fixture(scope="module")
def model_and_tokenizer(chat_dir):
    return llmkit.load(str(chat_dir))


def prompt_tokens(tokenizer, messages):
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"])


def test_lazy_export():
    assert llmkit.ChatSession is ChatSession and "ChatSession" in llmkit.__all__


def test_turn_two_sees_turn_one_and_reset_forgets(model_and_tokenizer):
    chat = ChatSession(*model_and_tokenizer, **GREEDY)
    assert chat.ask("我叫小明。") == "你好，小明！"
    assert chat.ask("我叫什么名字？") == "你叫小明。"
    assert chat.history == [
        {"role": "user", "content": "我叫小明。"}, {"role": "assistant", "content": "你好，小明！"},
        {"role": "user", "content": "我叫什么名字？"}, {"role": "assistant", "content": "你叫小明。"}]
    chat.reset()
    assert chat.history == []
    assert chat.ask("我叫什么名字？") == "我还不知道你的名字。"


def test_streamed_pieces_make_up_the_reply(model_and_tokenizer):
    chat = ChatSession(*model_and_tokenizer, **GREEDY)
    pieces = []
    assert chat.ask("My name is Alice.", on_token=pieces.append) == "Nice to meet you, Alice!"
    assert len(pieces) > 1 and "".join(pieces) == "Nice to meet you, Alice!"
    pieces.clear()
    assert chat.ask("What is my name?", on_token=pieces.append) == "Your name is Alice."
    assert len(pieces) > 1 and "".join(pieces) == "Your name is Alice."


def test_system_prompt_comes_first_and_survives_reset(model_and_tokenizer):
    chat = ChatSession(*model_and_tokenizer, system="Be brief.", **GREEDY)
    assert chat.messages == [{"role": "system", "content": "Be brief."}]
    chat.ask("Hello")
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "Be brief."}]


def test_default_budget_is_the_model_context(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert ChatSession(model, tokenizer).max_context_tokens == model.config.max_position_embeddings == 32768


def test_oldest_turns_are_dropped_to_fit_the_context(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    question = [{"role": "user", "content": "我叫什么名字？"}]
    # Room for the question alone, not for the question after one earlier turn.
    chat = ChatSession(model, tokenizer, max_new_tokens=24, max_context_tokens=prompt_tokens(tokenizer, question) + 24,
                       **GREEDY)
    assert chat.ask("我叫小明。") == "你好，小明！"
    with pytest.warns(UserWarning, match=r"dropped the 1 oldest turn\(s\).*max_context_tokens="):
        reply = chat.ask("我叫什么名字？")
    assert reply == "我还不知道你的名字。"  # the dropped turn with the name is not sent
    assert chat.dropped_turns == 1
    assert chat.history == question + [{"role": "assistant", "content": reply}]
    with pytest.warns(UserWarning):
        assert chat.ask("Hello") == "Hello! I am the tiny llmkit test model."
    assert chat.dropped_turns == 2 and len(chat.history) == 2


def test_a_message_too_long_for_the_context_keeps_its_last_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    question = "What is the capital of France?"
    # Room for the question alone: a long pasted text before it is cut, and the earlier turn is dropped.
    chat = ChatSession(model, tokenizer, max_new_tokens=16,
                       max_context_tokens=prompt_tokens(tokenizer, [{"role": "user", "content": question}]) + 16,
                       **GREEDY)
    assert chat.ask("我叫小明。") == "你好，小明！"
    pasted = "Some pasted text about many things. " * 30 + "\n" + question
    total = len(tokenizer(pasted)["input_ids"])
    with pytest.warns(UserWarning, match=rf"the message was cut to its last \d+ of {total} tokens \(\d+ cut from "
                                         r"its start\): with the chat template, the system prompt and "
                                         r"max_new_tokens=16, no more fits max_context_tokens=\d+; the 1 oldest "
                                         r"turn\(s\) were dropped too"):
        assert chat.ask(pasted) == "The capital of France is Paris."  # the question at the end was kept
    assert chat.history == [{"role": "user", "content": question},  # what the model saw, not the pasted text
                            {"role": "assistant", "content": "The capital of France is Paris."}]
    assert chat.cut_tokens == total - len(tokenizer(question)["input_ids"]) and chat.dropped_turns == 1


def test_a_cut_message_fits_the_budget_and_is_the_end_of_the_text(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    chat = ChatSession(model, tokenizer, max_new_tokens=10, max_context_tokens=64, **GREEDY)
    long_message = "".join(f"第{i}句话。" for i in range(200))
    with pytest.warns(UserWarning, match="the message was cut"):
        chat.ask(long_message)
    kept = chat.history[0]["content"]
    assert 0 < len(kept) < len(long_message) and long_message.endswith(kept)
    assert prompt_tokens(tokenizer, chat.history[:1]) + 10 <= 64
    assert chat.cut_tokens > 0 and chat.dropped_turns == 0


def test_bad_input_only_when_the_template_and_max_new_tokens_leave_no_room(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    chat = ChatSession(model, tokenizer, max_new_tokens=10, max_context_tokens=64, **GREEDY)
    chat.ask("Hello")
    before = list(chat.history)
    template = prompt_tokens(tokenizer, [{"role": "user", "content": ""}])
    chat.max_new_tokens = 64 - template + 1
    with pytest.raises(BadInput, match=rf"the chat template and system prompt need {template} tokens before any "
                                       rf"message, plus max_new_tokens={chat.max_new_tokens}: more than the context "
                                       r"budget of 64 tokens; lower max_new_tokens, shorten the system prompt or "
                                       r"raise max_context_tokens"):
        chat.ask("Hi")
    assert chat.history == before and chat.dropped_turns == 0  # the earlier turn was not dropped in vain
    chat.max_new_tokens -= 1  # now an empty message fits: any message is cut to nothing rather than refused
    with pytest.warns(UserWarning, match="the message was cut to its last 0 of"):
        chat.ask("Hi")
    assert chat.history[0] == {"role": "user", "content": ""}


def test_stream_yields_the_reply_in_pieces_and_keeps_the_turn(model_and_tokenizer):
    chat = ChatSession(*model_and_tokenizer, **GREEDY)
    pieces = list(chat.stream("我叫小明。"))
    assert len(pieces) > 1 and "".join(pieces) == "你好，小明！"
    assert "".join(chat.stream("我叫什么名字？")) == "你叫小明。"  # the streamed turn is in the history
    assert [m["content"] for m in chat.history] == ["我叫小明。", "你好，小明！", "我叫什么名字？", "你叫小明。"]


def test_closing_a_stream_early_stops_generation_and_keeps_no_turn(model_and_tokenizer, monkeypatch):
    import llmkit.generation.session

    generated, generate_reply = [], llmkit.generation.session.generate_reply

    def slow_piece(piece, on_token):  # slow enough that the reply cannot finish before close() below
        generated.append(piece)
        time.sleep(0.05)
        on_token(piece)

    def counting_reply(*args, on_token, **kwargs):
        return generate_reply(*args, on_token=lambda piece: slow_piece(piece, on_token), **kwargs)

    monkeypatch.setattr(llmkit.generation.session, "generate_reply", counting_reply)
    chat = ChatSession(*model_and_tokenizer, **GREEDY)
    full = list(chat.stream("Who are you?"))
    assert "".join(full) == "I am a tiny stand-in model for testing the course notebooks."
    chat.reset()
    generated.clear()
    stream = chat.stream("Who are you?")
    assert next(stream) == full[0]
    stream.close()  # returns once the generating thread has stopped
    assert chat.history == []
    assert len(generated) < len(full)  # generation stopped early, not after the whole reply


def test_stream_raises_what_ask_raises_and_keeps_the_history(model_and_tokenizer):
    chat = ChatSession(*model_and_tokenizer, max_new_tokens=60, max_context_tokens=64, **GREEDY)
    with pytest.raises(BadInput, match="context budget of 64 tokens"):
        list(chat.stream("你好"))
    assert chat.history == []
