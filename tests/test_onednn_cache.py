"""The compiled oneDNN library in the kernel cache is checked against the digest written beside
it before it is loaded: a damaged copy (truncated, changed bytes, no digest) is rebuilt, or the
networks fall back to fast_conv where it cannot be, with one log line, instead of crashing every
later run (a truncated library ends the process with a bus error, changed code with a
segmentation fault).

Every test works on a copy of one build in a temporary cache ($DISTILL_JAX_KERNEL_CACHE), never
on the user's cache; the loads that would crash run in a subprocess.
"""
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

from distill_jax.models import onednn_conv

pytestmark = pytest.mark.skipif(
    onednn_conv.unavailable_reason() is not None,
    reason="oneDNN convolutions unavailable (launch/setup.sh installs g++ and libdnnl-dev): "
    f"{onednn_conv.unavailable_reason()}",
)

DAMAGE_LINE = "onednn_conv.py: the compiled library"

# Loads the networks' convolution (the default on CPU: oneDNN where it works) and checks it
# against XLA's; prints which one ran.
LOAD_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from distill_jax.models import fast_conv, layers
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    k = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 3, 4)), jnp.float32)
    impl = layers.resolve_conv("auto")
    got = jax.jit(lambda x, k: layers.conv2d(x, k, 1, 1, impl))(x, k)
    want = fast_conv.xla_conv2d(x, k, (1, 1), ((1, 1), (1, 1)))
    assert float(jnp.max(jnp.abs(got - want))) < 1e-4
    print("conv", impl)
""")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build for the module (the user's cached one where it verifies, else compiled here),
    copied with its digest into a folder the tests copy from."""
    source = onednn_conv.build()
    folder = tmp_path_factory.mktemp("onednn_build")
    for path in (source, onednn_conv.digest_path(source)):
        shutil.copy2(path, folder / path.name)
    return folder / source.name


@pytest.fixture
def cache(built, tmp_path, monkeypatch):
    """A kernel cache of its own holding a good copy of the build: the library's path in it."""
    monkeypatch.setenv(onednn_conv.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("CXX", raising=False)  # the subprocesses' compiler, which keys the library's name
    (tmp_path / "cache").mkdir()
    library = onednn_conv.library_path()
    shutil.copy2(built, library)
    shutil.copy2(onednn_conv.digest_path(built), onednn_conv.digest_path(library))
    return library


def text_section(data: bytes) -> tuple[int, int]:
    """(offset, size) of the .text section of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):  # name offset, file offset, size
        base = shoff + i * shentsize
        return struct.unpack_from("<I", data, base)[0], *struct.unpack_from("<QQ", data, base + 0x18)

    _, names_at, _ = header(shstrndx)
    for i in range(shnum):
        name_at, offset, size = header(i)
        if data[names_at + name_at:].split(b"\0", 1)[0] == b".text":
            return offset, size
    raise AssertionError("no .text section")


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_code(path):
    data = bytearray(path.read_bytes())
    offset, size = text_section(bytes(data))
    for i in range(offset, offset + size):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def load_in_subprocess(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("CXX", "DISTILL_JAX_CONV")}
    return subprocess.run([sys.executable, "-c", LOAD_SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**base, "XLA_FLAGS": "", **env})


def damage_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if DAMAGE_LINE in line]


@pytest.mark.parametrize("damage", [truncate, flip_code], ids=["truncated", "flipped_code"])
def test_a_damaged_library_is_rebuilt_with_one_log_line(cache, damage):
    damage(cache)
    assert onednn_conv.verify(cache) is not None
    result = load_in_subprocess()
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "conv onednn" in result.stdout
    lines = damage_lines(result.stderr)
    assert len(lines) == 1 and str(cache) in lines[0] and "does not match its digest" in lines[0], result.stderr[-2000:]
    assert lines[0].endswith("rebuilding it")
    assert onednn_conv.verify(cache) is None  # the rebuilt library and its digest agree
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name, onednn_conv.digest_path(cache).name]


def test_a_damaged_library_that_cannot_be_rebuilt_falls_back_to_fast_conv(cache, tmp_path):
    truncate(cache)
    bin_dir = tmp_path / "bin"  # a g++ that fails, first on PATH (the cache key keeps the compiler's name)
    bin_dir.mkdir()
    (bin_dir / "g++").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "g++").chmod(0o755)
    result = load_in_subprocess(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "conv taps" in result.stdout
    assert len(damage_lines(result.stderr)) == 1, result.stderr[-2000:]
    assert "oneDNN unavailable, using fast_conv" in result.stderr and "compiling onednn_conv.cc failed" in result.stderr


def test_verify_names_what_is_wrong(cache):
    assert onednn_conv.verify(cache) is None
    digest = onednn_conv.digest_path(cache)
    assert digest.name == cache.name + ".sha256"
    good = cache.read_bytes()
    cache.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit
    assert "does not match its digest" in onednn_conv.verify(cache)
    cache.write_bytes(good)
    assert onednn_conv.verify(cache) is None
    digest.unlink()  # a library cached before digests were written, or a stop between the two files
    assert onednn_conv.verify(cache) == f"has no digest file ({digest.name})"


def test_a_library_without_its_digest_is_rebuilt_not_loaded(cache, monkeypatch, caplog):
    """build() (which loading calls) rebuilds rather than trusts a library without a digest; the
    compile is stubbed here: it writes a recognisable file in the compiler's place."""
    onednn_conv.digest_path(cache).unlink()
    compiled = []

    def fake_compile(command, **kwargs):
        out = command[command.index("-o") + 1]
        with open(out, "wb") as f:
            f.write(b"rebuilt")
        compiled.append(out)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(onednn_conv.subprocess, "run", fake_compile)
    with caplog.at_level("WARNING"):
        assert onednn_conv.build() == cache
    assert len(compiled) == 1 and cache.read_bytes() == b"rebuilt" and onednn_conv.verify(cache) is None
    assert [r.getMessage() for r in caplog.records if DAMAGE_LINE in r.getMessage()] == [
        f"distill_jax/models/onednn_conv.py: the compiled library {cache} has no digest file "
        f"({onednn_conv.digest_path(cache).name}); rebuilding it"]
    assert onednn_conv.build() == cache and len(compiled) == 1  # verified now: not compiled again
