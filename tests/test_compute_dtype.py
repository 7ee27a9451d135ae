"""train.compute_dtype: bfloat16 convolutions and matmuls; float32 parameters, optimiser state,
batch-norm statistics, logits and loss; the config field checked; records carry it."""
import copy
import json
import pathlib

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import config as config_lib
from distill_jax import models
from distill_jax.errors import ConfigError
from distill_jax.experiments import reproduce
from distill_jax.models import layers, onednn_conv
from distill_jax.optim import make_optimizer
from distill_jax.report import render_docs, results_record
from distill_jax.training import loop, saved_runs, steps
from helpers import synthetic_data, tiny_run_config
from test_records import _experiment_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRODUCTS = ("conv_general_dilated", "dot_general")


def _small(name: str) -> dict:
    if name == "vit":
        return {"width": 32, "depth": 1}
    return {"width": 4} if "width" in models.model_options(name) else {}


def _product_dtypes(jaxpr) -> list:
    """(primitive, input dtypes, output dtype) of every convolution and matmul, sub-programs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in PRODUCTS:
            found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars),
                          str(eqn.outvars[0].aval.dtype)))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _product_dtypes(sub)
    return found


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_network_multiplies_in_bfloat16_and_keeps_float32_state(name):
    x = jnp.ones((2, 32, 32, 3))
    options = _small(name)
    if "droppath" in models.model_options(name):
        options["droppath"] = True  # its branches and masks in bfloat16 too
    model = models.build_model(name, 10, conv="xla", compute_dtype="bfloat16", **options)
    # Shapes and dtypes only (eval_shape, make_jaxpr): nothing is computed.
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "droppath": jax.random.key(1)}, x,
                                                  train=False))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}

    def forward(v):
        return model.apply(v, x, train=True, keep_rate=0.8, rngs={"droppath": jax.random.key(2)},
                           mutable=["batch_stats", "intermediates"])

    closed = jax.make_jaxpr(forward)(variables)
    products = _product_dtypes(closed.jaxpr)
    assert products, "the network has no convolution or matmul to check"
    assert all(ins == ("bfloat16", "bfloat16") and out == "bfloat16" for _, ins, out in products), products
    logits, updates = jax.eval_shape(forward, variables)
    assert logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(updates.get("batch_stats", {}))} <= {jnp.dtype(jnp.float32)}


def test_float32_networks_multiply_in_float32():
    model = models.build_model("resnet10", 10, width=4, conv="xla")
    x = jnp.ones((2, 16, 16, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    products = _product_dtypes(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables).jaxpr)
    assert products and all(ins == ("float32", "float32") and out == "float32" for _, ins, out in products)


@pytest.mark.parametrize("implementation", ["taps", "onednn"])
def test_cpu_convolutions_take_bfloat16_and_return_it(implementation):
    if implementation == "onednn" and onednn_conv.unavailable_reason() is not None:
        pytest.skip(onednn_conv.unavailable_reason())
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (3, 8, 8, 4)).astype(jnp.bfloat16)
    kernel = (0.3 * jax.random.normal(kk, (3, 3, 4, 5))).astype(jnp.bfloat16)

    def loss(conv_x, conv_k, impl):
        return jnp.sum(jnp.square(layers.conv2d(conv_x, conv_k, 1, 1, impl).astype(jnp.float32)))

    y = jax.jit(layers.conv2d, static_argnums=(2, 3, 4))(x, kernel, 1, 1, implementation)
    assert y.dtype == jnp.bfloat16
    exact = layers.conv2d(x.astype(jnp.float32), kernel.astype(jnp.float32), 1, 1, "xla")
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(exact), rtol=1e-2, atol=1e-2)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    grads = grad(x, kernel, implementation)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
    exact_grads = grad(x.astype(jnp.float32), kernel.astype(jnp.float32), "xla")
    for g, e in zip(grads, exact_grads, strict=True):
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(e), rtol=3e-2, atol=3e-2 * float(jnp.abs(e).max())
        )


def _two_steps(compute_dtype: str):
    model = models.build_model("convnet_frepo", 10, width=8, depth=2, conv="auto", compute_dtype=compute_dtype)
    optimizer = make_optimizer("sgd", 0.05, 0.0, momentum=0.9)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal((16, 16, 16, 3)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
    state = jax.jit(lambda k: steps.init_state(model, optimizer, k, batch["image"][:1]))(jax.random.key(0))
    step = jax.jit(steps.make_train_step(model, optimizer))
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch, jax.random.key(1), jnp.float32(1.0))
        losses.append(metrics["loss"])
    return state, losses


def test_a_bfloat16_train_step_keeps_float32_state_and_loss_close_to_float32():
    state32, losses32 = _two_steps("float32")
    state16, losses16 = _two_steps("bfloat16")
    assert all(loss.dtype == jnp.float32 for loss in losses16)
    for part in ("params", "opt_state", "batch_stats"):
        assert {leaf.dtype for leaf in jax.tree.leaves(state16[part])} == {jnp.dtype(jnp.float32)}, part
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9 per product); after a step the
    # losses agree to a few parts in a hundred, and are not equal (the products were rounded).
    np.testing.assert_allclose(np.asarray(losses16), np.asarray(losses32), rtol=3e-2)
    assert float(losses16[0]) != float(losses32[0])
    for a, b in zip(jax.tree.leaves(state16["params"]), jax.tree.leaves(state32["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-2)


def test_bad_compute_dtype_is_a_config_error_naming_field_and_values():
    config = config_lib.default_config()
    config.train.compute_dtype = "float16"
    with pytest.raises(ConfigError, match=r"train\.compute_dtype.*'float16'.*'float32', 'bfloat16'"):
        config_lib.validate(config)
    config.train.compute_dtype = "bfloat16"
    config_lib.validate(config)


def test_bad_compute_dtype_option_is_refused_by_the_network():
    with pytest.raises(ValueError, match="compute_dtype.*float16"):
        models.build_model("convnet", 10, compute_dtype="float16")
    with pytest.raises(ValueError, match="compute_dtype.*float16"):
        models.ResNet(num_classes=10, compute_dtype="float16")


def test_network_options_carry_the_training_compute_dtype():
    config = config_lib.default_config()
    assert "compute_dtype" not in models.network_options(config)
    config.train.compute_dtype = "bfloat16"
    assert models.network_options(config)["compute_dtype"] == "bfloat16"
    old = config_lib.default_config()
    del old.train["compute_dtype"]  # a config recorded before the field existed trained in float32
    assert "compute_dtype" not in models.network_options(old)


def test_reproduce_cells_inherit_the_launched_compute_dtype():
    class Cell:
        def __init__(self):
            self.config = config_lib.default_config()

    config = config_lib.default_config()
    config.train.compute_dtype = "bfloat16"
    cells = reproduce.inherit_fields([Cell(), Cell()], config)
    assert [c.config.train.compute_dtype for c in cells] == ["bfloat16", "bfloat16"]


def _committed_record() -> dict:
    return results_record.read_record(ROOT / "results" / "frepo10_div20.json")


def test_committed_records_without_the_field_read_as_float32():
    dtypes = {}
    for path in sorted((ROOT / "results").glob("*.json")):
        record = results_record.read_record(path)
        cells = record["cells"]
        if not any("compute_dtype" in c for c in cells):  # written before the field existed
            assert {results_record.compute_dtype(c) for c in cells} == {"float32"}, path.name
        dtypes[path.name] = {results_record.compute_dtype(c) for c in cells}
    assert dtypes["frepo10_div20.json"] == {"float32"}
    assert dtypes["frepo10_div20_bf16.json"] == {"bfloat16"}


def test_record_round_trip_with_compute_dtype_and_its_table_row(tmp_path):
    record = _committed_record()
    record["cells"][1]["compute_dtype"] = "bfloat16"
    record["cells"][2]["compute_dtype"] = "float32"
    path = results_record.write_record(tmp_path / "bf16.json", record)
    back = results_record.read_record(path)
    assert back == record and json.loads(path.read_text())["cells"][1]["compute_dtype"] == "bfloat16"
    assert [results_record.compute_dtype(c) for c in back["cells"][:3]] == ["float32", "bfloat16", "float32"]
    table = render_docs.ph_table(render_docs.Context({"bf16": back}), "bf16")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [("bfloat16" in row) for row in rows[1:4]] == [False, True, False]
    plain = render_docs.ph_table(render_docs.Context({"f32": _committed_record()}), "f32")
    assert "bfloat16" not in plain and "float32" not in plain


def test_record_with_a_bad_compute_dtype_names_the_field(tmp_path):
    record = copy.deepcopy(_committed_record())
    record["cells"][0]["compute_dtype"] = "fp8"
    with pytest.raises(results_record.RecordError, match=r"cells\[0\]\.compute_dtype.*float32"):
        results_record.validate(record, "x.json")


def test_a_record_from_a_workdir_carries_each_training_cell_compute_dtype(tmp_path):
    root = _experiment_dir(tmp_path / "exp")
    for cell in ("teacher", "full"):
        path = root / cell / "record.json"
        rec = json.loads(path.read_text())
        rec["config"]["train"]["compute_dtype"] = "bfloat16" if cell == "full" else "float32"
        path.write_text(json.dumps(rec))
    record = results_record.from_workdir(root)
    assert [c["compute_dtype"] for c in record["cells"]] == ["float32", "bfloat16"]


def test_a_saved_bfloat16_run_is_rebuilt_in_bfloat16(tmp_path):
    """model.json carries the dtype, so `evaluate` and KD teachers run the network it trained."""
    config = tiny_run_config(**{"train.compute_dtype": "bfloat16", "train.epochs": 1, "num_seeds": 1})
    loop.train_and_evaluate(config, tmp_path / "bf16", data=synthetic_data())
    spec = json.loads((tmp_path / "bf16" / "model.json").read_text())
    assert spec["options"]["compute_dtype"] == "bfloat16"
    assert saved_runs.load_run(tmp_path / "bf16").module.compute_dtype == "bfloat16"
    loop.train_and_evaluate(
        tiny_run_config(**{"train.epochs": 1, "num_seeds": 1}), tmp_path / "f32", data=synthetic_data()
    )
    assert "compute_dtype" not in json.loads((tmp_path / "f32" / "model.json").read_text())["options"]
