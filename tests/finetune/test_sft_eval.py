"""The fine-tune evaluation (llmkit.finetune.sft_eval) on the stand-in: held out from training, scored, repeatable."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.finetune import sft_eval
from llmkit.finetune.sft_data import identity_records


def test_the_identity_questions_are_held_out_of_training_and_filled_in():
    suite = sft_eval.load_suite("小K", "某课程")
    trained = {r["instruction"] for r in identity_records("小K", "某课程")}
    assert not trained & {item["question"] for item in suite["identity_held_out"]}
    assert {e for item in suite["identity_held_out"] for e in item["expect"]} == {"小K", "某课程"}


def test_scoring_counts_an_answer_that_contains_an_expected_string():
    assert sft_eval.scores("The largest planet is JUPITER.", ["Jupiter"])
    assert not sft_eval.scores("I am not sure.", ["Jupiter"])


def test_the_stand_in_scores_what_it_memorised(chat_dir):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(chat_dir), AutoTokenizer.from_pretrained(chat_dir)
    result = sft_eval.evaluate(model, tokenizer, sft_eval.load_suite("小K", "某课程"), max_new_tokens=32)
    general = {row["question"]: row["ok"] for row in result["general"]["rows"]}
    # the stand-in was trained on these three and on both two-turn chats, and never heard of 小K
    assert general["中国的首都是哪里？"] and general["What is the capital of France?"] and general["1+1等于几？"]
    assert result["multi_turn"]["score"] == 1.0 and result["identity_held_out"]["score"] == 0.0
    assert result == sft_eval.evaluate(model, tokenizer, sft_eval.load_suite("小K", "某课程"), max_new_tokens=32)
