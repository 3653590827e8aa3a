"""Writing outputs safely: never over an existing file or folder unless asked, never half-written.

- ``refuse_existing``: one clear refusal (what exists, that it was left untouched, how to get past it);
- ``atomic_output``: write into a temporary sibling ``.NAME.partial`` and swap it in only when complete; an
  old ``NAME`` being replaced survives any failure (it is renamed aside, the new one renamed in, then deleted);
- a full disk (or a used-up quota, or a file-size limit) becomes an ``LlmkitError`` that says where, how much is
  free, and what to do.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from llmkit.errors import BadInput, LlmkitError

# errno -> (what happened, what to do); the message adds where and how much room is left
NO_ROOM = {
    errno.ENOSPC: ("the disk is full", "Free some space there or choose a folder on another disk"),
    errno.EDQUOT: ("your disk quota is used up", "Free some space in your quota or choose a folder outside it"),
    errno.EFBIG: ("a file grew past the largest size allowed here (`ulimit -f`, or the file system's limit)",
                  "Raise the limit or choose a folder on another file system"),
}
_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]|\(os error (\d+)\)")  # Python's and Rust's (safetensors) wording


def partial_path(target: str | os.PathLike) -> Path:
    """The temporary sibling an output is written to before it is swapped in.

    >>> partial_path("/data/merged")
    PosixPath('/data/.merged.partial')
    """
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


def refusal(paths, flag: str = "overwrite=True", state: str | None = None) -> str:
    """The message for outputs that are in the way (``state`` says how, default: they exist).

    >>> refusal(["/data/merged"])
    '/data/merged exists already and was left untouched; choose another name or pass overwrite=True to replace it'
    """
    paths = [str(p) for p in _as_list(paths)]
    one = len(paths) == 1
    state = state or ("exists already" if one else "exist already")
    return (f"{', '.join(paths)} {state} and {'was' if one else 'were'} left untouched; choose another name "
            f"or pass {flag} to replace {'it' if one else 'them'}")


def refuse_existing(paths, overwrite: bool = False, flag: str = "overwrite=True") -> None:
    """Raise ``BadInput`` naming every path of ``paths`` (one or a list) that exists, unless ``overwrite``.

    ``flag`` is how the caller asks for overwriting: ``overwrite=True`` in Python, ``--overwrite`` on a command line.

    >>> refuse_existing("/", flag="--overwrite")
    Traceback (most recent call last):
    llmkit.errors.BadInput: / exists already and was left untouched; choose another name or pass --overwrite to replace it
    """
    existing = [p for p in _as_list(paths) if os.path.lexists(p)]
    if existing and not overwrite:
        raise BadInput(refusal(existing, flag))


@contextmanager
def atomic_output(target: str | os.PathLike, overwrite: bool = False, flag: str = "overwrite=True"):
    """Yield the ``.NAME.partial`` path to write ``target`` (a file or a folder) to; swapped in on success.

    On any failure the partial output is deleted and ``target`` is as it was (absent, or the old copy);
    a full disk is raised as ``LlmkitError`` saying where, how much is free and what to do.

    >>> with atomic_output("llmkit-doc.txt", overwrite=True) as partial:
    ...     _ = partial.write_text("complete")
    >>> Path("llmkit-doc.txt").read_text(), partial.exists()
    ('complete', False)
    """
    target = Path(target)
    refuse_existing(target, overwrite, flag)
    partial = partial_path(target)
    remove(partial)  # left by a run that was killed
    try:
        yield partial
        _sync(partial)
        _swap_in(partial, target)
    except BaseException as error:
        remove(partial)
        full = no_room_error(error, target)
        if full is None:
            raise
        raise full from error


def write_text(target: str | os.PathLike, text: str, overwrite: bool = False, flag: str = "overwrite=True") -> Path:
    """Write a UTF-8 text file through ``atomic_output``; returns its path.

    >>> write_text("llmkit-doc.txt", "hello", overwrite=True).read_text()
    'hello'
    """
    with atomic_output(target, overwrite, flag) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(target)


def no_room_error(error: BaseException, target: str | os.PathLike) -> LlmkitError | None:
    """An ``LlmkitError`` explaining a full disk, a used-up quota or a file-size limit; None for other errors.

    The errno is taken from an ``OSError`` in the exception chain, or from its text (``[Errno 28]``, as a
    converter's traceback shows it; ``(os error 28)``, as safetensors words it).

    >>> no_room_error(ValueError("bad value"), "/tmp/x") is None
    True
    >>> str(no_room_error(OSError(28, "No space left on device"), "/tmp/x"))  # doctest: +ELLIPSIS
    'the disk is full: could not finish writing /tmp/x (... free in /tmp); ... or choose a folder on another disk'
    """
    code = _errno_of(error)
    if code not in NO_ROOM:
        return None
    what, fix = NO_ROOM[code]
    target = Path(target)
    kept = f" and the previous {target.name} is unchanged" if os.path.lexists(target) else ""
    return LlmkitError(f"{what}: could not finish writing {target} ({free_space(target)}); nothing half-written "
                       f"was left{kept}. {fix}")


def free_space(path: str | os.PathLike) -> str:
    """How much room is left on the disk that holds ``path`` (or its nearest existing parent folder).

    >>> free_space("/tmp/not/there/yet")  # doctest: +ELLIPSIS
    '... free in /tmp'
    """
    folder = Path(path).parent
    while not folder.is_dir():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    return f"{free / 2**30:.1f} GiB free in {folder}" if free >= 2**30 else f"{free / 2**20:.1f} MiB free in {folder}"


def remove(path: str | os.PathLike) -> None:
    """Delete a file or a folder tree if it exists.

    >>> remove("/tmp/llmkit-nothing-here")
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _as_list(paths) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]


def _errno_of(error: BaseException | None) -> int | None:
    while error is not None:
        if isinstance(error, OSError) and error.errno:
            return error.errno
        match = _ERRNO_IN_TEXT.search(str(error))
        if match:
            return int(match.group(1) or match.group(2))
        error = error.__cause__ or error.__context__
    return None


def _sync(path: Path) -> None:
    """fsync every file written, so a write error that a network file system reports late shows up now."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # these: a file system without fsync
                raise
        finally:
            os.close(descriptor)


def _swap_in(partial: Path, target: Path) -> None:
    """Put ``partial`` in ``target``'s place; an existing folder is kept aside until the new one is in."""
    if not (target.is_dir() and not target.is_symlink()):
        os.replace(partial, target)  # atomic for files: the old file stays until the new one replaces it
        return
    old = target.with_name(f".{target.name}.old")
    remove(old)  # an earlier swap completed but could not delete it
    os.replace(target, old)
    try:
        os.replace(partial, target)
    except BaseException:
        os.replace(old, target)
        raise
    try:
        remove(old)
    except OSError as error:
        warnings.warn(f"{target} was replaced, but its previous copy {old} could not be deleted ({error}); "
                      "delete it yourself", stacklevel=3)
