"""Render rows as a terminal table (rich), shared by the subcommands."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

STATUS_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}


def print_table(rows: list[dict], columns: list[str], title: str | None = None) -> None:
    """Print ``rows`` (dicts) as a table of ``columns``; a ``status`` column is coloured.

    >>> print_table([{"check": "GPU", "status": "OK"}], ["check", "status"])  # doctest: +SKIP
    """
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        cells = []
        for column in columns:
            text = str(row.get(column, ""))
            style = STATUS_STYLE.get(text) if column == "status" else None
            cells.append(f"[{style}]{text}[/{style}]" if style else text)
        table.add_row(*cells)
    Console(width=160).print(table)
