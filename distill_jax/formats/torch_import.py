"""Import the reference code's PyTorch ConvNet checkpoints as Flax variables.

The reference ConvNet is ``features = Sequential(conv, norm, relu, avgpool, ...)`` and
``classifier = Linear(C*H*W, num_classes)``: its state dict holds
``features.<i>.weight/bias`` (convs OIHW; norm affine per channel; batch norm also
``running_mean/var``) and ``classifier.weight/bias``. The project's ConvNet
(``distill_jax.models.ConvNet``) names the same layers ``conv_i``, ``norm_i``, ``head``
and flattens NHWC features in (h, w, c) order where torch flattens (c, h, w), so the
classifier's input axis is permuted here. Width, depth, norm and class count are read
from the shapes, so the caller can build the matching model::

    variables, meta = load_reference_convnet(path)
    model = build_model(meta["model_name"], num_classes=meta["num_classes"], **meta["model_options"])
    logits = model.apply(variables, images_nhwc, train=False)
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import numpy as np

from distill_jax.errors import InputFileError
from distill_jax.formats.torch_pickle import describe_error, load_torch_file

__all__ = ["CheckpointFormatError", "convert_reference_convnet", "load_reference_convnet"]


class CheckpointFormatError(InputFileError):
    """A checkpoint's keys or shapes do not describe the reference ConvNet."""


_FEATURE_KEY = re.compile(r"features\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")


