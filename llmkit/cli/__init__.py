"""``llmkit`` command line: one subcommand per module, each a parser builder plus a function returning data.

Exit codes: 0 success; 1 the command ran and found a failure (doctor FAIL, an incomplete model, a failed
download, a benchmark backend that failed, llama.cpp's converter failed); 2 bad input (usage, unknown stand-in or model id, a model without a stand-in in stand-in mode);
3 model not found on disk (any command that needs it; the line says how to download it).
"""

from __future__ import annotations

import argparse
import json
import sys

from llmkit.cli import (bench_cmd, chat_cmd, doctor_cmd, download_cmd, estimate_cmd, gguf_cmd, locate_cmd,
                        standin_cmd)
from llmkit.errors import BadInput
from llmkit.hub import ModelNotFound

COMMANDS = [doctor_cmd, standin_cmd, chat_cmd, estimate_cmd, locate_cmd, download_cmd, bench_cmd, gguf_cmd]
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_FOUND = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The full ``llmkit`` parser.

    >>> build_parser().parse_args(["doctor", "--json"]).json
    True
    """
    parser = argparse.ArgumentParser(prog="llmkit", description="Helpers for the llmkit LLM course.")
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
    except ModelNotFound as error:
        if args.debug:
            raise
        how = f"download it with: {error.commands[0]}" if error.commands else "check the path"  # a path has no hub id
        print(f"llmkit: error: model {error.model!r} is not on this machine; {how}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except (BadInput, KeyError, LookupError) as error:
        if args.debug:
            raise
        message = error.args[0] if error.args else str(error)
        print(f"llmkit: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        args.render(data)
    return code
