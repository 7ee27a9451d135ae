"""Networks (docs/method.md §3), their DropPath blocks (§2.1, §2.2), the improved shortcut (§2.3) and the registry.

Tiny widths and images keep the CPU compile and run times small.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.models import MODEL_NAMES, build_model, model_options
from distill_jax.models.layers import Conv, Dense, avg_pool, conv, make_norm, max_pool
from distill_jax.models.plain import (
    ALEXNET_LAYOUT,
    POOL,
    VGG11_LAYOUT,
    Pair,
    PlainBlock,
    PlainConv,
    layer_sequence,
    scale_layout,
)
from distill_jax.models.resnet import ResidualBlock, Shortcut

TINY = {"convnet": {"width": 4}, "convnet_frepo": {"width": 4}, "resnet10": {"width": 4}, "resnet18": {"width": 4},
        "resnet34": {"width": 4}, "resnet50": {"width": 4}, "vgg11": {"width": 4}, "alexnet": {"width": 8},
        "vit": {"width": 32, "depth": 1}}
DROPPATH = {"resnet10", "resnet18", "resnet34", "resnet50", "vgg11", "alexnet", "vit"}


def images(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def without_shortcuts(tree):
    return {k: without_shortcuts(v) for k, v in tree.items() if k != "shortcut"} if isinstance(tree, dict) else tree


def init(module, x, train=True):
    """Jitted init: one compilation instead of one per operation. Layers take no `train`."""
    args = () if isinstance(module, (Conv, Dense)) else (train,)
    return jax.jit(lambda x: module.init({"params": jax.random.key(0), "droppath": jax.random.key(1)}, x, *args))(x)


def shapes_of_init(module, x, train=False):
    """Parameter shapes without compiling anything."""
    return jax.eval_shape(
        lambda x: module.init({"params": jax.random.key(0), "droppath": jax.random.key(1)}, x, train), x
    )


def applier(module, train, mutable=False):
    """Jitted (variables, x, keep_rate, seed) -> output; the keep rate is traced."""
    return jax.jit(lambda v, x, keep_rate, seed: module.apply(
        v, x, train, keep_rate, rngs={"droppath": jax.random.key(seed)}, mutable=mutable))


@pytest.fixture(scope="module")
def resnet():
    """A tiny ResNet-18 with DropPath, shared by the tests that need a whole network."""
    model = build_model("resnet18", 5, width=4, droppath=True, norm="instance")  # no running statistics to update
    x = jnp.repeat(images((1, 16, 16, 3)), 4, axis=0)  # identical samples: only masks can tell them apart
    return model, x, init(model, x)


# ---------------------------------------------------------------- shapes and names

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_for_every_network_and_image_size(name):
    options = dict(TINY[name], **({"droppath": True} if name in DROPPATH else {}))
    model = build_model(name, 7, **options)
    for shape in [(2, 28, 28, 1), (2, 32, 32, 3), (2, 64, 64, 3)]:
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        variables = shapes_of_init(model, x, train=True)
        for train in (True, False):
            out = jax.eval_shape(lambda v, x=x, train=train: model.apply(v, x, train, 0.5,
                                                                         rngs={"droppath": jax.random.key(0)},
                                                                         mutable=["batch_stats"])[0], variables)
            assert out.shape == (2, 7) and out.dtype == jnp.float32, (shape, train)


def test_convnet_submodule_names_and_shapes_for_torch_import():
    variables = shapes_of_init(build_model("convnet", 10, width=4), jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    assert set(params) == {"conv_0", "norm_0", "conv_1", "norm_1", "conv_2", "norm_2", "head"}
    chex.assert_shape([params["conv_0"]["kernel"], params["conv_1"]["kernel"]], [(3, 3, 3, 4), (3, 3, 4, 4)])
    chex.assert_shape([params["norm_2"]["scale"], params["norm_2"]["bias"]], [(4,), (4,)])
    chex.assert_shape(params["head"]["kernel"], (4 * 4 * 4, 10))
    assert "batch_stats" not in variables  # instance norm by default


def test_convnet_frepo_widths_double():
    variables = shapes_of_init(build_model("convnet_frepo", 10, width=4, depth=4), jnp.zeros((1, 64, 64, 3)))
    assert [variables["params"][f"conv_{i}"]["kernel"].shape[-1] for i in range(4)] == [4, 8, 16, 32]
    chex.assert_shape(variables["params"]["head"]["kernel"], (4 * 4 * 32, 10))
    assert set(variables["batch_stats"]) == {f"norm_{i}" for i in range(4)}  # batch norm by default


def test_plain_network_layouts_are_the_reference_codes():
    """docs/method.md §2.2: VGG-11 = two plain convs, then three pairs; AlexNet = one plain
    conv, then two pairs, the first with its max-pool between its convs."""
    assert VGG11_LAYOUT == (PlainConv(64, 3), POOL, PlainConv(128, 3), POOL, Pair(256, 256, 3, 3), POOL,
                            Pair(512, 512, 3, 3), POOL, Pair(512, 512, 3, 3), POOL)
    assert ALEXNET_LAYOUT == (PlainConv(128, 5), POOL, Pair(192, 256, 5, 3, pool=True), Pair(192, 192, 3, 3), POOL)
    # without DropPath the pairs unroll into the plain networks' layer order
    assert layer_sequence(VGG11_LAYOUT) == ((64, 3), POOL, (128, 3), POOL, (256, 3), (256, 3), POOL,
                                            (512, 3), (512, 3), POOL, (512, 3), (512, 3), POOL)
    assert layer_sequence(ALEXNET_LAYOUT) == ((128, 5), POOL, (192, 5), POOL, (256, 3), (192, 3), (192, 3), POOL)
    assert scale_layout(ALEXNET_LAYOUT, 8, 128)[:3] == (PlainConv(8, 5), POOL, Pair(12, 16, 5, 3, pool=True))


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _conv(c_in, c_out, k):  # weights + biases (the reference code's convs have biases)
    return k * k * c_in * c_out + c_out


NORM = lambda c: 2 * c  # instance norm: per-channel scale and bias  # noqa: E731


def test_vgg11_parameter_count_by_hand():
    """Full width (64), 32 px, 10 classes, instance norm; the 1x1 virtual shortcuts exist only
    with DropPath: 128->256 and 256->512 (the third pair, 512->512, has an identity shortcut)."""
    plain = (_conv(3, 64, 3) + NORM(64)                 # 1,792 + 128        plain conv 1
             + _conv(64, 128, 3) + NORM(128)            # 73,856 + 256       plain conv 2
             + _conv(128, 256, 3) + NORM(256)           # 295,168 + 512      pair 1
             + _conv(256, 256, 3) + NORM(256)           # 590,080 + 512
             + _conv(256, 512, 3) + NORM(512)           # 1,180,160 + 1,024  pair 2
             + _conv(512, 512, 3) + NORM(512)           # 2,359,808 + 1,024
             + 2 * (_conv(512, 512, 3) + NORM(512))     # 2 x (2,359,808 + 1,024)  pair 3
             + 512 * 10 + 10)                           # head on 512 x 1 x 1
    assert plain == 9_231_114
    shortcuts = (_conv(128, 256, 1) + NORM(256)) + (_conv(256, 512, 1) + NORM(512))  # 33,536 + 132,608
    assert shortcuts == 166_144
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    for droppath, expected in ((False, plain), (True, plain + shortcuts)):
        params = shapes_of_init(build_model("vgg11", 10, droppath=droppath, norm="instance"), x)["params"]
        assert _count(params) == expected, droppath
        assert sorted(params) == ["block_0", "block_1", "block_2", "conv_0", "conv_1", "head", "norm_0", "norm_1"]
        assert ("shortcut" in params["block_0"], "shortcut" in params["block_2"]) == (droppath, False)


def test_alexnet_parameter_count_by_hand():
    """Full width (128), 32 px, 10 classes, instance norm: 32 -> 16 (pool) -> 8 (pool inside
    pair 1) -> 4 (last pool), so the head sees 192 x 4 x 4."""
    plain = (_conv(3, 128, 5) + NORM(128)               # 9,728 + 256        plain conv
             + _conv(128, 192, 5) + NORM(192)           # 614,592 + 384      pair 1 (pool inside)
             + _conv(192, 256, 3) + NORM(256)           # 442,624 + 512
             + _conv(256, 192, 3) + NORM(192)           # 442,560 + 384      pair 2
             + _conv(192, 192, 3) + NORM(192)           # 331,968 + 384
             + 192 * 4 * 4 * 10 + 10)                   # head: 30,730
    assert plain == 1_874_122
    shortcuts = (_conv(128, 256, 1) + NORM(256)) + (_conv(256, 192, 1) + NORM(192))  # 33,536 + 49,728
    assert shortcuts == 83_264
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    for droppath, expected in ((False, plain), (True, plain + shortcuts)):
        params = shapes_of_init(build_model("alexnet", 10, droppath=droppath, norm="instance"), x)["params"]
        assert _count(params) == expected, droppath
        assert sorted(params) == ["block_0", "block_1", "conv_0", "head", "norm_0"]
    chex.assert_shape(params["block_0"]["shortcut"]["conv"]["kernel"], (1, 1, 128, 256))


@pytest.mark.parametrize("name", ["vgg11", "alexnet"])
def test_plain_networks_without_droppath_apply_the_layer_sequence(name):
    """The network's eval output equals an independent walk of `layer_sequence` with the same
    weights: each conv -> norm -> relu, each POOL a 2x2 max-pool, then the head."""
    model = build_model(name, 5, width=8, norm="none")
    x = images((2, 32, 32, 3))
    params = init(model, x, train=False)["params"]
    convs = [params[k] for k in sorted(k for k in params if k.startswith("conv_"))]
    for block in sorted(k for k in params if k.startswith("block_")):
        convs += [params[block]["conv_0"], params[block]["conv_1"]]
    h, taken = x, 0
    for layer in layer_sequence(model.layout()):
        if layer == POOL:
            h = max_pool(h, 2)
            continue
        p = convs[taken]
        taken += 1
        chex.assert_shape(p["kernel"], (layer[1], layer[1], h.shape[-1], layer[0]))
        h = jax.nn.relu(jax.lax.conv_general_dilated(h, p["kernel"], (1, 1), [(layer[1] // 2,) * 2] * 2,
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"])
    assert taken == len(convs)
    expected = h.reshape(2, -1) @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(applier(model, False)({"params": params}, x, 1.0, 0), expected, atol=2e-4)


# ---------------------------------------------------------------- layers

def conv_reference(x, kernel, bias, stride):
    """Direct numpy cross-correlation with torch's symmetric zero padding k // 2."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    out_h, out_w = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out + bias


