"""The project's error types: mistakes a user can fix (a config, a file, a name), as opposed to
bugs. The launcher and the `distill-jax` command print these as one line and exit with code 2
(the traceback only with --verbose); anything else is a bug and keeps its traceback.

Each kind of mistake has its own subclass (`ConfigError` here, for configs; a reader's own, such as
`DistilledFormatError`) so tests and callers can tell them apart; they all derive from `UserError`.

A message starts with the thing at fault, then a colon, then what is wrong and what was expected:
`<path>: ...`, `config field 'train.epochs' = 0; ...`, `dataset 'cifar10': ...`, `checkpoint <dir> ...`,
`flag --process_id = 3; ...`; a bad argument of a library call names the call (`experiments.scale_config: ...`).
"""
import errno
import operator
import os


class UserError(Exception):
    """Something the user can fix: the message names the file or field and what was expected."""


class ConfigError(UserError, ValueError):
    """A config cannot be run as given: a config file that gives no config, an unknown field, or a
    value outside its allowed set (raised by `distill_jax.config` and by each mode's own checks)."""


class InputFileError(UserError, ValueError):
    """A file that cannot be used as given: missing, truncated, malformed, or larger than allowed.
    Every reader raises a subclass of this for any malformed input, never another exception."""


# The most bytes a reader materialises for any one array or archive member (default 4 GiB);
# DISTILL_JAX_MAX_ARRAY_BYTES overrides it. A file that declares more is refused before reading.
DEFAULT_MAX_ARRAY_BYTES = 4 << 30


def max_array_bytes() -> int:
    """The cap on any one array a reader allocates (env DISTILL_JAX_MAX_ARRAY_BYTES, else 4 GiB)."""
    value = os.environ.get("DISTILL_JAX_MAX_ARRAY_BYTES", "")
    if not value:
        return DEFAULT_MAX_ARRAY_BYTES
    try:
        cap = int(value)
    except ValueError:
        raise UserError(
            f"environment variable DISTILL_JAX_MAX_ARRAY_BYTES={value!r}; expected a number of bytes"
        ) from None
    if cap <= 0:
        raise UserError(
            f"environment variable DISTILL_JAX_MAX_ARRAY_BYTES={value!r}; expected a positive number of bytes"
        )
    return cap


# The most classes a set or dataset may have: a class count sizes what is derived from it (per-class
# counts, class names, a grid row per class), so a file's largest label must not set memory use.
# ImageNet-21k has 21,841 classes.
MAX_CLASSES = 1 << 16


def check_class_count(count, where: str, field: str, error: type[UserError] = InputFileError) -> int:
    """`count` as an int if it is a class count in [1, MAX_CLASSES]; else `error` naming `where` and `field`."""
    try:
        value = None if isinstance(count, bool) else operator.index(count)
    except TypeError:
        value = None
    if value is None:
        raise error(f"{where}: field '{field}': expected a number of classes in [1, {MAX_CLASSES}], got {count!r}")
    if not 1 <= value <= MAX_CLASSES:
        why = " (a class count this large is corrupt or crafted)" if value > MAX_CLASSES else ""
        raise error(
            f"{where}: field '{field}': {value} classes, expected a number of classes in [1, {MAX_CLASSES}]{why}"
        )
    return value


# exit code of a run stopped by a user error (as argparse's usage errors); a diverged run exits 3
USER_ERROR_EXIT = 2
DIVERGED_EXIT = 3


# OSErrors of a disk that cannot take what a run writes (full, read-only, over quota): the
# user frees space or points the run elsewhere. errno -> (what happened, what to do).
DISK_ERRORS = {
    errno.ENOSPC: ("disk full", "free space or use another workdir"),
    errno.EROFS: ("read-only file system", "remount it read-write or use another workdir"),
}
if hasattr(errno, "EDQUOT"):  # Linux, macOS; not Windows
    DISK_ERRORS[errno.EDQUOT] = ("disk quota exceeded", "free space within the quota or use another workdir")


def _disk_error(err: BaseException) -> OSError | None:
    """The OSError of `DISK_ERRORS` that `err` is or was raised from (`raise ... from`), else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_ERRORS:
            return err
        err = err.__cause__
    return None


def user_error_message(err: BaseException) -> str | None:
    """One line for an error a user can fix (the project's own types, a missing or unreadable
    file, a file or folder without write permission, a disk that is full, read-only or over
    quota, also when another error was raised from it, an allocation the machine cannot make);
    None for a bug."""
    if isinstance(err, UserError):
        return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    disk = _disk_error(err)
    if disk is not None:
        what, fix = DISK_ERRORS[disk.errno]
        return f"{what} while writing {disk.filename or 'a file'}: {fix}"
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        # PermissionError: EACCES and EPERM (no write permission on a file or its folder)
        return f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
    if isinstance(err, MemoryError):
        return "out of memory: the input or the run is larger than this machine allows (smaller batch, width or data)"
    return None
