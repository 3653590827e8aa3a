"""``llmkit locate ID``: find a model already on disk and check it is complete; prints its folder last.

Exit codes: 0 found and complete; 1 found but incomplete (the problems are listed); 3 not on this machine (the line
names close names on disk, "did you mean ...?", and the download command).
"""

from __future__ import annotations

import sys

from llmkit.errors import EXIT_NOT_FOUND
from llmkit.hub import ModelNotFound, locate


def register(sub) -> None:
    """Add the ``locate`` subcommand.

    >>> import argparse; sub = argparse.ArgumentParser().add_subparsers(); register(sub)
    """
    parser = sub.add_parser("locate", help="find a model on disk (./models, hub caches, SCOW) and check it is complete")
    parser.add_argument("model", help="model id (Org/Name) or a model folder")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    """Locate ``args.model``: (data, exit code); not found prints one line to stderr and exits 3.

    >>> import argparse; run(argparse.Namespace(model="/no/such/folder"))[1]  # doctest: +SKIP
    3
    """
    try:
        found = locate(args.model)
    except ModelNotFound as error:
        print(f"llmkit: error: model {args.model!r} not found on this machine "
              f"({len(error.searched)} places searched); {error.hint}", file=sys.stderr)
        return {"model": args.model, "found": False, "searched": error.searched, "suggestions": error.suggestions,
                "download": error.commands}, EXIT_NOT_FOUND
    return {"model": args.model, "found": True, **found.as_dict()}, 0 if found.report["ok"] else 1


def render(data: dict) -> None:
    """Print the result for people; the model folder (when found) is the last line.

    >>> render({"model": "Org/Nmae", "found": False, "searched": ["./models: /w/models"], "suggestions": ["Org/Name"],
    ...         "download": []})
    Org/Nmae is not on this machine. Searched, in order:
      - ./models: /w/models
    Did you mean: Org/Name
    """
    if not data["found"]:
        print(f"{data['model']} is not on this machine. Searched, in order:")
        print("\n".join(f"  - {place}" for place in data["searched"]))
        if data.get("suggestions"):
            print(f"Did you mean: {', '.join(data['suggestions'])}")
        if data["download"]:
            print("Download it with one of:\n" + "\n".join(f"  {command}" for command in data["download"]))
        return
    print(f"{'OK' if data['ok'] else 'INCOMPLETE'}: found in {data['where']}")
    for problem in data["problems"]:
        print(f"  problem: {problem}")
    for note in data["notes"]:
        print(f"  note: {note}")
    if not data["ok"]:
        print(f"Fix: download it again (llmkit download {data['model']}) or repair the files above.")
    print(data["path"])
