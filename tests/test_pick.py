import pytest

from llmkit.pick import NoStandInError, pick_model


def test_real_mode_returns_the_folder_llmkit_locate_finds(monkeypatch, capsys, chat_dir):
    monkeypatch.delenv("LLMKIT_STANDIN", raising=False)
    assert pick_model(str(chat_dir)) == str(chat_dir.resolve())
    assert capsys.readouterr().out == ""  # a path given: nothing to report


def test_standin_mode_returns_path_and_prints_banner(monkeypatch, capsys, chat_dir):
    monkeypatch.setenv("LLMKIT_STANDIN", "1")
    assert pick_model("Qwen/Qwen2-7B-Instruct") == str(chat_dir)
    out = capsys.readouterr().out
    assert "STAND-IN MODE" in out and "tiny test model" in out


def test_standin_mode_refuses_models_without_standin(monkeypatch):
    monkeypatch.setenv("LLMKIT_STANDIN", "true")
    with pytest.raises(NoStandInError, match="no stand-in for 'meta-llama/Llama-3-8B'"):
        pick_model("meta-llama/Llama-3-8B")
