"""2-D convolutions computed by oneDNN inside XLA's CPU programs (FFI custom calls).

Why: XLA:CPU runs every convolution with fewer than 128 output channels on one thread,
and the narrow first stages of ResNet-18 (and every stage of the width-16 networks) are
such convolutions. oneDNN's kernels keep all cores busy and use the CPU's vector
extensions: on a 2-core AVX-512 Xeon they bring the ResNet-18 train step from 1.60x to
0.87-0.97x PyTorch's wall time (benchmarks/README.md, "CPU: JAX beside PyTorch").

The C++ source ships as distill_jax/models/kernels/onednn_conv.cc. On first use it is
compiled with the system C++ compiler ($CXX, else g++) against oneDNN (Debian's
libdnnl-dev, which launch/setup.sh installs) and JAX's FFI headers, into a cache folder
($DISTILL_JAX_KERNEL_CACHE, else ~/.cache/distill_jax/kernels: `distill_jax/paths.py`) under a name keyed by the source,
jaxlib's version, the compiler and oneDNN's version. The library and its SHA-256 digest
(`<name>.so.sha256`, beside it) are each written under a temporary name and renamed, so
concurrent processes never load a half-written library; before loading, the library is checked
against its digest, and a damaged one (truncated, changed bytes, no digest) is rebuilt, with one
log line saying so, rather than loaded (a damaged library crashes the process: bus error or
segmentation fault). Where it cannot be rebuilt, the networks fall back to fast_conv (`layers`).

`conv2d` has the fast_conv interface and limits (float32, first-order reverse mode; see
fast_conv's docstring) and the same vmap handling of per-seed kernels.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from distill_jax import atomic, paths
from distill_jax.models import fast_conv

SOURCE = Path(__file__).resolve().parent / "kernels" / "onednn_conv.cc"
CACHE_ENV = paths.SUBFOLDER_ENVS["kernels"]
# FFI target name -> the C++ handler symbol.
_TARGETS = {
    "distill_onednn_conv_forward": "DistillOnednnConvForward",
    "distill_onednn_conv_input_grad": "DistillOnednnConvInputGrad",
    "distill_onednn_conv_kernel_grad": "DistillOnednnConvKernelGrad",
}
_WHERE = "distill_jax/models/onednn_conv.py"


class OnednnUnavailable(RuntimeError):
    """The oneDNN convolution library cannot be built or loaded here (the message says why)."""


def _compiler() -> str:
    return os.environ.get("CXX") or "g++"


def cache_dir() -> Path:
    """Where compiled kernels live: $DISTILL_JAX_KERNEL_CACHE, else the `kernels/` folder of the
    cache root (`distill_jax/paths.py`; by default ~/.cache/distill_jax/kernels)."""
    return paths.kernel_cache()


# oneDNN's version header (Debian's libdnnl-dev): part of the cache key, so an upgraded oneDNN
# gets a freshly compiled library.
_ONEDNN_VERSION_HEADER = Path("/usr/include/oneapi/dnnl/dnnl_version.h")


def library_path() -> Path:
    """The compiled library's path, keyed by the source, jaxlib's version, the compiler and oneDNN's version."""
    onednn = _ONEDNN_VERSION_HEADER.read_bytes() if _ONEDNN_VERSION_HEADER.is_file() else b""
    digest = hashlib.sha256(
        SOURCE.read_bytes() + f"|{jaxlib.__version__}|{_compiler()}|".encode() + onednn
    ).hexdigest()[:16]
    return cache_dir() / f"onednn_conv-{digest}.so"


def digest_path(path: Path) -> Path:
    """The file beside a compiled library that holds its SHA-256 (hex), written with it."""
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verify(path: Path) -> str | None:
    """None when the library at `path` matches the digest written beside it at build time, else
    what is wrong with it (the end of a sentence that starts with the library's path)."""
    path = Path(path)
    try:
        recorded = digest_path(path).read_text().strip()
    except FileNotFoundError:
        return f"has no digest file ({digest_path(path).name})"
    except OSError as error:
        return f"has an unreadable digest file ({error})"
    try:
        actual = _sha256(path)
    except OSError as error:
        return f"cannot be read ({error})"
    if actual != recorded:
        return f"does not match its digest ({digest_path(path).name}): the file is damaged"
    return None


