"""Network registry: `build_model(name, num_classes, **options)`.

Every network is a linen Module applied as
    model.apply(variables, x, train, keep_rate=1.0, rngs={'droppath': key}, mutable=[...])
with x an NHWC float32 batch of any size; `keep_rate` may be a traced scalar and is ignored
by networks without DropPath. Every network takes `conv` (one of CONV_CHOICES, default 'auto'):
resolved once when it is built (`resolve_conv`), so `model.conv` is the implementation its
convolutions use. Every network takes `compute_dtype` (one of COMPUTE_DTYPES, default 'float32';
the config's `train.compute_dtype`): the dtype of its convolutions and matmuls; parameters,
batch-norm statistics and the returned logits are float32 whatever it is (`layers`).
"""
import dataclasses

import flax.linen as nn

from distill_jax.models.convnet import ConvNet, ConvNetFRePo
from distill_jax.models.layers import (
    COMPUTE_DTYPES,
    CONV_CHOICES,
    CONV_IMPLEMENTATIONS,
    INIT_KINDS,
    NORM_KINDS,
    TEST_NETWORK_NORM,
    resolve_conv,
)
from distill_jax.models.plain import VGG11, AlexNet
from distill_jax.models.resnet import ResNet
from distill_jax.models.vit import ViT

# name -> (module class, arguments fixed by the name and therefore not options)
_REGISTRY = {
    "convnet": (ConvNet, {}),
    "convnet_frepo": (ConvNetFRePo, {}),
    "resnet10": (ResNet, {"stage_sizes": (1, 1, 1, 1), "bottleneck": False}),  # small and quick to compile
    "resnet18": (ResNet, {"stage_sizes": (2, 2, 2, 2), "bottleneck": False}),
    "resnet34": (ResNet, {"stage_sizes": (3, 4, 6, 3), "bottleneck": False}),
    "resnet50": (ResNet, {"stage_sizes": (3, 4, 6, 3), "bottleneck": True}),
    "vgg11": (VGG11, {}),
    "alexnet": (AlexNet, {}),
    "vit": (ViT, {}),  # an extension beyond the paper (docs/method.md §3)
}
MODEL_NAMES = tuple(_REGISTRY)

# docs/method.md §3: the norm of the networks trained on a set, by the set's source. FRePo's
# networks use batch norm; MTT's and DC/DSA/DM's ConvNet and evaluation networks use instance
# norm (the published MTT teacher holds instance-norm parameters); real subsets and sets a
# user brings get the test networks' default, batch norm.
SET_SOURCE_NORMS = {"frepo": "batch", "mtt": "instance", "dc": "instance", "dsa": "instance", "dm": "instance",
                    "real": TEST_NETWORK_NORM}


def norm_for_set(source: str) -> str:
    """The norm of networks trained on a set from `source` ('frepo', 'mtt', 'dm', 'real', ...);
    any other source is a set a user brings: batch norm."""
    return SET_SOURCE_NORMS.get(source, TEST_NETWORK_NORM)
_NOT_OPTIONS = {"parent", "name", "num_classes"}


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"models: unknown model name {name!r}; expected one of {MODEL_NAMES}")
    return _REGISTRY[name]


def model_options(name: str) -> set[str]:
    """Option names `build_model(name, ...)` accepts, for validating configs."""
    cls, fixed = _lookup(name)
    return {f.name for f in dataclasses.fields(cls) if f.init} - _NOT_OPTIONS - set(fixed)


def _check_value(name: str, option: str, value) -> None:
    if option in ("width", "depth") and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"models: option {option!r} of {name!r} must be a positive int, got {value!r}")
    if option in ("droppath", "improved_shortcut") and not isinstance(value, bool):
        raise ValueError(f"models: option {option!r} of {name!r} must be a bool, got {value!r}")
    if option == "norm" and value not in NORM_KINDS:
        raise ValueError(f"models: option 'norm' of {name!r} must be one of {NORM_KINDS}, got {value!r}")
    if option == "weight_init" and value not in INIT_KINDS:
        raise ValueError(f"models: option 'weight_init' of {name!r} must be one of {INIT_KINDS}, got {value!r}")
    if option == "conv" and value not in CONV_CHOICES:
        raise ValueError(f"models: option 'conv' of {name!r} must be one of {CONV_CHOICES}, got {value!r}")
    if option == "compute_dtype" and value not in COMPUTE_DTYPES:
        raise ValueError(f"models: option 'compute_dtype' of {name!r} must be one of {COMPUTE_DTYPES}, got {value!r}")


# The config fields (`config.model.*`) that are network options; None means the network's default.
CONFIG_OPTIONS = ("width", "depth", "norm", "droppath", "improved_shortcut", "weight_init", "conv")


def options_from_config(model_cfg) -> dict:
    """The network options a config's `model` section sets (unset fields: the network's default)."""
    return {n: model_cfg[n] for n in CONFIG_OPTIONS if model_cfg.get(n) is not None}


def network_options(config) -> dict:
    """The network options a whole config sets: its `model` section's (`options_from_config`) and
    the compute dtype of its training (`train.compute_dtype`; absent in configs older than the
    field, which trained in float32)."""
    options = options_from_config(config.model)
    compute_dtype = config.train.get("compute_dtype", "float32")
    if compute_dtype != "float32":
        options["compute_dtype"] = compute_dtype
    return options


def check_options(name: str, options: dict) -> None:
    """Raises ValueError naming the first option `name` does not take or whose value is wrong."""
    allowed = model_options(name)
    for option, value in options.items():
        if option not in allowed:
            raise ValueError(f"models: unknown option {option!r} for {name!r}; allowed: {sorted(allowed)}")
        _check_value(name, option, value)


def default_option(name: str, option: str):
    """The value network `name` uses for `option` when none is given (e.g. its norm)."""
    cls, _ = _lookup(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if option not in fields:
        raise ValueError(f"models: network {name!r} has no option {option!r}")
    return fields[option].default


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """The network called `name` (one of MODEL_NAMES) with `num_classes` outputs; its `conv`
    option is resolved here, once (the returned network's `.conv` is the implementation used)."""
    cls, fixed = _lookup(name)
    check_options(name, options)
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes > 0):
        raise ValueError(f"models: num_classes must be a positive int, got {num_classes!r}")
    return cls(num_classes=num_classes, **fixed, **options)


__all__ = [
    "COMPUTE_DTYPES",
    "CONFIG_OPTIONS",
    "CONV_CHOICES",
    "CONV_IMPLEMENTATIONS",
    "INIT_KINDS",
    "MODEL_NAMES",
    "NORM_KINDS",
    "SET_SOURCE_NORMS",
    "build_model",
    "check_options",
    "default_option",
    "model_options",
    "network_options",
    "norm_for_set",
    "options_from_config",
    "resolve_conv",
    "ConvNet",
    "ConvNetFRePo",
    "ResNet",
    "VGG11",
    "AlexNet",
    "ViT",
]
