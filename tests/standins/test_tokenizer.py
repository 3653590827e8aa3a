from llmkit.standins.tokenizer import build_qwen2_tokenizer

TOKENIZER = build_qwen2_tokenizer()


def test_known_qwen2_ids():
    assert TOKENIZER.encode("你好") == [108386]
    assert TOKENIZER.encode("Hello world!") == [9707, 1879, 0]
    assert TOKENIZER.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert len(TOKENIZER) == 151646


def test_digits_are_split_one_by_one_like_qwen2():
    # Qwen2's regex uses \p{N} (single digits), not GPT-4's \p{N}{1,3}
    assert TOKENIZER.encode("123") == [16, 17, 18]


def test_round_trip_and_special_tokens():
    text = "混合 text 123 ✓\n\n  end"
    assert TOKENIZER.decode(TOKENIZER.encode(text)) == text
    assert TOKENIZER.encode("<|im_end|>") == [151645]


def test_chat_template_adds_default_system_prompt():
    text = TOKENIZER.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )
    custom = TOKENIZER.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], tokenize=False
    )
    assert "You are a helpful assistant." not in custom and custom.startswith("<|im_start|>system\nBe brief.")