@pytest.mark.parametrize("size, stride", [(6, 2), (5, 1)])  # 6 px, stride 2: SAME would pad (0, 1), torch (1, 1)
def test_conv_matches_numpy_with_symmetric_padding(size, stride):
    x = np.asarray(images((2, size, size, 3)))
    layer = Conv(5, 3, stride, implementation="xla")
    variables = init(layer, x)
    p = variables["params"]
    out = jax.jit(layer.apply)(variables, x)
    np.testing.assert_allclose(
        out, conv_reference(x, np.asarray(p["kernel"]), np.asarray(p["bias"]), stride), atol=1e-5
    )


def test_torch_init_bounds():
    p = init(Conv(64, 3, implementation="xla"), jnp.zeros((1, 4, 4, 5)))["params"]
    bound = 1 / np.sqrt(3 * 3 * 5)  # fan_in = kh * kw * in_channels
    for leaf in (p["kernel"], p["bias"]):
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
    p = init(Dense(64), jnp.zeros((1, 20)))["params"]
    for leaf in (p["kernel"], p["bias"]):
        assert np.abs(leaf).max() <= 1 / np.sqrt(20) and np.abs(leaf).max() > 0.9 / np.sqrt(20)


def test_flax_init_gives_zero_bias_and_lecun_kernel():
    p = init(Conv(64, 3, weight_init="flax", implementation="xla"), jnp.zeros((1, 4, 4, 50)))["params"]
    np.testing.assert_array_equal(p["bias"], 0.0)
    assert abs(float(p["kernel"].std()) - 1 / np.sqrt(450)) < 0.1 / np.sqrt(450)
    assert float(np.abs(p["kernel"]).max()) <= 2 / 0.8796 / np.sqrt(450) + 1e-6  # truncated at 2 std


