"""Errors that the CLI turns into one clear line and exit code 2."""


class BadInput(Exception):
    """User input llmkit cannot act on; the message says what to do instead.

    >>> str(BadInput("name a stand-in kind"))
    'name a stand-in kind'
    """