def _array(state_dict: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    if key not in state_dict:
        raise CheckpointFormatError(f"{where}: key '{key}' is missing from the state dict")
    value = state_dict[key]
    if not isinstance(value, np.ndarray):
        raise CheckpointFormatError(f"{where}: key '{key}': expected a tensor, got {type(value).__name__}")
    if value.dtype.kind not in "biuf" and value.dtype.name != "bfloat16":
        raise CheckpointFormatError(f"{where}: key '{key}': expected real numbers, got dtype {value.dtype}")
    if 0 in value.shape:
        raise CheckpointFormatError(f"{where}: key '{key}': empty tensor of shape {value.shape}")
    return value.astype(np.float32) if value.dtype != np.float32 else value


def _expect_shape(array: np.ndarray, shape: tuple[int, ...], key: str, where: str) -> None:
    if array.shape != shape:
        raise CheckpointFormatError(f"{where}: key '{key}': expected shape {shape}, got {array.shape}")


def _layer_groups(state_dict: Mapping[str, Any], where: str) -> list[tuple[int, dict[str, np.ndarray]]]:
    """features.<i>.* grouped by module index, in order; rejects any unknown key."""
    groups: dict[int, dict[str, np.ndarray]] = {}
    for key in state_dict:
        match = _FEATURE_KEY.fullmatch(key)
        if match:
            groups.setdefault(int(match.group(1)), {})[match.group(2)] = key
        elif key not in _CLASSIFIER_KEYS:
            raise CheckpointFormatError(
                f"{where}: unexpected key '{key}' (the reference ConvNet has only features.<i>.* and classifier.*)"
            )
    return sorted(groups.items())


def convert_reference_convnet(state_dict: Mapping[str, Any], where: str = "<state_dict>") -> tuple[dict, dict]:
    """Map a reference ConvNet state dict (numpy values) to Flax variables and metadata.

    Returns ``(variables, meta)``: ``variables = {'params': {conv_i: {kernel HWIO, bias},
    norm_i: {scale, bias}, head: {kernel (in, out), bias}}}`` plus ``'batch_stats'`` for
    batch norm; ``meta`` has ``model_name``, ``model_options`` (width, depth, norm),
    ``num_classes``, ``in_channels``, ``widths`` and ``feature_hw``.
    """
    import jax.numpy as jnp

    for key in state_dict:
        if not isinstance(key, str):
            raise CheckpointFormatError(f"{where}: state dict key {key!r} is not a string")
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    params: dict[str, dict] = {}
    batch_stats: dict[str, dict] = {}
    widths: list[int] = []
    norm_kinds: list[str] = []
    expecting_norm = False
    in_channels = None
    for index, keys in _layer_groups(state_dict, where):
        weight_key = f"features.{index}.weight"
        weight = _array(state_dict, weight_key, where)
        bias = _array(state_dict, f"features.{index}.bias", where)
        if weight.ndim == 4:  # a convolution, OIHW
            if expecting_norm:
                norm_kinds.append("none")
            out_channels, conv_in, kh, kw = weight.shape
            expected_in = conv_in if in_channels is None else widths[-1]
            if conv_in != expected_in or (kh, kw) != (3, 3):
                raise CheckpointFormatError(
                    f"{where}: key '{weight_key}': expected shape ({out_channels}, {expected_in}, 3, 3), "
                    f"got {weight.shape}"
                )
            in_channels = conv_in if in_channels is None else in_channels
            _expect_shape(bias, (out_channels,), f"features.{index}.bias", where)
            layer = len(widths)
            params[f"conv_{layer}"] = {"kernel": jnp.asarray(weight.transpose(2, 3, 1, 0)), "bias": jnp.asarray(bias)}
            widths.append(out_channels)
            expecting_norm = True
        elif weight.ndim == 1:  # the per-channel affine of the norm after a conv
            if not expecting_norm:
                raise CheckpointFormatError(f"{where}: key '{weight_key}': a norm layer must follow a convolution")
            layer = len(widths) - 1
            _expect_shape(weight, (widths[-1],), weight_key, where)
            _expect_shape(bias, (widths[-1],), f"features.{index}.bias", where)
            params[f"norm_{layer}"] = {"scale": jnp.asarray(weight), "bias": jnp.asarray(bias)}
            if "running_mean" in keys or "running_var" in keys:
                mean = _array(state_dict, f"features.{index}.running_mean", where)
                var = _array(state_dict, f"features.{index}.running_var", where)
                _expect_shape(mean, (widths[-1],), f"features.{index}.running_mean", where)
                _expect_shape(var, (widths[-1],), f"features.{index}.running_var", where)
                batch_stats[f"norm_{layer}"] = {"mean": jnp.asarray(mean), "var": jnp.asarray(var)}
                norm_kinds.append("batch")
            else:
                norm_kinds.append("instance")
            expecting_norm = False
        else:
            raise CheckpointFormatError(
                f"{where}: key '{weight_key}': expected a conv (4-D) or norm (1-D) weight, got {weight.shape}"
            )
    if expecting_norm:
        norm_kinds.append("none")
    if not widths:
        raise CheckpointFormatError(f"{where}: no convolution weights (features.<i>.weight) in the state dict")
    if len(set(norm_kinds)) != 1:
        raise CheckpointFormatError(f"{where}: layers mix norm kinds {norm_kinds}; the ConvNet uses one kind")

    classifier = _array(state_dict, "classifier.weight", where)
    classifier_bias = _array(state_dict, "classifier.bias", where)
    if classifier.ndim != 2:
        raise CheckpointFormatError(
            f"{where}: key 'classifier.weight': expected (num_classes, features), got {classifier.shape}"
        )
    num_classes, flat = classifier.shape
    channels = widths[-1]
    side = math.isqrt(flat // channels) if flat % channels == 0 else 0
    if side == 0 or side * side * channels != flat:
        raise CheckpointFormatError(
            f"{where}: key 'classifier.weight': {flat} inputs is not {channels} channels x a square feature map"
        )
    _expect_shape(classifier_bias, (num_classes,), "classifier.bias", where)
    # torch flattens (c, h, w); the Flax model flattens NHWC as (h, w, c).
    kernel = classifier.reshape(num_classes, channels, side, side).transpose(2, 3, 1, 0).reshape(flat, num_classes)
    params["head"] = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(classifier_bias)}

    if all(w == widths[0] for w in widths):
        model_name = "convnet"
    elif all(w == widths[0] * 2**i for i, w in enumerate(widths)):
        model_name = "convnet_frepo"
    else:
        raise CheckpointFormatError(
            f"{where}: conv widths {widths} match neither ConvNet (constant) nor ConvNet-FRePo (doubling)"
        )
    variables: dict[str, dict] = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    meta = {
        "model_name": model_name,
        "model_options": {"width": widths[0], "depth": len(widths), "norm": norm_kinds[0]},
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "widths": [int(w) for w in widths],
        "feature_hw": [side, side],
    }
    return variables, meta


def load_reference_convnet(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read a reference-code ``.pth`` (``{'state_dict': ..., 'epoch': ...}`` or a bare
    state dict) safely (no torch, no general unpickler) into ``(variables, meta)``;
    ``meta`` adds ``epoch`` (or None) and ``path`` to :func:`convert_reference_convnet`'s."""
    path = os.fspath(path)
    try:
        return _load_reference_convnet(path)
    except InputFileError:
        raise
    except MemoryError as err:
        raise CheckpointFormatError(f"{path}: {describe_error(err)}") from None


def _load_reference_convnet(path: str) -> tuple[dict, dict]:
    content = load_torch_file(path)
    if not isinstance(content, dict):
        raise CheckpointFormatError(
            f"{path}: expected a dict (state dict or {{'state_dict': ...}}), got {type(content).__name__}"
        )
    state_dict = content.get("state_dict", content)
    if not isinstance(state_dict, dict):
        raise CheckpointFormatError(f"{path}: field 'state_dict': expected a dict, got {type(state_dict).__name__}")
    variables, meta = convert_reference_convnet(state_dict, where=path)
    epoch = content.get("epoch") if "state_dict" in content else None
    meta["epoch"] = int(epoch) if isinstance(epoch, (int, np.integer)) else None
    meta["path"] = os.path.abspath(path)
    return variables, meta
