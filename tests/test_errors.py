"""distill_jax.errors.user_error_message: which errors a user can fix (one line, exit code 2) and
which are bugs (a traceback). A disk that cannot take a run's files (full, read-only, over
quota) or a file without write permission is the user's to fix, also mid-run."""
import errno
import os

import pytest

from distill_jax import cli, errors
from test_records import _experiment_dir

FILE = "runs/x/results.json"


@pytest.mark.parametrize("code, expected", [
    (errno.ENOSPC, f"disk full while writing {FILE}: free space or use another workdir"),
    (errno.EROFS, f"read-only file system while writing {FILE}: remount it read-write or use another workdir"),
    (errno.EDQUOT, f"disk quota exceeded while writing {FILE}: free space within the quota or use another workdir"),
])
def test_a_disk_that_cannot_take_the_files_is_a_user_error(code, expected):
    err = OSError(code, os.strerror(code), FILE)
    assert type(err) is OSError  # no subclass of its own: classified by errno
    assert errors.user_error_message(err) == expected
    # the same raised from another error (a library that wraps it), and one naming no file
    try:
        try:
            raise err
        except OSError as cause:
            raise RuntimeError("saving failed") from cause
    except RuntimeError as wrapped:
        assert errors.user_error_message(wrapped) == expected
    assert errors.user_error_message(OSError(code, os.strerror(code))).startswith(expected.split(" while ")[0]
                                                                                   + " while writing a file: ")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_no_write_permission_is_a_user_error(code):
    err = OSError(code, os.strerror(code), FILE)
    assert isinstance(err, PermissionError)
    assert errors.user_error_message(err) == f"{os.strerror(code)}: {FILE}"
    assert "\n" not in errors.user_error_message(OSError(code, os.strerror(code)))


def test_other_os_errors_and_their_wrappers_stay_bugs():
    assert errors.user_error_message(OSError(errno.EBADF, os.strerror(errno.EBADF), FILE)) is None
    try:
        try:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        except OSError as cause:
            raise RuntimeError("bug") from cause
    except RuntimeError as wrapped:
        assert errors.user_error_message(wrapped) is None


def test_a_disk_turned_read_only_mid_command_ends_it_in_one_line(tmp_path, monkeypatch, capsys):
    """`distill-jax compare` whose output disk turns read-only as it renames its first file."""
    workdir = _experiment_dir(tmp_path / "exp")
    out = tmp_path / "report"

    def read_only(src, dst, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    code = cli.main(["compare", str(workdir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == errors.USER_ERROR_EXIT and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"distill-jax: error: read-only file system while writing {out}/"), err
