"""Data files: the self-identity fine-tuning set and LLaMA-Factory venv pins (read with importlib.resources)."""
