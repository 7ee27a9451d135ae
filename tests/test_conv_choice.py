"""The convolutions' implementation is a network option (`model.conv`), resolved once when the
network is built and passed down to every convolution; $DISTILL_JAX_CONV only overrides 'auto'."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import config as config_lib
from distill_jax import models
from distill_jax.config import default_config, validate
from distill_jax.errors import ConfigError
from distill_jax.models import layers, onednn_conv
from distill_jax.training import loop
from helpers import synthetic_data, tiny_run_config

ONEDNN = onednn_conv.unavailable_reason() is None
needs_onednn = pytest.mark.skipif(not ONEDNN, reason=f"oneDNN convolutions unavailable (launch/setup.sh installs g++ "
                                                      f"and libdnnl-dev): {onednn_conv.unavailable_reason()}")
# Every kind of convolution: plain, residual branches, strided and improved shortcuts, virtual-shortcut pairs.
NETWORKS = {"convnet": {"width": 4, "depth": 2}, "resnet10": {"width": 4, "droppath": True, "improved_shortcut": True},
            "vgg11": {"width": 4, "droppath": True}, "alexnet": {"width": 8, "droppath": True}}
IMAGES = jnp.zeros((2, 16, 16, 3))


def grad_jaxpr(model) -> str:
    """The jaxpr of a training step's gradient (DropPath on, so every shortcut conv runs)."""
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), IMAGES, train=False))

    def loss(v, x):
        y, _ = model.apply(v, x, train=True, keep_rate=0.5, rngs={"droppath": jax.random.key(0)},
                           mutable=["batch_stats", "intermediates"])
        return jnp.sum(y)

    return str(jax.make_jaxpr(jax.grad(loss))(variables, IMAGES))


def conv_kernels(model) -> int:
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), IMAGES, train=False))  # shortcuts included
    return sum(leaf.ndim == 4 for leaf in jax.tree.leaves(variables["params"]))


@needs_onednn
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_the_choice_reaches_every_convolution(name, monkeypatch):
    monkeypatch.setenv("DISTILL_JAX_CONV", "taps")  # overrides 'auto' only: no effect on explicit choices
    xla = models.build_model(name, 10, conv="xla", **NETWORKS[name])
    onednn = models.build_model(name, 10, conv="onednn", **NETWORKS[name])
    assert (xla.conv, onednn.conv) == ("xla", "onednn")
    with_xla, with_onednn = grad_jaxpr(xla), grad_jaxpr(onednn)
    assert "distill_onednn_conv" not in with_xla and "conv_general_dilated" in with_xla
    # one oneDNN forward and kernel gradient per convolution of the network, and no XLA convolution left
    kernels = conv_kernels(onednn)
    assert with_onednn.count("distill_onednn_conv_forward") == kernels > 0
    assert with_onednn.count("distill_onednn_conv_kernel_grad") == kernels
    assert "conv_general_dilated" not in with_onednn


@needs_onednn
def test_the_environment_is_read_when_the_network_is_built_not_when_it_is_traced(monkeypatch):
    monkeypatch.setenv("DISTILL_JAX_CONV", "xla")
    model = models.build_model("convnet", 10, width=4, depth=2)
    assert model.conv == "xla"
    monkeypatch.setenv("DISTILL_JAX_CONV", "onednn")
    assert "distill_onednn_conv" not in grad_jaxpr(model)  # traced after the change: still XLA's
    assert model.clone().conv == "xla"  # flax clones the module while applying it: the choice stays


def test_the_environment_overrides_auto_only(monkeypatch):
    monkeypatch.delenv("DISTILL_JAX_CONV", raising=False)
    platform = layers.platform_conv()
    assert platform == ("onednn" if ONEDNN else "taps")  # this suite runs on CPU
    assert models.build_model("convnet", 10, width=4).conv == platform
    assert models.build_model("convnet", 10, width=4, conv="auto").conv == platform
    monkeypatch.setenv("DISTILL_JAX_CONV", "xla_per_seed")
    assert models.build_model("convnet", 10, width=4).conv == "xla_per_seed"
    for explicit in ("xla", "taps"):
        assert models.build_model("resnet10", 10, width=4, conv=explicit).conv == explicit
    monkeypatch.setenv("DISTILL_JAX_CONV", "cudnn")  # a bad override matters only where it is read
    assert models.build_model("convnet", 10, width=4, conv="xla").conv == "xla"
    with pytest.raises(ValueError, match=r"environment variable DISTILL_JAX_CONV='cudnn' \(the override of "
                                         r"conv='auto'\); expected one of \('auto', 'xla', "):
        models.build_model("convnet", 10, width=4)


def test_every_network_takes_the_option():
    for name in models.MODEL_NAMES:
        assert "conv" in models.model_options(name) and models.default_option(name, "conv") == "auto"
        assert models.build_model(name, 3, conv="xla").conv == "xla"


def test_an_unknown_value_is_one_config_error_naming_the_field_and_the_choices():
    assert config_lib.CHOICES["model.conv"] is models.CONV_CHOICES  # one owner: the models package
    assert models.CONV_CHOICES == ("auto", "xla", "xla_per_seed", "onednn", "taps")
    config = default_config()
    config.model.conv = "cudnn"
    with pytest.raises(ConfigError) as error:
        validate(config)
    message = str(error.value)
    assert "\n" not in message
    assert message == ("config field 'model.conv' = 'cudnn'; allowed values: "
                       "('auto', 'xla', 'xla_per_seed', 'onednn', 'taps')")
    with pytest.raises(ValueError, match=r"models: option 'conv' of 'convnet' must be one of \('auto', "):
        models.build_model("convnet", 10, conv="cudnn")


def test_the_config_field_reaches_the_training_network_and_stays_as_given():
    config = default_config()
    assert config.model.conv == "auto"
    config.model.update(name="resnet10", width=4, conv="xla")
    validate(config)
    assert loop.build_model(config, 10).conv == "xla"
    config.model.conv = "auto"
    assert models.options_from_config(config.model)["conv"] == "auto"  # what config.json and model.json keep
    assert loop.build_model(config, 10).conv == models.resolve_conv("auto")


def test_a_run_records_the_choice_as_given_and_the_implementation_it_resolved_to(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_JAX_CONV", "xla")
    config = tiny_run_config(**{"num_seeds": 1, "train.epochs": 1})
    results = loop.train_and_evaluate(config, tmp_path, data=synthetic_data())
    assert results["conv"] == "xla"
    assert json.loads((tmp_path / "results.json").read_text())["conv"] == "xla"
    assert json.loads((tmp_path / "config.json").read_text())["model"]["conv"] == "auto"
    assert json.loads((tmp_path / "model.json").read_text())["options"]["conv"] == "auto"


def test_a_network_gives_the_same_values_and_gradients_with_every_implementation():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 3)), jnp.float32)
    labels = jnp.asarray([0, 1, 2])
    variables = models.build_model("resnet10", 3, width=4, norm="instance", conv="xla").init(jax.random.key(0), x,
                                                                                            train=False)
    implementations = [impl for impl in models.CONV_IMPLEMENTATIONS if impl != "onednn" or ONEDNN]
    results = {}
    for impl in implementations:
        model = models.build_model("resnet10", 3, width=4, norm="instance", conv=impl)

        def loss(v, model=model):
            logits = model.apply(v, x, train=True)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

        results[impl] = jax.jit(jax.value_and_grad(loss))(variables)
    for impl in implementations[1:]:
        chex.assert_trees_all_close(results[impl], results["xla"], rtol=1e-4, atol=1e-5)
