"""Errors llmkit raises on purpose; the ``llmkit`` command turns each into one line on stderr and its exit code.

| class | exit code | meaning |
| --- | --- | --- |
| ``LlmkitError`` | 1 | the command ran and found a failure (an incomplete model, NaN logits, a failed save) |
| ``BadInput`` | 2 | input llmkit cannot act on (a wrong argument, a bad dataset, an existing output) |
| ``llmkit.hub.ModelNotFound`` | 3 | the model is not on this machine |
| ``llmkit.loading.WontFit`` | 4 | the model does not fit the free memory; nothing was loaded |

Every message says what was wrong and what to do instead.
"""


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
