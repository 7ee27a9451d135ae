"""Importing the reference code's PyTorch ConvNet into the project's Flax ConvNet."""
import collections

import chex
import jax
import numpy as np
import pytest

from distill_jax.formats.torch_import import CheckpointFormatError, convert_reference_convnet, load_reference_convnet
from distill_jax.models import build_model
from test_torch_pickle import tensor, write_torch_file

# --------------------------------------------------------------------------------------
# An independent numpy forward pass of the reference (PyTorch) ConvNet, NCHW, float64
# --------------------------------------------------------------------------------------


def _conv3x3_nchw(x, weight, bias):
    """Cross-correlation with zero padding 1, as torch.nn.Conv2d(k=3, padding=1)."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, weight.shape[0], h, w))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, dy:dy + h, dx:dx + w], weight[:, :, dy, dx])
    return out + bias[None, :, None, None]


def torch_convnet_forward(state_dict, x_nchw, norm="instance", eps=1e-5):
    """conv -> norm -> relu -> avgpool 2 per layer, flatten (C, H, W), linear."""
    sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    conv_ids = sorted(int(k.split(".")[1]) for k in sd if k.endswith(".weight") and sd[k].ndim == 4)
    h = np.asarray(x_nchw, np.float64)
    for i in conv_ids:
        h = _conv3x3_nchw(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"])
        gamma, beta = (
            sd[f"features.{i + 1}.weight"][None, :, None, None],
            sd[f"features.{i + 1}.bias"][None, :, None, None],
        )
        if norm == "instance":  # statistics per sample and channel over H, W
            mean, var = h.mean(axis=(2, 3), keepdims=True), h.var(axis=(2, 3), keepdims=True)
        else:  # batch norm at inference: running statistics
            mean = sd[f"features.{i + 1}.running_mean"][None, :, None, None]
            var = sd[f"features.{i + 1}.running_var"][None, :, None, None]
        h = (h - mean) / np.sqrt(var + eps) * gamma + beta
        h = np.maximum(h, 0.0)
        n, c, hh, ww = h.shape
        h = h[:, :, : hh // 2 * 2, : ww // 2 * 2].reshape(n, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))
    flat = h.reshape(h.shape[0], -1)  # torch's (C, H, W) order
    return flat @ sd["classifier.weight"].T + sd["classifier.bias"]


def synthetic_state_dict(rng, in_channels=3, width=4, depth=2, num_classes=5, side=2, batch_norm=False):
    """A reference-layout state dict: features.{4i} conv, features.{4i+1} norm, classifier."""
    sd = collections.OrderedDict()
    channels = in_channels
    for layer in range(depth):
        sd[f"features.{4 * layer}.weight"] = rng.normal(0, 0.3, (width, channels, 3, 3)).astype(np.float32)
        sd[f"features.{4 * layer}.bias"] = rng.normal(0, 0.1, width).astype(np.float32)
        sd[f"features.{4 * layer + 1}.weight"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
        sd[f"features.{4 * layer + 1}.bias"] = rng.normal(0, 0.1, width).astype(np.float32)
        if batch_norm:
            sd[f"features.{4 * layer + 1}.running_mean"] = rng.normal(0, 0.1, width).astype(np.float32)
            sd[f"features.{4 * layer + 1}.running_var"] = rng.uniform(0.5, 2.0, width).astype(np.float32)
            sd[f"features.{4 * layer + 1}.num_batches_tracked"] = np.array(10, np.int64)
        channels = width
    sd["classifier.weight"] = rng.normal(0, 0.3, (num_classes, width * side * side)).astype(np.float32)
    sd["classifier.bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
    return sd


def _flax_logits(variables, meta, x_nchw):
    model = build_model(meta["model_name"], num_classes=meta["num_classes"], **meta["model_options"])
    return _apply(model, variables, x_nchw)


def _apply(model, variables, x_nchw):
    """Logits of the Flax model on NCHW inputs; jitted, as one compile beats op-by-op on CPU."""
    apply = jax.jit(model.apply, static_argnames="train")
    return np.asarray(apply(variables, np.transpose(x_nchw, (0, 2, 3, 1)), train=False))


# --------------------------------------------------------------------------------------
# Synthetic checkpoints
# --------------------------------------------------------------------------------------


def test_layout_of_converted_weights():
    rng = np.random.default_rng(0)
    sd = synthetic_state_dict(rng, width=4, depth=2, num_classes=5, side=2)
    variables, meta = convert_reference_convnet(sd)
    assert meta["model_name"] == "convnet" and meta["model_options"] == {"width": 4, "depth": 2, "norm": "instance"}
    assert (meta["num_classes"], meta["in_channels"], meta["feature_hw"]) == (5, 3, [2, 2])
    params = variables["params"]
    assert set(params) == {"conv_0", "norm_0", "conv_1", "norm_1", "head"} and set(variables) == {"params"}
    # conv: kernel[kh, kw, i, o] = weight[o, i, kh, kw]
    np.testing.assert_array_equal(params["conv_1"]["kernel"][2, 0, 3, 1], sd["features.4.weight"][1, 3, 2, 0])
    np.testing.assert_array_equal(params["norm_0"]["scale"], sd["features.1.weight"])
    # head: Flax row (h, w, c) = h*W*C + w*C + c takes torch column (c, h, w) = c*H*W + h*W + w
    head, classifier = np.asarray(params["head"]["kernel"]), sd["classifier.weight"]
    for h, w, c in [(0, 0, 0), (0, 1, 2), (1, 0, 3), (1, 1, 1)]:
        np.testing.assert_array_equal(head[h * 2 * 4 + w * 4 + c], classifier[:, c * 4 + h * 2 + w])
    # Same tree (names and shapes) as the project's ConvNet (eval_shape: no compile).
    model = build_model("convnet", num_classes=5, width=4, depth=2, norm="instance")
    init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32), train=False))
    chex.assert_trees_all_equal_shapes(init, variables)


def test_synthetic_logits_match_numpy_reference(tmp_path):
    rng = np.random.default_rng(1)
    sd = synthetic_state_dict(rng, width=4, depth=2, num_classes=5, side=2)
    path = write_torch_file(
        tmp_path / "net.pth", {"state_dict": collections.OrderedDict((k, tensor(v)) for k, v in sd.items()), "epoch": 7}
    )
    variables, meta = load_reference_convnet(path)
    assert meta["epoch"] == 7 and meta["path"] == str(path)
    x = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_flax_logits(variables, meta, x), torch_convnet_forward(sd, x), atol=1e-4, rtol=1e-4)


def test_batch_norm_checkpoint():
    rng = np.random.default_rng(2)
    sd = synthetic_state_dict(rng, width=4, depth=2, num_classes=3, side=2, batch_norm=True)
    variables, meta = convert_reference_convnet(sd)
    assert meta["model_options"]["norm"] == "batch"
    np.testing.assert_array_equal(variables["batch_stats"]["norm_1"]["var"], sd["features.5.running_var"])
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        _flax_logits(variables, meta, x), torch_convnet_forward(sd, x, norm="batch"), atol=1e-4, rtol=1e-4
    )


def test_bare_state_dict_with_dataparallel_prefix(tmp_path):
    sd = synthetic_state_dict(np.random.default_rng(3), width=4, depth=1, num_classes=2, side=4)
    path = write_torch_file(
        tmp_path / "bare.pth", collections.OrderedDict((f"module.{k}", tensor(v)) for k, v in sd.items())
    )
    variables, meta = load_reference_convnet(path)
    assert meta["epoch"] is None and meta["model_options"]["depth"] == 1 and meta["feature_hw"] == [4, 4]
    np.testing.assert_array_equal(variables["params"]["head"]["bias"], sd["classifier.bias"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.update(
                {"features.2.weight": np.ones(4, np.float32), "features.2.bias": np.ones(4, np.float32)}
            ),
            r"key 'features.2.weight': a norm layer must follow",
        ),
        (lambda sd: sd.update({"fc.weight": np.zeros((2, 2), np.float32)}), r"unexpected key 'fc.weight'"),
        (lambda sd: sd.pop("classifier.bias"), r"key 'classifier.bias' is missing"),
        (lambda sd: sd.pop("features.4.bias"), r"key 'features.4.bias' is missing"),
        (
            lambda sd: sd.update({"features.5.weight": np.ones(3, np.float32)}),
            r"key 'features.5.weight': expected shape \(4,\), got \(3,\)",
        ),
        (
            lambda sd: sd.update({"features.4.weight": np.ones((4, 3, 3, 3), np.float32)}),
            r"key 'features.4.weight': expected shape \(4, 4, 3, 3\)",
        ),
        (
            lambda sd: sd.update({"classifier.weight": np.ones((5, 12), np.float32)}),
            r"key 'classifier.weight': 12 inputs is not 4 channels",
        ),
    ],
)
def test_mismatched_keys_and_shapes(edit, message):
    sd = synthetic_state_dict(np.random.default_rng(4))
    edit(sd)
    with pytest.raises(CheckpointFormatError, match="teacher.pth: " + message):
        convert_reference_convnet(sd, where="teacher.pth")


def test_not_a_state_dict(tmp_path):
    path = write_torch_file(tmp_path / "t.pth", tensor(np.zeros(3, np.float32)))
    with pytest.raises(CheckpointFormatError, match="expected a dict"):
        load_reference_convnet(path)


# --------------------------------------------------------------------------------------
# The shared teacher
# --------------------------------------------------------------------------------------


def test_shared_teacher_logits_match_numpy_reference(shared_data):
    from distill_jax.formats.torch_pickle import load_torch_file

    path = shared_data / "teachers" / "cifar10_1_mtt_convnet" / "checkpoint_best.pth"
    variables, meta = load_reference_convnet(path)
    assert meta["model_name"] == "convnet" and meta["num_classes"] == 10 and meta["epoch"] == 200
    assert meta["model_options"] == {"width": 128, "depth": 3, "norm": "instance"}
    state_dict = load_torch_file(path)["state_dict"]
    x = np.random.default_rng(5).normal(size=(3, 3, 32, 32)).astype(np.float32)
    model = build_model("convnet", num_classes=10, width=128, depth=3, norm="instance")
    logits = _apply(model, variables, x)
    expected = torch_convnet_forward(state_dict, x)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert np.ptp(expected) > 0.1  # a trained network, not a constant


# --------------------------------------------------------------------------------------
# Malformed content: always the project's input error (issue 11.6)
# --------------------------------------------------------------------------------------


def test_checkpoint_format_error_is_an_input_file_error():
    from distill_jax.errors import InputFileError

    assert issubclass(CheckpointFormatError, InputFileError) and issubclass(CheckpointFormatError, ValueError)


@pytest.mark.parametrize(
    "edit, message",
    [
        # non-string keys used to end in TypeError / AttributeError
        (lambda sd: sd.update({3: np.zeros(2, np.float32)}), r"state dict key 3 is not a string"),
        # a zero-width network used to end in ZeroDivisionError
        (
            lambda sd: sd.update({"features.4.weight": np.zeros((0, 4, 3, 3), np.float32)}),
            r"key 'features.4.weight': empty tensor",
        ),
        (
            lambda sd: sd.update({"classifier.bias": np.zeros(5, np.complex64)}),
            r"key 'classifier.bias': expected real numbers",
        ),
    ],
)
def test_malformed_state_dicts(edit, message):
    sd = synthetic_state_dict(np.random.default_rng(6))
    edit(sd)
    with pytest.raises(CheckpointFormatError, match="teacher.pth: " + message):
        convert_reference_convnet(sd, where="teacher.pth")


def test_memory_error_becomes_checkpoint_format_error(tmp_path, monkeypatch):
    from distill_jax.formats import torch_import

    sd = synthetic_state_dict(np.random.default_rng(7))
    path = write_torch_file(tmp_path / "t.pth", collections.OrderedDict((k, tensor(v)) for k, v in sd.items()))

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(torch_import, "convert_reference_convnet", out_of_memory)
    with pytest.raises(CheckpointFormatError, match=rf"{path}: ran out of memory \(MemoryError\)"):
        load_reference_convnet(path)
