"""The table of failure cases (docs/troubleshooting.md, linked from the README) names real tests: each reference `test_file.py::test_name` is a test function
in that file, and every row has at least one; the Chinese half has the same rows naming the same tests."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
SECTION = re.compile(r"^## When something goes wrong\n(.*?)^## ", re.DOTALL | re.MULTILINE)
REFERENCE = re.compile(r"`(test_\w+\.py)::(test_\w+)`")


def section() -> str:
    found = SECTION.search((ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8"))
    assert found, "docs/troubleshooting.md has a '## When something goes wrong' section followed by another '## ' heading"
    return found.group(1)


def test_every_row_names_a_test_and_the_rows_are_numbered():
    rows = [line for line in section().splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(row.split("|")[1]) for row in rows] == list(range(1, len(rows) + 1))
    assert len(rows) >= 25
    assert all(REFERENCE.search(row) for row in rows), [row[:60] for row in rows if not REFERENCE.search(row)]


def test_every_named_test_exists():
    references = set(REFERENCE.findall(section()))
    files = {path.name: path for path in (ROOT / "tests").rglob("test_*.py")}
    missing = [f"{file}::{name}" for file, name in sorted(references)
               if file not in files or not re.search(rf"^def {name}\(", files[file].read_text(encoding="utf-8"), re.MULTILINE)]
    assert references and not missing


def test_the_chinese_table_has_the_same_rows_naming_the_same_tests():
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    chinese = text.split("\n## 中文\n", 1)[1]

    def rows(part: str) -> dict[int, list[tuple[str, str]]]:
        return {int(line.split("|")[1]): REFERENCE.findall(line) for line in part.splitlines() if re.match(r"\| \d+ \|", line)}

    assert rows(chinese) == rows(section())
