"""Fine-tuning with LoRA: data, training (peft + Trainer), memory, LLaMA-Factory, evaluation."""
