"""Applies ``LLMKIT_CARD_GB`` (``llmkit.card``) in any Python process started with ``llmkit.card.child_env()``:
the allocator cap is set when torch is imported and CUDA starts. Nothing happens without the setting or CUDA."""

import os

if os.environ.get("LLMKIT_CARD_GB", "").strip():
    from llmkit.card import install_import_hook

    install_import_hook()