def build(path: Path | None = None) -> Path:
    """Compiles the kernels to `path` (default library_path()) unless a copy that matches its
    digest is already there (one that does not is rebuilt, logged); returns the path."""
    path = library_path() if path is None else Path(path)
    if path.exists():
        problem = verify(path)
        if problem is None:
            return path
        logging.warning("%s: the compiled library %s %s; rebuilding it", _WHERE, path, problem)
    compiler = _compiler()
    if shutil.which(compiler) is None:
        raise OnednnUnavailable(
            f"{_WHERE}: C++ compiler {compiler!r} not found "
            "(set $CXX, or install g++ and libdnnl-dev: launch/setup.sh does)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    digests = []

    def compile_to(tmp: str) -> None:
        command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
                   str(SOURCE), "-o", tmp, "-ldnnl"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise OnednnUnavailable(
                f"{_WHERE}: compiling {SOURCE.name} failed "
                "(is oneDNN installed? Debian: apt-get install libdnnl-dev):\n"
                f"{' '.join(command)}\n{result.stderr[-2000:]}"
            )
        digests.append(_sha256(Path(tmp)))

    atomic.write_with_path(path, compile_to)
    # The library first, then its digest: a process that stops between the two leaves a library
    # without a digest, which the next one rebuilds.
    atomic.write_text(digest_path(path), digests[0] + "\n")
    return path


def wait_policy_warning(environ, loaded_maps: str) -> str | None:
    """Why OpenMP will spin-wait here, or None: the system libgomp that oneDNN runs on was already
    loaded (by another library) and read its settings then, without the passive policy.
    `loaded_maps`: /proc/self/maps. (pip's torch brings its own copy, libgomp-<hash>.so.1, which
    leaves the system one to load with oneDNN, after the policy is set.)"""
    if "OMP_WAIT_POLICY" in environ or "/libgomp.so" not in loaded_maps:
        return None
    return ("libgomp (OpenMP) was loaded before distill_jax set OMP_WAIT_POLICY=PASSIVE, so oneDNN's threads "
            "spin while they wait: small convolutions may take milliseconds beside other work; set "
            "OMP_WAIT_POLICY=PASSIVE in the environment before starting Python")


def _loaded_maps() -> str:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return ""


@functools.cache
def _load() -> None:
    """Builds (if needed) and loads the library, then registers its FFI targets once per process."""
    path = build()
    # oneDNN runs on OpenMP (libgomp, loaded with it). Its default spin-wait made each small
    # call cost milliseconds beside other work, and passive waiting was as fast on the ResNet-18
    # step idle (2.16-2.31 s vs 2.27-2.39 s, less CPU): the default unless the user set one.
    # libgomp reads it when it loads, so it has no effect if something loaded libgomp before.
    warning = wait_policy_warning(os.environ, _loaded_maps())
    if warning:
        logging.warning("%s", warning)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        raise OnednnUnavailable(f"{_WHERE}: cannot load {path}: {error}") from error
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")


@functools.cache
def unavailable_reason() -> str | None:
    """None when the oneDNN convolutions work in this process, else why not (cached)."""
    try:
        _load()
    except OnednnUnavailable as error:
        return str(error)
    return None


def require() -> None:
    """Raises OnednnUnavailable (with the reason) unless the oneDNN convolutions can run."""
    reason = unavailable_reason()
    if reason is not None:
        raise OnednnUnavailable(reason)


def _attrs(strides, pads) -> dict:
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    return {
        name: np.int64(value)
        for name, value in zip(("sh", "sw", "pt", "pb", "pl", "pr"), (sh, sw, pt, pb, pl, pr), strict=True)
    }


def _call(target: str, shape: tuple[int, ...], a: jax.Array, b: jax.Array, strides, pads) -> jax.Array:
    require()
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(
        a.astype(jnp.float32), b.astype(jnp.float32), **_attrs(strides, pads))


def _out_hw(x_shape, kernel_shape, strides, pads) -> tuple[int, int]:
    return tuple((x_shape[1 + i] + sum(pads[i]) - kernel_shape[i]) // strides[i] + 1 for i in range(2))


def forward(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
    """y (N, Ho, Wo, F) = conv(x (N, H, W, C), kernel (kh, kw, C, F))."""
    shape = (x.shape[0], *_out_hw(x.shape, kernel.shape, strides, pads), kernel.shape[3])
    return _call("distill_onednn_conv_forward", shape, x, kernel, strides, pads)


def input_grad(x: jax.Array, kernel: jax.Array, grad_out: jax.Array, strides, pads) -> jax.Array:
    """dL/dx from dL/dy (only x's shape is read)."""
    return _call("distill_onednn_conv_input_grad", x.shape, grad_out, kernel, strides, pads)


def kernel_grad(x: jax.Array, grad_out: jax.Array, kernel_hw, strides, pads) -> jax.Array:
    """dL/dkernel (kh, kw, C, F) from x and dL/dy."""
    return _call("distill_onednn_conv_kernel_grad", tuple(kernel_hw) + (x.shape[3], grad_out.shape[3]),
                 x, grad_out, strides, pads)


_onednn_conv = fast_conv.make_conv2d(kernel_grad, conv_fn=forward, input_grad_fn=input_grad)


def conv2d(x: jax.Array, kernel: jax.Array, strides=1, padding: fast_conv.PaddingLike = "SAME") -> jax.Array:
    """fast_conv.conv2d's interface and result, every piece computed by oneDNN (float32)."""
    strides, pads = fast_conv.check_conv_args(x, kernel, strides, padding)
    if kernel.shape[:2] == (1, 1) and strides != (1, 1):
        # A strided 1x1 convolution is the unit-stride one on every s-th (padded) pixel. Taking
        # those pixels here keeps oneDNN off its strided 1x1 path, whose kernel gradient writes
        # out of bounds in oneDNN 2.6 on AVX2 CPUs when C is not a multiple of 8.
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))[:, ::strides[0], ::strides[1], :]
        strides, pads = (1, 1), ((0, 0), (0, 0))
    return _onednn_conv(x, kernel, strides, pads)



def status() -> str:
    """One line for setup scripts: where the compiled library is, or why it cannot be built."""
    reason = unavailable_reason()
    return f"oneDNN convolutions: {'ready, ' + str(library_path()) if reason is None else 'unavailable: ' + reason}"
