"""Your machine: facts, checks (`llmkit doctor`), a notebook's needs per card, nvcc for kernels."""
