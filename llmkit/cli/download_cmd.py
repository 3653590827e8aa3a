"""``llmkit download ID``: download a model through huggingface_hub / modelscope and verify it; prints its folder last.

Pickle files (``*.bin``, ``*.pt``, ...) are skipped unless ``--allow-pickle``; a repository with pickle-only weights is
refused with a one-line error saying so. Exit codes: 0 downloaded and complete; 1 every source failed, the repository
was refused, or the download is incomplete.
"""

from __future__ import annotations

import sys

from llmkit.cli.table import print_table
from llmkit.hub import SOURCE_ORDER, DownloadFailed, download_report


def register(sub) -> None:
    """Add the ``download`` subcommand.

    >>> import argparse; sub = argparse.ArgumentParser().add_subparsers(); register(sub)
    """
    parser = sub.add_parser("download", help="download a model (Hugging Face, then ModelScope) and verify it")
    parser.add_argument("model", help="hub model id, e.g. Qwen/Qwen2-7B-Instruct")
    parser.add_argument("--source", choices=list(SOURCE_ORDER), default="auto",
                        help="auto: Hugging Face (HF_ENDPOINT honoured), then ModelScope")
    parser.add_argument("--local-dir", help="put the files in this folder instead of the hub cache")
    parser.add_argument("--revision", help="branch, tag or commit (default: the hub's default branch)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also download pickle files (*.bin, *.pt, *.pth, *.pkl, *.ckpt); loading them can run "
                             "code, so only for a source you trust")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run, render=render)


def run(args) -> tuple[dict, int]:
    """Download ``args.model``: (data, exit code); when every source fails, one line goes to stderr.

    >>> import argparse
    >>> args = argparse.Namespace(model="Org/Name", source="hf", local_dir=None, revision=None, allow_pickle=False)
    >>> run(args)  # doctest: +SKIP
    """
    try:
        result = download_report(args.model, source=args.source, local_dir=args.local_dir, revision=args.revision,
                                 allow_pickle=args.allow_pickle)
    except DownloadFailed as error:
        print(f"llmkit: error: {' '.join(str(error).split())}", file=sys.stderr)
        return {"model": args.model, "ok": False, "path": None, "attempts": error.attempts}, 1
    return {**result, "ok": result["report"]["ok"]}, 0 if result["report"]["ok"] else 1


def render(data: dict) -> None:
    """Print the attempts and the verification; the model folder (when downloaded) is the last line.

    >>> render({"ok": False, "path": None, "attempts": []})  # doctest: +SKIP
    """
    rows = [{"source": a["source"], "status": "OK" if a["ok"] else "FAIL", "detail": a.get("path") or a.get("error")}
            for a in data["attempts"]]
    print_table(rows, ["source", "status", "detail"], title=f"llmkit download {data['model']}")
    if data["path"] is None:
        return
    print(f"{'OK' if data['ok'] else 'INCOMPLETE'}: verified {data['path']}")
    for problem in data["report"]["problems"]:
        print(f"  problem: {problem}")
    for note in data["report"]["notes"]:
        print(f"  note: {note}")
    print(data["path"])
