"""The one atomic writer: whole files, the mode a plain open() gives, nothing left on failure."""
import ast
import errno
import os
import pathlib
import stat

import numpy as np
import pytest
from PIL import Image

from distill_jax import atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o666 & ~0o027
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_form_writes_the_content_with_the_mode_of_a_plain_open(tmp_path, umask_027):
    with open(tmp_path / "plain", "w"):
        pass
    atomic.write_text(tmp_path / "a.txt", "é\n")
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic.write_with(tmp_path / "c.npz", lambda f: np.savez(f, x=np.arange(3)))
    atomic.write_with_path(tmp_path / "d.png", lambda tmp: Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp))
    assert (tmp_path / "a.txt").read_bytes() == "é\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["x"], np.arange(3))
    assert Image.open(tmp_path / "d.png").format == "PNG"  # the temporary path keeps the suffix
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
        name: umask_027 for name in ("plain", "a.txt", "b.bin", "c.npz", "d.png")}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "set.npz"
    atomic.write_bytes(target, b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic.write_with(target, fail)
    def fail_at_path(tmp):
        with open(tmp, "wb") as f:
            fail(f)

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic.write_with_path(target, fail_at_path)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["set.npz"]


def test_a_disk_error_names_the_file(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as err:
        atomic.write_with(tmp_path / "results.json", full)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "results.json")
    assert list(tmp_path.iterdir()) == []


def test_atomic_imports_nothing_of_the_package():
    """Every layer writes through it, so it may not import any of them."""
    tree = ast.parse(pathlib.Path(atomic.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.startswith("distill_jax")], imported


class _ReadError(Exception):
    pass


@pytest.mark.parametrize("content, message", [
    (None, r"missing\.json: cannot be read \(No such file or directory\); the run's plan"),
    ("{", r"bad\.json: not JSON \(.*\); the run's plan"),
    ("[1, 2]", r"bad\.json: expected a JSON object, found list; the run's plan"),
])
def test_read_json_object_names_the_file_in_the_callers_error(tmp_path, content, message):
    path = tmp_path / ("missing.json" if content is None else "bad.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(_ReadError, match=message):
        atomic.read_json_object(path, _ReadError, "the run's plan")


def test_read_json_object_returns_the_object(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert atomic.read_json_object(tmp_path / "ok.json", _ReadError) == {"a": [1, 2]}