def test_instance_norm_standardises_each_sample_and_channel():
    x = np.asarray(images((2, 5, 5, 3))) * 3 + 1
    norm = make_norm("instance", "norm", train=True)
    out = norm.apply(norm.init(jax.random.key(0), x), x)
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)


def test_batch_norm_uses_torch_momentum_and_eps():
    x = np.asarray(images((8, 3, 3, 2)))
    norm = make_norm("batch", "norm", train=True)
    out, updates = norm.apply(norm.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * x.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(out, (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5), atol=1e-5)


def test_pools_keep_odd_sizes_alive():
    x = jnp.arange(49.0).reshape(1, 7, 7, 1)
    pooled = max_pool(x, 2)
    chex.assert_shape(pooled, (1, 4, 4, 1))
    assert float(pooled[0, 3, 3, 0]) == 48.0  # the lone corner window
    chex.assert_shape(avg_pool(x, 2), (1, 3, 3, 1))  # floor, as torch's AvgPool2d


# ---------------------------------------------------------------- ResNet DropPath (§2.1)

def test_masks_differ_between_samples_and_eval_ignores_the_rng(resnet):
    model, x, variables = resnet
    train, evaluate = applier(model, True), applier(model, False)
    dropped = train(variables, x, 0.5, 3)
    assert not np.allclose(dropped, dropped[:1], atol=1e-5)  # identical images, different masks
    out = evaluate(variables, x, 0.5, 0)
    np.testing.assert_allclose(train(variables, x, 1.0, 3), out, atol=1e-5)  # instance norm: train at p = 1 is eval
    np.testing.assert_array_equal(out, evaluate(variables, x, 0.5, 1))  # eval: no rng dependence
    np.testing.assert_allclose(out, out[:1].repeat(4, 0), atol=1e-5)  # and nothing dropped (a drop moves it by >> 1e-5)


def test_block_expectation_over_masks_equals_eval_output():
    block = ResidualBlock(4, droppath=True, implementation="xla")
    # offset inputs keep the identity shortcut far above the normalised branch, so the final
    # ReLU is linear here and the expectation passes through it
    x = images((4, 6, 6, 4)) + 50.0
    variables = init(block, x)
    eval_out = jax.jit(lambda v, x: block.apply(v, x, False))(variables, x)
    keys = jax.random.split(jax.random.key(2), 2000)
    outs = jax.jit(jax.vmap(lambda k: block.apply(variables, x, True, 0.7, rngs={"droppath": k})))(keys)
    branch = eval_out - x
    sigma = np.abs(branch) * np.sqrt(0.3 / 0.7 / 2000)  # std of the mean of branch * (m / p - 1)
    assert np.all(np.abs(np.asarray(outs.mean(0) - eval_out)) <= 5 * sigma + 1e-4)
    assert not np.allclose(outs[0], eval_out, atol=1e-3)  # single draws do drop branches


@pytest.mark.parametrize("block_kind", ["residual", "virtual"])
def test_keep_rate_one_in_training_equals_no_droppath(block_kind):
    x = images((4, 8, 8, 3))
    if block_kind == "residual":
        with_dp, without = (
            ResidualBlock(6, strides=2, norm="batch", droppath=d, implementation="xla") for d in (True, False)
        )
    else:
        with_dp, without = (
            PlainBlock(Pair(6, 5, 3, 3, pool=True), norm="batch", droppath=d, implementation="xla")
            for d in (True, False)
        )
    variables = init(with_dp, x)
    out, stats = applier(with_dp, True, ["batch_stats"])(variables, x, 1.0, 5)
    ref, ref_stats = applier(without, True, ["batch_stats"])(variables, x, 1.0, 5)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # the virtual shortcut's statistics exist (and move) only with DropPath; compare the rest
    chex.assert_trees_all_close(without_shortcuts(stats), without_shortcuts(ref_stats), atol=1e-6)


def test_improved_shortcut_sees_every_position():
    x0 = jnp.zeros((1, 8, 8, 2))
    positions = jnp.asarray([(i, j) for i in range(8) for j in range(8)])

    def reached(improved):
        module = Shortcut(3, strides=2, norm="none", improved=improved, implementation="xla")
        variables = module.init(jax.random.key(0), x0, True)
        base = module.apply(variables, x0, True)

        def bump(i, j):
            return module.apply(variables, x0.at[0, i, j, :].set(10.0), True)

        bumped = jax.jit(jax.vmap(bump))(positions[:, 0], positions[:, 1])
        return np.asarray(jnp.abs(bumped - base).max(axis=(1, 2, 3, 4)) > 0).reshape(8, 8)

    assert reached(True).all()
    even = np.zeros((8, 8), bool)
    even[::2, ::2] = True
    np.testing.assert_array_equal(reached(False), even)  # strided 1x1 conv sees one position in four


@pytest.mark.parametrize("size, out_size", [(8, 4), (7, 4)])
def test_improved_shortcut_shapes_match_the_branch(size, out_size):
    x = jax.ShapeDtypeStruct((2, size, size, 4), jnp.float32)
    for improved in (True, False):
        block = ResidualBlock(6, strides=2, improved_shortcut=improved, implementation="xla")
        variables = shapes_of_init(block, x)
        chex.assert_shape(jax.eval_shape(lambda v, block=block: block.apply(v, x, False), variables),
                          (2, out_size, out_size, 6))
        chex.assert_shape(variables["params"]["shortcut"]["conv"]["kernel"], (1, 1, 4, 6))


def test_bottleneck_block_expands_four_times():
    block = ResidualBlock(3, strides=2, bottleneck=True, implementation="xla")
    x = jax.ShapeDtypeStruct((1, 8, 8, 5), jnp.float32)
    variables = shapes_of_init(block, x)
    chex.assert_shape(jax.eval_shape(lambda v: block.apply(v, x, False), variables), (1, 4, 4, 12))
    assert [variables["params"][f"conv_{i}"]["kernel"].shape[:2] for i in range(3)] == [(1, 1), (3, 3), (1, 1)]


# ---------------------------------------------------------------- virtual shortcut (§2.2)

def test_virtual_shortcut_semantics():
    block = PlainBlock(Pair(6, 5, 3, 3, pool=True), norm="none", droppath=True, implementation="xla")
    x = images((6, 8, 8, 3))
    variables = init(block, x, train=False)  # eval-mode init still creates the shortcut
    p = variables["params"]["shortcut"]["conv"]
    pooled = np.asarray(x).reshape(6, 4, 2, 4, 2, 3).max(axis=(2, 4))
    shortcut = pooled @ np.asarray(p["kernel"])[0, 0] + np.asarray(p["bias"])
    train, evaluate = applier(block, True), applier(block, False)
    main = evaluate(variables, x, 1.0, 0)
    np.testing.assert_allclose(train(variables, x, 0.0, 0), shortcut, atol=1e-5)  # every mask 0
    np.testing.assert_allclose(train(variables, x, 1.0, 0), main, atol=1e-6)  # every mask 1
    mixed = np.asarray(train(variables, x, 0.5, 4))
    is_main = [np.allclose(mixed[b], main[b]) for b in range(6)]
    is_short = [np.allclose(mixed[b], shortcut[b], atol=1e-5) for b in range(6)]
    assert all(m != s for m, s in zip(is_main, is_short, strict=True)) and any(is_main) and any(is_short)
    zeroed = dict(variables["params"], shortcut=jax.tree.map(jnp.zeros_like, variables["params"]["shortcut"]))
    np.testing.assert_array_equal(evaluate({"params": zeroed}, x, 0.5, 0), main)  # eval never uses the shortcut


def test_virtual_shortcut_is_identity_when_shapes_agree():
    block = PlainBlock(Pair(4, 4, 3, 3), norm="instance", droppath=True, implementation="xla")
    x = images((3, 6, 6, 4))
    variables = init(block, x, train=False)
    assert "shortcut" not in variables["params"]
    out, state = applier(block, True, ["intermediates"])(variables, x, 0.0, 0)
    np.testing.assert_array_equal(out, x)
    assert [float(v) for v in jax.tree.leaves(state)] == [0.0]  # the block records the rate it used


# ---------------------------------------------------------------- keep-rate plumbing (§2.4)

def test_traced_keep_rate_reaches_every_block_without_retracing(resnet):
    model, x, variables = resnet

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(variables, keep_rate, key):
        return model.apply(variables, x, True, keep_rate, rngs={"droppath": key}, mutable=["intermediates"])

    chex.clear_trace_counter()
    outputs = []
    for rate in (1.0, 0.8, 0.5):
        out, state = forward(variables, jnp.float32(rate), jax.random.key(9))
        sown = jax.tree.leaves(state["intermediates"])
        assert len(sown) == 8 and all(float(v) == pytest.approx(rate) for v in sown)  # all eight blocks
        outputs.append(out)
    assert not np.allclose(outputs[0], outputs[2])  # the rate really changes the computation


@pytest.mark.parametrize("name, blocks", [("vgg11", 3), ("alexnet", 2)])
def test_plain_droppath_blocks_record_the_keep_rate(name, blocks):
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    model = build_model(name, 5, width=4, droppath=True)  # batch norm: its statistics are mutable too
    variables = shapes_of_init(model, x)

    def run(train):
        return jax.eval_shape(lambda v: model.apply(v, x, train, 0.7, rngs={"droppath": jax.random.key(0)},
                                                    mutable=["intermediates", "batch_stats"])[1], variables)

    assert len(jax.tree.leaves(run(True).get("intermediates", {}))) == blocks  # pairs only: the first convs stay plain
    # Nothing is dropped, hence nothing recorded, at evaluation.
    assert not jax.tree.leaves(run(False).get("intermediates", {}))


# ---------------------------------------------------------------- errors

def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="unknown model name 'resnet19'.*resnet18"):
        build_model("resnet19", 10)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option 'droppath' for 'convnet'.*width"):
        build_model("convnet", 10, droppath=True)
    assert model_options("resnet50") == {"width", "norm", "droppath", "improved_shortcut", "weight_init", "conv",
                                         "compute_dtype"}


