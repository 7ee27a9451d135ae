"""onednn_conv: oneDNN's convolutions inside XLA programs equal XLA's, under jit and vmap;
the library builds atomically, and each way it can be unavailable gives a clear error."""
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from distill_jax.models import fast_conv, layers, onednn_conv

pytestmark = pytest.mark.skipif(
    onednn_conv.unavailable_reason() is not None,
    reason="oneDNN convolutions unavailable (launch/setup.sh installs g++ and libdnnl-dev): "
    f"{onednn_conv.unavailable_reason()}",
)

TOL = dict(rtol=2e-5, atol=5e-5)


def normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def reference_value_and_grads(x, kernel, strides, pads, cotangent):
    """Independent reference: XLA's convolution and its autodiff."""
    y, vjp = jax.vjp(
        lambda x_, k_: lax.conv_general_dilated(x_, k_, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")),
        x,
        kernel,
    )
    return (y,) + vjp(cotangent)


@pytest.mark.parametrize("x_shape, kernel_shape, strides, pads", [
    ((3, 9, 9, 5), (3, 3, 5, 7), (1, 1), ((1, 1), (1, 1))),
    ((2, 10, 10, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1))),    # stride 2, as ResNet's downsampling
    ((4, 8, 8, 3), (1, 1, 3, 16), (2, 2), ((0, 0), (0, 0))),     # 1x1 shortcut
    ((2, 10, 11, 5), (1, 1, 5, 7), (3, 2), ((1, 0), (0, 2))),    # strided 1x1 with padding
    ((2, 11, 9, 3), (3, 2, 3, 5), (1, 2), ((0, 2), (1, 0))),     # non-square, asymmetric padding
    ((2, 16, 16, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),    # ImageNet-style stem
])
def test_forward_and_gradients_equal_xla(x_shape, kernel_shape, strides, pads):
    x, kernel = normal(x_shape, 0), normal(kernel_shape, 1)
    y = jax.jit(onednn_conv.conv2d, static_argnums=(2, 3))(x, kernel, strides, pads)
    cotangent = normal(y.shape, 2)
    expected = reference_value_and_grads(x, kernel, strides, pads, cotangent)
    _, vjp = jax.vjp(lambda x_, k_: onednn_conv.conv2d(x_, k_, strides, pads), x, kernel)
    chex.assert_trees_all_close((y,) + vjp(cotangent), expected, **TOL)


@pytest.mark.parametrize("kernel_batched", [True, False])
def test_vmap_over_seeds_equals_xla(kernel_batched):
    """Seeds vmapped: per-seed kernels (unrolled calls) or a shared kernel (seeds folded into the batch)."""
    xs = normal((3, 4, 8, 8, 6), 0)
    kernels = normal((3, 3, 3, 6, 5), 1) if kernel_batched else normal((3, 3, 6, 5), 1)
    in_axes = (0, 0 if kernel_batched else None)

    def loss(conv, x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel, (1, 1), ((1, 1), (1, 1)))))

    got = jax.jit(jax.vmap(jax.value_and_grad(lambda x, k: loss(onednn_conv.conv2d, x, k), argnums=(0, 1)), in_axes))(
        xs, kernels
    )
    want = jax.vmap(jax.value_and_grad(lambda x, k: loss(fast_conv.xla_conv2d, x, k), argnums=(0, 1)), in_axes)(
        xs, kernels
    )
    chex.assert_trees_all_close(got, want, **TOL)


def test_cpu_default_is_onednn_and_the_network_layer_agrees_with_xla(monkeypatch):
    monkeypatch.delenv("DISTILL_JAX_CONV", raising=False)
    assert layers.resolve_conv("auto") == "onednn"
    x = normal((2, 9, 9, 3), 0)
    results = {}
    for impl in ("xla", "onednn"):
        conv = layers.Conv(features=4, kernel_size=3, strides=2, implementation=impl)
        variables = conv.init(jax.random.key(0), x)
        results[impl] = jax.value_and_grad(lambda v, x_, conv=conv: jnp.sum(conv.apply(v, x_) ** 2), argnums=(0, 1))(
            variables, x
        )
    chex.assert_trees_all_close(results["xla"], results["onednn"], rtol=1e-4, atol=1e-5)


def test_unavailable_library_falls_back_to_taps_by_default_and_errors_when_asked_for(monkeypatch):
    monkeypatch.setattr(onednn_conv, "unavailable_reason", lambda: "no compiler here")
    monkeypatch.delenv("DISTILL_JAX_CONV", raising=False)
    assert layers.resolve_conv("auto") == "taps"
    with pytest.raises(onednn_conv.OnednnUnavailable, match="no compiler here"):
        layers.resolve_conv("onednn")
    monkeypatch.setenv("DISTILL_JAX_CONV", "onednn")
    with pytest.raises(onednn_conv.OnednnUnavailable, match="no compiler here"):
        layers.resolve_conv("auto")


def test_build_is_atomic_and_reused(tmp_path):
    path = onednn_conv.build(tmp_path / "conv.so")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.so", "conv.so.sha256"]  # the library and its digest
    mtime = path.stat().st_mtime_ns
    assert onednn_conv.build(path) == path and path.stat().st_mtime_ns == mtime


