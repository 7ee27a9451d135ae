"""DropPath arithmetic as pure functions (docs/method.md §2.1, §2.2), shared by the networks.

Kept free of Flax so the equations can be tested on plain arrays.
"""
import jax
import jax.numpy as jnp


def check_keep_rate(keep_rate) -> None:
    """Raise ValueError for a concrete keep rate outside [0, 1]; traced rates pass unchecked."""
    try:
        value = float(keep_rate)
    except jax.errors.ConcretizationTypeError:
        return  # a traced value inside jit: cannot be inspected without recompiling
    except TypeError as error:
        raise ValueError(f"droppath.py: keep_rate must be a scalar in [0, 1], got {keep_rate!r}") from error
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"droppath.py: keep_rate must be in [0, 1], got {value}")


def _per_sample(mask: jax.Array, ndim: int) -> jax.Array:
    """Reshape a (B,) mask so it broadcasts over the trailing axes of a (B, ...) array."""
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def sample_keep_mask(rng: jax.Array, batch_size: int, keep_rate) -> jax.Array:
    """One Bernoulli(keep_rate) draw per sample, as float32 (B,).

    `keep_rate` may be a traced scalar, so a changing schedule does not recompile.
    """
    check_keep_rate(keep_rate)
    return jax.random.bernoulli(rng, keep_rate, (batch_size,)).astype(jnp.float32)


def residual_droppath(shortcut: jax.Array, branch: jax.Array, mask: jax.Array, keep_rate) -> jax.Array:
    """shortcut + branch * mask / keep_rate, per sample; the caller applies the ReLU.

    The 1/p scaling keeps the expectation equal to the evaluation output shortcut + branch.
    A dropped sample contributes exactly zero even when keep_rate is 0 (no 0/0).
    """
    scale = jnp.where(mask > 0, mask / jnp.maximum(keep_rate, 1e-12), 0.0)
    scale = scale if branch.dtype == scale.dtype else scale.astype(branch.dtype)  # bfloat16 branches stay so
    return shortcut + branch * _per_sample(scale, branch.ndim)


def virtual_shortcut_mix(main: jax.Array, shortcut: jax.Array, mask: jax.Array) -> jax.Array:
    """main * m + shortcut * (1 - m), per sample, without 1/p scaling (docs/method.md §2.2)."""
    m = _per_sample(mask, main.ndim)
    m = m if main.dtype == m.dtype else m.astype(main.dtype)  # bfloat16 activations stay so
    return main * m + shortcut * (1.0 - m)