@pytest.mark.parametrize("option, value, message", [
    ("norm", "layer", "'norm' of 'vgg11' must be one of"), ("weight_init", "he", "'weight_init' of 'vgg11'"),
    ("width", 0, "'width' of 'vgg11' must be a positive int"), ("droppath", 1, "'droppath' of 'vgg11' must be a bool")])
def test_bad_option_values_are_rejected(option, value, message):
    with pytest.raises(ValueError, match=message):
        build_model("vgg11", 10, **{option: value})


def test_bad_num_classes_is_rejected():
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build_model("alexnet", 0)


def test_layer_factories_reject_unknown_kinds():
    with pytest.raises(ValueError, match="norm must be one of"):
        make_norm("group", "norm", True)
    with pytest.raises(ValueError, match="weight_init must be one of"):
        conv(4, implementation="xla", weight_init="xavier")


def test_images_must_be_nhwc():
    model = build_model("convnet", 10, width=4)
    with pytest.raises(ValueError, match=r"ConvNet: expected images of shape \(batch, height, width, channels\)"):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)), train=False)


def test_too_small_image_for_depth_is_rejected():
    model = build_model("convnet", 10, width=4, depth=5)
    with pytest.raises(ValueError, match="input too small for this depth"):
        shapes_of_init(model, jnp.zeros((1, 16, 16, 3)))


