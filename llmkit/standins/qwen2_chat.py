"""The ``qwen2-chat`` stand-in: a tiny Qwen2ForCausalLM with the real Qwen2 tokenizer that has memorised a
small bilingual Q&A set (``llmkit/data/qa_pairs.json``), so its greedy answers to those prompts are exact.

Everything is seeded: building twice on the same machine gives identical weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from llmkit.chat import IGNORE_INDEX, encode_example, generate_reply
from llmkit.data import load_qa_pairs
from llmkit.standins.tokenizer import ENDOFTEXT, IM_END, build_qwen2_tokenizer

SEED = 0


def tiny_qwen2_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """Qwen2 architecture at toy size: 2 layers, hidden 64, grouped-query attention like the real models.

    >>> tiny_qwen2_config(build_qwen2_tokenizer()).num_hidden_layers
    2
    """
    return Qwen2Config(
        vocab_size=151936,  # Qwen2-0.5B/1.5B pad the 151,646 tokens to this size
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,  # like Qwen2-7B and 72B: a separate LM head (LoRA on it merges cleanly)
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )


def qwen2_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """The generation defaults Qwen2-7B-Instruct publishes (sampling; stop at <|im_end|> or <|endoftext|>).

    >>> qwen2_generation_config(build_qwen2_tokenizer()).eos_token_id
    [151645, 151643]
    """
    endoftext = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return GenerationConfig(
        bos_token_id=endoftext,
        pad_token_id=endoftext,
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), endoftext],
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )


def training_batch(tokenizer: PreTrainedTokenizerBase, qa_pairs: list[dict]) -> dict[str, torch.Tensor]:
    """Right-padded training batch of every Q&A pair.

    >>> training_batch(build_qwen2_tokenizer(), load_qa_pairs())["input_ids"].shape[0]
    15
    """
    encoded = [encode_example(tokenizer, qa["messages"], qa["answer"]) for qa in qa_pairs]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    input_ids = [ids + [pad] * (width - len(ids)) for ids, _ in encoded]
    labels = [lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in encoded]
    mask = [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded]
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def answer_positions_loss(model: Qwen2ForCausalLM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """Cross-entropy over the answer tokens only, and whether each of them is already the argmax.

    The LM head (151,936 wide) runs only where a label exists: a few hundred positions instead of every
    token, which keeps a training step a fraction of a second on a 2-core CPU.

    >>> loss, all_right = answer_positions_loss(model, batch)  # doctest: +SKIP
    """
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    target = batch["labels"][:, 1:]
    keep = target != IGNORE_INDEX
    logits = model.lm_head(hidden[:, :-1][keep]).float()
    wanted = target[keep]
    loss = torch.nn.functional.cross_entropy(logits, wanted)
    return loss, bool((logits.argmax(-1) == wanted).all())


def train_to_memorise(
    model: Qwen2ForCausalLM, batch: dict[str, torch.Tensor], max_steps: int = 400, lr: float = 5e-3,
    target_loss: float = 0.05,
) -> dict:
    """AdamW on the full batch until every answer token is the argmax and the loss is below ``target_loss``.

    Returns ``{"steps": int, "loss": float, "memorised": bool}``.

    >>> train_to_memorise(model, training_batch(tokenizer, load_qa_pairs()))  # doctest: +SKIP
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    memorised, loss_value, step = False, float("nan"), 0
    progress = tqdm(range(1, max_steps + 1), desc="training a stand-in", unit="step", leave=False)
    for step in progress:
        loss, memorised = answer_positions_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        progress.set_postfix(loss=f"{loss_value:.4f}")
        if memorised and loss_value < target_loss:
            break
    progress.close()
    model.eval()
    return {"steps": step, "loss": loss_value, "memorised": memorised}


def greedy_answer(model, tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_new_tokens: int = 48) -> str:
    """The model's greedy reply to a conversation, through the public chat-template + generate path.

    >>> greedy_answer(model, tokenizer, [{"role": "user", "content": "你好"}])  # doctest: +SKIP
    """
    return generate_reply(model, tokenizer, messages, max_new_tokens=max_new_tokens, do_sample=False)


def build_qwen2_chat(out_dir: Path, max_steps: int = 400) -> dict:
    """Build the stand-in into ``out_dir`` (float32 safetensors, tokenizer, chat template, generation config).

    Stored in float32, unlike the real Qwen2 checkpoints (bf16): on a CPU without native bf16 (no AVX512-BF16 or
    AMX, e.g. an AMD EPYC with AVX2) PyTorch multiplies bf16 matrices about 100x slower than float32 (8.2 s against
    70 ms for 2048x512 @ 512x2048, torch 2.11), and what loads the checkpoint with ``dtype="auto"`` (transformers 5's
    default; LLaMA-Factory does) computes in the stored dtype. At 20 M parameters float32 costs nothing; on a GPU
    ``llmkit.load`` still picks bf16.

    Raises ``RuntimeError`` if, after loading it back, any greedy answer differs from ``qa_pairs.json``
    (unless ``max_steps`` was cut short on purpose, e.g. for a quick determinism test).

    >>> build_qwen2_chat(Path("/tmp/qwen2-chat"))  # doctest: +SKIP
    """
    torch.manual_seed(SEED)
    tokenizer = build_qwen2_tokenizer()
    model = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer))
    qa_pairs = load_qa_pairs()
    report = train_to_memorise(model, training_batch(tokenizer, qa_pairs), max_steps=max_steps)
    model.generation_config = qwen2_generation_config(tokenizer)
    model.to(torch.float32).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    reloaded = Qwen2ForCausalLM.from_pretrained(out_dir, dtype="auto")
    wrong = [qa for qa in qa_pairs if greedy_answer(reloaded, tokenizer, qa["messages"]) != qa["answer"]]
    report["wrong_answers"] = len(wrong)
    if wrong and report["memorised"]:
        raise RuntimeError(f"stand-in lost {len(wrong)} memorised answers once saved and loaded back: {wrong[0]}")
    return report
