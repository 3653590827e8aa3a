"""A short LoRA run on the qwen2-chat stand-in, as notebook 06 trains (tests/test_reliability_files.py kills it).

Usage: python tests/finetune/lora_train_script.py OUT_DIR [SECONDS_PER_STEP]

Prints ``resume-from NAME`` (or ``resume-from none``), ``step N`` after every optimizer step (before that step's
checkpoint is saved), then ``done N``. ``SECONDS_PER_STEP`` slows the steps so that a kill lands mid-run.
"""

import sys
import time

from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                          TrainingArguments)

from llmkit.finetune.sft import IGNORE_INDEX, prepare_output_dir, tokenize_alpaca
from llmkit.finetune.sft_data import identity_records
from llmkit.standins import standin_path

MAX_STEPS, SAVE_STEPS = 12, 3


class PrintSteps(TrainerCallback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        print(f"step {state.global_step}", flush=True)
        time.sleep(self.seconds)


def main(out_dir: str, seconds: float) -> None:
    resume_from = prepare_output_dir(out_dir)
    print(f"resume-from {resume_from.rsplit('/', 1)[-1] if resume_from else 'none'}", flush=True)
    path = standin_path("qwen2-chat")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=out_dir, max_steps=MAX_STEPS, save_steps=SAVE_STEPS, logging_steps=1,
                             per_device_train_batch_size=2, learning_rate=1e-3, report_to="none", seed=0,
                             disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)
    dataset = tokenize_alpaca(identity_records("小K", "llmkit")[:8], tokenizer, cutoff_len=64)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
                      callbacks=[PrintSteps(seconds)])
    trainer.train(resume_from_checkpoint=resume_from)
    print(f"done {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
