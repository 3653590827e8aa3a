"""Fine-tuning data in LLaMA-Factory's alpaca format: the course's self-identity set, and a checker.

Alpaca format: a JSON list of records ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` and
``system`` optional), registered by name in a ``dataset_info.json`` next to it:
``{"identity": {"file_name": "identity.json"}}``. The same folder works for peft (``load_alpaca``) and for
``llamafactory-cli`` (``dataset_dir`` + ``dataset``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from llmkit.errors import BadInput
from llmkit.safe_output import refuse_existing, write_text

IDENTITY = "identity"
REQUIRED = ("instruction", "output")
OPTIONAL = ("input", "system")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: which file, which record (0-based, None for the whole file), which field.

    >>> str(Problem("identity.json", 3, "output", "empty answer"))
    'identity.json: record 3, field "output": empty answer'
    """

    file: str
    record: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file] + ([f"record {self.record}"] if self.record is not None else [])
        where += [f'field "{self.field}"'] if self.field else []
        return f"{where[0]}: {', '.join(where[1:])}{': ' if len(where) > 1 else ''}{self.message}"


def identity_records(name: str, author: str) -> list[dict]:
    """The course's 44 bilingual self-identity pairs with ``{{name}}`` and ``{{author}}`` filled in.

    >>> identity_records("小K", "llmkit")[0]["output"].startswith("我是 小K")
    True
    """
    if not name.strip() or not author.strip():
        raise BadInput("give the assistant a non-empty name and author")
    text = (resources.files("llmkit.finetune.data") / "identity.json").read_text(encoding="utf-8")
    return json.loads(text.replace("{{name}}", name).replace("{{author}}", author))


def write_identity_dataset(folder: str | Path, name: str, author: str, overwrite: bool = False) -> Path:
    """Write ``identity.json`` and ``dataset_info.json`` into ``folder`` (refuses to replace them unless asked;
    each file appears complete or not at all, see ``llmkit.safe_output``).

    >>> write_identity_dataset("/tmp/data", "小K", "llmkit")  # doctest: +SKIP
    PosixPath('/tmp/data')
    """
    folder = Path(folder)
    files = {f"{IDENTITY}.json": identity_records(name, author), "dataset_info.json": {IDENTITY: {"file_name": f"{IDENTITY}.json"}}}
    refuse_existing([folder / f for f in files], overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, content in files.items():
        write_text(folder / file_name, json.dumps(content, ensure_ascii=False, indent=1) + "\n", overwrite)
    return folder


def check_dataset(folder: str | Path, tokenizer=None, cutoff_len: int | None = None) -> list[Problem]:
    """Every problem in a dataset folder: ``dataset_info.json`` and each alpaca file it names.

    Finds broken JSON (with line and column), a file that is not a list, records that are not objects, missing
    or non-text fields, empty instructions or answers, and, given a tokenizer and ``cutoff_len``, records
    longer than the cutoff once the chat template is applied (they would be cut mid-answer).

    >>> check_dataset(write_identity_dataset("ok-data", "小K", "llmkit", overwrite=True))
    []
    """
    folder = Path(folder)
    info, problem = _read_json(folder / "dataset_info.json")
    if problem:
        return [problem]
    if not isinstance(info, dict) or not info:
        return [Problem("dataset_info.json", None, None, 'must be an object like {"identity": {"file_name": "identity.json"}}')]
    problems = []
    for name, entry in info.items():
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(file_name, str):
            problems.append(Problem("dataset_info.json", None, name, 'needs {"file_name": "<file>.json"}'))
        elif not _is_file(folder / file_name):
            problems.append(Problem("dataset_info.json", None, name, f"names {file_name}, which is not in {folder}"))
        else:
            problems += check_alpaca_file(folder / file_name, tokenizer, cutoff_len)
    return problems


def check_alpaca_file(path: str | Path, tokenizer=None, cutoff_len: int | None = None) -> list[Problem]:
    """Problems in one alpaca JSON file (see ``check_dataset``).

    >>> check_alpaca_file(write_identity_dataset("ok-data", "小K", "llmkit", overwrite=True) / "identity.json")
    []
    """
    path = Path(path)
    records, problem = _read_json(path)
    if problem:
        return [problem]
    if not isinstance(records, list) or not records:
        return [Problem(path.name, None, None, "must be a non-empty JSON list of records")]
    problems = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            problems.append(Problem(path.name, index, None, f"must be an object, got {type(record).__name__}"))
            continue
        problems += _record_problems(path.name, index, record)
        if tokenizer is not None and cutoff_len and not any(p.record == index for p in problems):
            length = len(tokenizer.apply_chat_template(alpaca_messages(record), tokenize=True, return_dict=True)["input_ids"])
            if length > cutoff_len:
                problems.append(Problem(path.name, index, None,
                                        f"{length} tokens with the chat template, over cutoff_len {cutoff_len}: "
                                        "shorten it or raise cutoff_len"))
    return problems


def _record_problems(file: str, index: int, record: dict) -> list[Problem]:
    problems = [Problem(file, index, key, "missing") for key in REQUIRED if key not in record]
    for key in REQUIRED + OPTIONAL:
        if key in record and not isinstance(record[key], str):
            problems.append(Problem(file, index, key, f"must be text, got {type(record[key]).__name__}"))
        elif key in REQUIRED and key in record and not record[key].strip():
            problems.append(Problem(file, index, key, "is empty"))
    return problems


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False also for a name the system cannot look up (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _read_json(path: Path) -> tuple[object, Problem | None]:
    if not _is_file(path):
        return None, Problem(path.name, None, None, f"not found in {path.parent}")
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except json.JSONDecodeError as error:
        return None, Problem(path.name, None, None, f"broken JSON at line {error.lineno}, column {error.colno}: {error.msg}")
    except UnicodeDecodeError as error:
        return None, Problem(path.name, None, None, f"not UTF-8 text ({error.reason} at byte {error.start})")
    except (ValueError, RecursionError) as error:  # a number over 4300 digits; lists nested thousands deep
        return None, Problem(path.name, None, None, f"JSON that Python cannot read ({type(error).__name__}: {error})")


def alpaca_messages(record: dict) -> list[dict]:
    """Chat messages of an alpaca record, as LLaMA-Factory builds them: instruction and input joined by a newline.

    >>> alpaca_messages({"instruction": "翻译", "input": "hello", "output": "你好"})[0]
    {'role': 'user', 'content': '翻译\\nhello'}
    """
    prompt = "\n".join(part for part in (record["instruction"], record.get("input", "")) if part)
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def load_alpaca(folder: str | Path, name: str = IDENTITY) -> list[dict]:
    """The records of dataset ``name`` in ``folder``, refusing with every problem listed if it is not clean.

    >>> len(load_alpaca(write_identity_dataset("ok-data", "小K", "llmkit", overwrite=True)))
    44
    """
    problems = check_dataset(folder)
    if problems:
        raise BadInput(f"{len(problems)} problem(s) in {folder}: " + "; ".join(map(str, problems[:5])))
    info = json.loads((Path(folder) / "dataset_info.json").read_text(encoding="utf-8"))
    if name not in info:
        raise BadInput(f"dataset {name!r} is not in {folder}/dataset_info.json; it has {', '.join(info)}")
    return json.loads((Path(folder) / info[name]["file_name"]).read_text(encoding="utf-8"))
