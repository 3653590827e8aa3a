"""``llmkit`` command line: one subcommand per module, each a parser builder plus a function returning data.

Exit codes: 0 success; 1 the command ran and found a failure (doctor FAIL, an incomplete model, a failed
download, a benchmark backend that failed, llama.cpp's converter failed, any other ``LlmkitError``, a full disk);
2 bad input (usage, unknown stand-in or model id, a model without a stand-in in stand-in mode, an existing output);
3 model not found on disk (any command that needs it; the line says how to download it); 4 the model will not
fit the free memory (nothing was loaded); 5 a command that needs a CUDA GPU found none (``llmkit rehearse``); 130 interrupted (Ctrl-C). Errors are one line on stderr; ``--debug``
adds the traceback before it. Tokens and passwords are masked in both (``llmkit.errors.mask_secrets``).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from llmkit.cli import (bench_cmd, chat_cmd, doctor_cmd, download_cmd, estimate_cmd, gguf_cmd, locate_cmd,
                        rehearse_cmd, sbatch_cmd, standin_cmd)
from llmkit.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_FOUND, BadInput, LlmkitError, mask_secrets
from llmkit.hub import ModelNotFound

COMMANDS = [doctor_cmd, standin_cmd, chat_cmd, estimate_cmd, locate_cmd, download_cmd, bench_cmd, gguf_cmd, sbatch_cmd, rehearse_cmd]


class OneLineErrors(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit 2, like every other llmkit error
    (argparse prints the whole usage first). Sub-command parsers are of the same class.

    >>> OneLineErrors(prog="llmkit").parse_args(["--bogus"])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``llmkit`` parser.

    >>> build_parser().parse_args(["doctor", "--json"]).json
    True
    """
    parser = OneLineErrors(prog="llmkit", description="Helpers for the llmkit LLM course.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmkit`` console script; returns the exit code.

    >>> main(["standin", "--list", "--json"])  # doctest: +SKIP
    0
    """
    args = build_parser().parse_args(argv)
    try:
        data, code = args.run(args)
    except KeyboardInterrupt:
        print("llmkit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        message, code = error_line(error)
        if args.debug:
            print(mask_secrets(traceback.format_exc()), end="", file=sys.stderr)
        print(f"llmkit: error: {mask_secrets(message)}", file=sys.stderr)
        return code
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        args.render(data)
    return code


def error_line(error: Exception) -> tuple[str, int]:
    """The one line the CLI prints for ``error`` (newlines folded), and the exit code it exits with.

    Errors llmkit raises on purpose carry their code; a full disk or another OS error is 1; anything else is a
    bug, reported with its type and the ``--debug`` hint.

    >>> error_line(BadInput("choose another folder"))
    ('choose another folder', 2)
    >>> error_line(OSError(28, "No space left on device"))
    ('[Errno 28] No space left on device', 1)
    """
    if isinstance(error, ModelNotFound):
        return f"model {error.model!r} is not on this machine; {error.hint}", EXIT_NOT_FOUND
    if isinstance(error, (LlmkitError, LookupError)):
        text = error.args[0] if isinstance(error, LookupError) and error.args else str(error)
        return " ".join(str(text).split()), getattr(error, "exit_code", EXIT_BAD_INPUT)
    if isinstance(error, OSError):
        return " ".join(str(error).split()), EXIT_FAILED
    return (f"unexpected {type(error).__name__}: {' '.join(str(error).split())} "
            "(rerun with llmkit --debug ... for the traceback)", EXIT_FAILED)