def test_library_path_is_keyed_by_compiler_and_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(onednn_conv.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CXX", "g++")
    first = onednn_conv.library_path()
    monkeypatch.setenv("CXX", "clang++")
    assert first.parent == tmp_path and onednn_conv.library_path() != first


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(onednn_conv.OnednnUnavailable, match="no-such-g\\+\\+.*not found"):
        onednn_conv.build(tmp_path / "conv.so")
    assert list(tmp_path.iterdir()) == []


def test_failed_compile_names_the_source_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(onednn_conv.OnednnUnavailable, match="compiling onednn_conv.cc failed"):
        onednn_conv.build(tmp_path / "conv.so")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("a_shape, message", [
    ((2, 8, 8), "rank 4"),
    ((2, 8, 8, 4), "shapes do not match"),  # 4 input channels against a kernel for 3
])
def test_the_kernel_rejects_bad_operands(a_shape, message):
    onednn_conv.require()
    call = jax.ffi.ffi_call("distill_onednn_conv_forward", jax.ShapeDtypeStruct((2, 8, 8, 5), jnp.float32))
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(call(jnp.zeros(a_shape), jnp.zeros((3, 3, 3, 5)),
                                   **{k: np.int64(v) for k, v in dict(sh=1, sw=1, pt=1, pb=1, pl=1, pr=1).items()}))


def test_concurrent_calls_from_xla_threads_do_not_hang(tmp_path):
    """XLA runs independent custom calls at once; with oneDNN's shared scratchpad this hung
    (ResNet-18 width 16, 3 seeds). Independent kernel gradients, many times, in a subprocess with a deadline."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from distill_jax.models import onednn_conv, fast_conv
        rng = np.random.default_rng(0)
        xs = [jnp.asarray(rng.normal(size=(100, 32, 32, c)), jnp.float32) for c in (16, 16, 16, 16)]
        ks = [jnp.asarray(rng.normal(size=(3, 3, c, 16)), jnp.float32) for c in (16, 16, 16, 16)]
        def loss(conv, ks):
            return sum(jnp.sum(conv(x, k, (1, 1), ((1, 1), (1, 1))) ** 2) for x, k in zip(xs, ks))
        grad = jax.jit(jax.grad(lambda ks: loss(onednn_conv.conv2d, ks)))
        want = jax.grad(lambda ks: loss(fast_conv.xla_conv2d, ks))(ks)
        for _ in range(10):
            got = grad(ks)
        assert all(float(jnp.max(jnp.abs(g - w))) <= 1e-4 * float(jnp.max(jnp.abs(w))) for g, w in zip(got, want))
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_status_line_names_the_library():
    assert onednn_conv.status() == f"oneDNN convolutions: ready, {onednn_conv.library_path()}"


def test_wait_policy_warning_only_when_libgomp_came_first():
    maps = "7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
    assert "OMP_WAIT_POLICY=PASSIVE" in onednn_conv.wait_policy_warning({}, maps)
    assert onednn_conv.wait_policy_warning({"OMP_WAIT_POLICY": "ACTIVE"}, maps) is None  # the user chose
    assert onednn_conv.wait_policy_warning({}, "7f00-7f10 r-xp 0 08:01 42 /usr/lib/libc.so.6\n") is None
    torch_copy = "7f00-7f10 r-xp 0 08:01 42 /site-packages/torch/lib/libgomp-a34b3233.so.1\n"
    assert onednn_conv.wait_policy_warning({}, torch_copy) is None  # not the copy oneDNN loads


@pytest.mark.parametrize("gomp_first", [True, False])
def test_loading_after_another_openmp_user_is_logged(gomp_first):
    """A process that loaded libgomp before distill_jax (as torch does) is told that the passive
    wait policy could not take effect; one that did not is not."""
    script = textwrap.dedent(f"""
        import ctypes, os
        os.environ.pop("OMP_WAIT_POLICY", None)
        if {gomp_first}:
            ctypes.CDLL("libgomp.so.1")
        from distill_jax.models import onednn_conv
        onednn_conv.require()
        print("policy", os.environ["OMP_WAIT_POLICY"])
    """)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and "policy PASSIVE" in result.stdout, result.stderr[-2000:]
    assert ("was loaded before distill_jax set OMP_WAIT_POLICY" in result.stderr) == gomp_first, result.stderr[-2000:]


def test_strided_1x1_kernel_gradient_on_one_thread_equals_xla():
    """oneDNN's own strided 1x1 kernel gradient writes out of bounds on AVX2 CPUs when C is not a
    multiple of 8 (a crash on one OpenMP thread, wrong values on several); conv2d must not reach it.
    In a subprocess, since the failure kills the process."""
    script = textwrap.dedent("""
        import jax, numpy as np
        from jax import lax
        from distill_jax.models import onednn_conv
        x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
        k = np.random.default_rng(1).normal(size=(1, 1, 3, 16)).astype(np.float32)
        ct = np.random.default_rng(2).normal(size=(4, 4, 4, 16)).astype(np.float32)
        def kernel_grad(conv):
            return jax.jit(lambda b: jax.vjp(lambda b_: conv(x, b_), b)[1](ct)[0])(k)
        expected = kernel_grad(lambda a, b: lax.conv_general_dilated(a, b, (2, 2), "VALID",
                                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")))
        for _ in range(20):
            np.testing.assert_allclose(kernel_grad(lambda a, b: onednn_conv.conv2d(a, b, 2, "VALID")), expected,
                                       rtol=2e-5, atol=5e-5)
        print("equal")
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and "equal" in result.stdout, (result.returncode, result.stderr[-2000:])
