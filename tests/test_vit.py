"""The small ViT (an extension beyond the paper): DropPath on its attention and MLP branches,
tested as the ResNet's is: the keep rate is traced, really applied, and evaluation is deterministic."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.models.vit import ViT


def _init(model, x):
    return jax.jit(lambda x: model.init({"params": jax.random.key(0), "droppath": jax.random.key(1)}, x, False))(x)


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
def test_output_shape_and_deterministic_evaluation(shape):
    model = ViT(num_classes=7, width=32, depth=2, droppath=True)
    x = jax.random.normal(jax.random.key(3), shape)
    variables = _init(model, x)
    apply = jax.jit(lambda v, x, p, seed: model.apply(v, x, False, p, rngs={"droppath": jax.random.key(seed)}))
    out = apply(variables, x, 0.5, 0)
    chex.assert_shape(out, (2, 7))
    np.testing.assert_array_equal(out, apply(variables, x, 0.5, 1))  # evaluation: no rng, nothing dropped
    train = jax.jit(lambda v, x, p: model.apply(v, x, True, p, rngs={"droppath": jax.random.key(5)}))
    np.testing.assert_allclose(train(variables, x, 1.0), out, atol=1e-5)  # p = 1 keeps every branch


def test_keep_rate_is_traced_and_reaches_every_branch():
    model = ViT(num_classes=5, width=32, depth=3, droppath=True)
    x = jnp.repeat(jax.random.normal(jax.random.key(3), (1, 32, 32, 3)), 4, axis=0)  # identical samples
    variables = _init(model, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(v, keep_rate):
        return model.apply(v, x, True, keep_rate, rngs={"droppath": jax.random.key(9)}, mutable=["intermediates"])

    chex.clear_trace_counter()
    for rate in (1.0, 0.7, 0.4):
        out, state = forward(variables, jnp.float32(rate))
        used = jax.tree.leaves(state["intermediates"])
        assert len(used) == 2 * 3 and all(float(u) == pytest.approx(rate) for u in used)  # attention + MLP per block
    assert not np.allclose(out, out[:1], atol=1e-5)  # identical images, different masks at p = 0.4


def test_keep_rate_zero_drops_every_branch_exactly():
    """p = 0 drops all branches (no 0/0): the output is that of the same weights with no blocks."""
    model = ViT(num_classes=5, width=32, depth=2, droppath=True)
    x = jax.random.normal(jax.random.key(3), (3, 28, 28, 1))
    variables = _init(model, x)
    dropped = model.apply(variables, x, True, 0.0, rngs={"droppath": jax.random.key(0)})
    no_blocks = {"params": {k: v for k, v in variables["params"].items() if not k.startswith("block")}}
    np.testing.assert_allclose(dropped, ViT(num_classes=5, width=32, depth=0).apply(no_blocks, x, False), atol=1e-5)


def test_image_sides_must_fit_the_patches():
    with pytest.raises(ValueError, match="multiples of the patch size 4"):
        _init(ViT(num_classes=3, width=32, depth=1), jnp.zeros((1, 30, 30, 3)))


def test_vit_is_in_the_registry_with_its_options():
    from distill_jax import models
    from distill_jax.experiments import reproduce

    assert models.model_options("vit") == {"width", "depth", "droppath", "weight_init", "conv", "compute_dtype"}
    assert isinstance(models.build_model("vit", 10, width=32, droppath=True), ViT)
    assert reproduce.network_label("vit", 64, None) == "vit (width 64, layer norm)"
