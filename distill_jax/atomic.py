"""Files written whole or not at all: the package's one way to write a file (and to read a JSON
file back).

A file is written under a temporary name in its own folder and renamed over its path, so a
reader (or a rerun after a kill) finds the old file or the new one, never half of one. The
temporary file is created as `open(path, "w")` creates a file: mode 0666 less the process's
umask (0644 under the usual umask 022), so a distilled set, a record or a figure is as readable
by other users as a file any other tool writes. A write that fails removes its temporary file
and raises its error naming the path (`named`).

`write_text` and `write_bytes` take the content; `write_with` hands a writer that wants a file
object (`np.savez`, PIL) an open binary file, and `write_with_path` hands one that wants a path
(matplotlib's `savefig`, a compiler's `-o`) the temporary path, whose suffix is the file's own.
Callers create the folder. `read_json_object` reads a JSON file back, raising the caller's own
error type with one line that names the file. This module imports nothing of the package:
every layer may use it.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
from typing import BinaryIO, Callable


def named(err: BaseException, path) -> BaseException:
    """`err`, or for an OSError that names no file (a write to a full disk), the same error naming
    `path`: the one line a user sees says which file could not be written."""
    if isinstance(err, OSError) and not err.filename and err.errno is not None:
        return type(err)(err.errno, err.strerror, str(path))
    return err


def _temporary(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """A new file beside `path` (hidden, ending in `path`'s suffix), open for writing, created
    with mode 0666 and the umask applied by the kernel, as `open()` creates files."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def _replace(path: pathlib.Path, fill: Callable[[int, pathlib.Path], object]) -> pathlib.Path:
    fd, tmp = _temporary(path)
    try:
        fill(fd, tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        renamed = named(err, path)
        if renamed is err:
            raise
        raise renamed from err
    return path


def write_with(path, write: Callable[[BinaryIO], object]) -> pathlib.Path:
    """Writes `path` with `write(f)`, `f` a binary file open on the temporary file; returns the path."""
    def fill(fd, tmp):
        with os.fdopen(fd, "wb") as f:
            write(f)

    return _replace(pathlib.Path(path), fill)


def write_with_path(path, write: Callable[[str], object]) -> pathlib.Path:
    """Writes `path` with `write(tmp)`, `tmp` the temporary file's path (it exists, empty; a writer
    may also replace it); returns the path."""
    def fill(fd, tmp):
        os.close(fd)
        write(str(tmp))

    return _replace(pathlib.Path(path), fill)


def write_bytes(path, data: bytes) -> pathlib.Path:
    return write_with(path, lambda f: f.write(data))


def write_text(path, text: str) -> pathlib.Path:
    """UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def read_json_object(path, error: Callable[[str], Exception], what: str = "") -> dict:
    """The JSON object in `path`; for a file that cannot be read, is not JSON or holds no object,
    `error(message)` with one line naming the file, ended by `what` (what the file is for)."""
    path = pathlib.Path(path)
    tail = f"; {what}" if what else ""
    try:
        value = json.loads(path.read_text())
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err}){tail}") from None
    except ValueError as err:
        raise error(f"{path}: not JSON ({err}){tail}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, found {type(value).__name__}{tail}")
    return value
