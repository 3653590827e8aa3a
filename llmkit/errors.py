"""Errors llmkit raises on purpose; the ``llmkit`` command turns each into one line on stderr and its exit code.

| class | exit code | meaning |
| --- | --- | --- |
| ``LlmkitError`` | 1 | the command ran and found a failure (an incomplete model, NaN logits, a failed save) |
| ``BadInput`` | 2 | input llmkit cannot act on (a wrong argument, a bad dataset, an existing output) |
| ``llmkit.hub.ModelNotFound`` | 3 | the model is not on this machine |
| ``llmkit.loading.WontFit`` | 4 | the model does not fit the free memory; nothing was loaded |
| ``llmkit.standins.rehearsal.NoGPU`` | 5 | a command that needs a CUDA GPU (``llmkit rehearse``) found none |

Every message says what was wrong and what to do instead. ``mask_secrets`` hides tokens, keys and passwords in any
text llmkit prints (the CLI passes every error line and ``--debug`` traceback through it).
"""

import os
import re

# Exit codes of the table above that the ``llmkit`` command and the apps use by name (130: interrupted, Ctrl-C).
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_INTERRUPTED = 1, 2, 3, 130
SECRET_VARIABLE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)$", re.IGNORECASE)
SECRET_PATTERNS = [
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "hf_***"),  # a Hugging Face access token, wherever it came from
    (re.compile(r"(?i)(bearer\s+)[^\s'\"]+"), r"\1***"),  # an Authorization header
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1***@"),  # a password in a URL (a mirror with credentials)
    (re.compile(r"(--(?:api-key|token|password)[ =])[^\s'\"]+"), r"\1***"),  # a key on a command line (vllm serve)
]
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would mask ordinary words


class LlmkitError(Exception):
    """A failure llmkit detected and explained; ``exit_code`` is what the ``llmkit`` command exits with.

    >>> LlmkitError("shard 2 is truncated; download it again").exit_code
    1
    """

    exit_code = 1


class BadInput(LlmkitError):
    """User input llmkit cannot act on; the message says what to do instead.

    >>> str(BadInput("name a stand-in kind")), BadInput.exit_code
    ('name a stand-in kind', 2)
    """

    exit_code = 2


def secret_values() -> list[str]:
    """Values to hide: environment variables named like a secret (``HF_TOKEN``, ``OPENAI_API_KEY``, ``*_PASSWORD``)
    and the token ``hf auth login`` saved, longest first.

    >>> os.environ["DEMO_TOKEN"] = "s3cr3t-value"; found = "s3cr3t-value" in secret_values(); del os.environ["DEMO_TOKEN"]
    >>> found
    True
    """
    values = {value for name, value in os.environ.items() if SECRET_VARIABLE.search(name)}
    try:
        from huggingface_hub import constants

        values.add(open(constants.HF_TOKEN_PATH, encoding="utf-8").read().strip())
    except (ImportError, OSError):  # no huggingface_hub, or no saved token: nothing more to hide
        pass
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def mask_secrets(text: str) -> str:
    """``text`` with every secret value and anything shaped like a token, bearer header or URL password as ``***``.

    >>> mask_secrets("GET https://me:pw123@mirror.example/x failed; Authorization: Bearer abc.def")
    'GET https://me:***@mirror.example/x failed; Authorization: Bearer ***'
    >>> mask_secrets("vllm serve m --api-key sk-123 --port 8000")
    'vllm serve m --api-key *** --port 8000'
    """
    for value in secret_values():
        text = text.replace(value, "***")
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
