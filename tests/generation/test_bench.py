import pytest

import llmkit
from llmkit.generation.bench import BACKENDS, bench, workload


@pytest.fixture(scope="module")
def chat(chat_dir):
    return llmkit.load(str(chat_dir))


def test_workload_has_the_asked_shape(chat):
    prompts = workload(chat[1], prompts=25, prompt_tokens=64)
    assert len(prompts) == 25 and {len(p) for p in prompts} == {64} and len({tuple(p) for p in prompts}) == 25


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "hf-graph-compile"])  # compile: test_fastdecode
def test_every_backend_gives_the_same_fixed_length_greedy_tokens(chat, backend):
    model, tokenizer = chat
    prompts = workload(tokenizer, prompts=3, prompt_tokens=12)
    baseline = bench(model, tokenizer, "hf", prompts, new_tokens=10, repeats=1)
    result = bench(model, tokenizer, backend, prompts, new_tokens=10, repeats=2)
    assert result.outputs == baseline.outputs and all(len(o) == 10 for o in result.outputs)
    row = result.to_dict()
    assert row["tokens_per_s"] > 0 and len(row["runs_s"]) == 2 and 0 < row["time_to_first_token_s"] < max(row["runs_s"])
    assert "outputs" not in row and row["peak_memory_gib"] is None  # CPU: no CUDA allocator to read
    if backend.startswith("hf-graph"):  # the warm-up's own split (first run), next to the last timed run's
        warm, last = row["details"]["graph_decoder_timings_warm_up"], row["details"]["graph_decoder_timings_last_run"]
        assert set(warm) == set(last) >= {"prefill_s", "decode_s"} and warm is not last
        # parts of the run they split (each figure rounded: 0.01 s of room)
        assert sum(warm.values()) <= row["warm_up_s"] + 0.01 and sum(last.values()) <= max(row["runs_s"]) + 0.01


def test_unknown_backend_is_refused(chat):
    with pytest.raises(ValueError, match="choose one of hf, hf-static"):
        bench(*chat, backend="vllm-typo")
