"""Applies ``LLMKIT_CARD_GB`` (``llmkit.card``) in any Python process started with ``llmkit.card.child_env()``:
the allocator cap is set when torch is imported and CUDA starts. Nothing happens without the setting or CUDA."""

import os
import sys

if os.environ.get("LLMKIT_CARD_GB", "").strip():
    try:
        from llmkit.card import install_import_hook
    except ImportError as error:  # a Python without llmkit's dependencies (a fresh venv's pip): it has no torch to cap
        sys.stderr.write(f"[llmkit] LLMKIT_CARD_GB is not applied in {sys.executable}: {error}\n")
    else:
        install_import_hook()
