"""The Chinese half of the README and of every docs/ page is complete, not a summary of the English half: the same
number of sections, the same tables with the same numbers in every cell, the same commands in the code blocks
(comments may be translated) and the same pictures."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?")  # 24,265 and 7.24; not the 2 of "Qwen2" or the 100 of "H100"


def halves(page: Path) -> tuple[str, str]:
    marker = "\n## 中文说明\n" if page.name == "README.md" else "\n## 中文\n"
    text = page.read_text(encoding="utf-8")
    assert text.count(marker) == 1, f"{page.name} has one Chinese half, starting with {marker.strip()!r}"
    english, chinese = text.split(marker)
    return english, chinese


def headings(half: str) -> list[str]:
    return re.findall(r"^#{2,6} .*$", FENCE.sub("", half), re.MULTILINE)


def tables(half: str) -> list[list[list[str]]]:
    """Each table as rows of cells (the separator row left out)."""
    found, current = [], []
    for line in FENCE.sub("", half).splitlines() + [""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|( *:?-+:? *\|)+", line):
                current.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            found.append(current)
            current = []
    return found


def code_blocks(half: str) -> list[list[str]]:
    """The lines of each fenced block with comments (``# …``, a whole line or after the command) left out."""
    return [[re.sub(r"(^|\s+)#\s.*$", "", line).rstrip() for line in block.splitlines()[1:-1]
             if not line.lstrip().startswith("# ")] for block in FENCE.findall(half)]


def numbers(text: str) -> list[str]:
    return sorted(NUMBER.findall(text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_chinese_half_has_every_section_of_the_english_half(page):
    english, chinese = halves(page)
    assert len(headings(chinese)) == len(headings(english)), (headings(english), headings(chinese))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_chinese_tables_are_the_english_tables_with_the_same_numbers(page):
    english, chinese = halves(page)
    en_tables, zh_tables = tables(english), tables(chinese)
    assert len(zh_tables) == len(en_tables), f"{page.name}: {len(en_tables)} English tables, {len(zh_tables)} Chinese"
    for en, zh in zip(en_tables, zh_tables):
        assert [len(row) for row in zh] == [len(row) for row in en], f"{page.name}: table starting {en[0]}"
        for en_row, zh_row in zip(en, zh):
            for en_cell, zh_cell in zip(en_row, zh_row):
                assert numbers(zh_cell) == numbers(en_cell), f"{page.name}: {en_cell!r} vs {zh_cell!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_chinese_code_blocks_run_the_same_commands(page):
    english, chinese = halves(page)
    assert code_blocks(chinese) == code_blocks(english)
    assert len(re.findall(r"!\[", chinese)) == len(re.findall(r"!\[", english))


def test_a_summary_instead_of_a_table_is_caught():
    english = "## A\n\n| x | y |\n| --- | --- |\n| a | 1.5 s |\n\n```bash\nrun --n 2  # two\n```\n"
    assert tables(english) == [[["x", "y"], ["a", "1.5 s"]]]
    assert code_blocks(english) == [["run --n 2"]]
    assert tables("### 甲\n\n表见英文部分。\n") == []
    assert numbers("| 1.5 秒 |") == numbers("| 1.5 s |") and numbers("1.6 s") != numbers("1.5 s")