def test_conv_implementations_agree_in_value_and_gradient():
    """The CPU fast path (fast_conv) and XLA's convolution give the same layer; the layer takes only
    a resolved implementation."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 3)), jnp.float32)
    results = {}
    for impl in ("xla", "taps"):
        layer = Conv(features=4, kernel_size=3, strides=2, implementation=impl)
        variables = layer.init(jax.random.key(0), x)
        results[impl] = jax.value_and_grad(lambda v, x, layer=layer: jnp.sum(layer.apply(v, x) ** 2), argnums=(0, 1))(
            variables, x
        )
    chex.assert_trees_all_close(results["xla"], results["taps"], rtol=1e-4, atol=1e-5)
    for bad in ("auto", "cudnn"):
        with pytest.raises(ValueError, match=r"layers.py: the convolution implementation must be one of .*got '"):
            conv(4, implementation=bad)


def test_instance_norm_equals_flax_group_norm_with_one_channel_per_group():
    """The hand-written instance norm is a speed change only: same parameters, values and gradients."""
    from distill_jax.models import layers

    x = jax.random.normal(jax.random.key(0), (3, 5, 6, 4)) * 3.0 + 1.5
    ours, flax_gn = layers.InstanceNorm(), nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5)
    params = flax_gn.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, ours.init(jax.random.key(1), x))
    params = jax.tree.map(lambda p: p + jax.random.uniform(jax.random.key(2), p.shape), params)
    chex.assert_trees_all_close(ours.apply(params, x), flax_gn.apply(params, x), atol=1e-5)
    loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))  # noqa: E731
    chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(params, x),
                                jax.grad(loss(flax_gn), argnums=(0, 1))(params, x), atol=1e-4)
    # normalised per sample and channel over (H, W)
    y = ours.apply(ours.init(jax.random.key(1), x), x)
    np.testing.assert_allclose(np.asarray(y).mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).var(axis=(1, 2)), 1.0, atol=1e-3)
