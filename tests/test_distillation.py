"""Distillers (DM, FRePo) and mode 'distill': equations against numpy, gradients, toy
convergence, exact resume, and a produced set that the training loop can use."""
import json
import os
import stat

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax import config as config_lib
from distill_jax import models
from distill_jax.data import grid as image_grid
from distill_jax.data import preprocess
from distill_jax.distillation import common, distill_mode, dm, frepo
from distill_jax.errors import ConfigError
from distill_jax.formats import distilled as distilled_lib
from distill_jax.training import checkpoint as ckpt_lib
from distill_jax.training import loop, runlife, workdir_io
from helpers import override

CLASSES, SIZE, PER_CLASS = 3, 8, 12


def _toy_pixels(seed=0, per_class=PER_CLASS):
    """Class-dependent brightness and a class-dependent bright column: separable, in [0, 1]."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), per_class)
    pixels = rng.uniform(0.0, 0.4, size=(len(labels), SIZE, SIZE, 1))
    pixels += 0.15 * labels[:, None, None, None]
    pixels[np.arange(len(labels)), :, 2 * labels + 1, 0] += 0.3
    return np.clip(pixels, 0, 1).astype(np.float32), labels


def _real(recipe):
    pixels, labels = _toy_pixels()
    prep = preprocess.fit(recipe, pixels)
    return common.real_data_from_arrays(prep.apply(pixels), labels, CLASSES, prep, "toy")


def _config(method="dm", **over):
    c = config_lib.default_config()
    c.mode = "distill"
    c.data.dataset = "npz"
    c.distill.method = method
    c.distill.ipc = 2
    c.distill.steps = 6
    c.distill.width = 4
    c.distill.depth = 2
    c.distill.augment_ops = "flip"  # the step tests cover two-op siamese DSA; one op compiles faster
    c.distill.checkpoint_every_steps = 3
    c.log_every_steps = 2
    c.distill.dm.real_per_class = 4
    c.distill.frepo.real_batch_size = 8
    c.distill.frepo.pool_size = 2
    c.distill.frepo.max_online_updates = 3
    c.distill.frepo.optimizer = "adam"
    c.distill.frepo.learning_rate = 0.01
    return override(c, **over)


# --------------------------------------------------------------------------- equations


def _numpy_krr(fs, ys, ft, reg):
    fs, ys, ft = (np.asarray(a, np.float64) for a in (fs, ys, ft))
    kss, kts = fs @ fs.T, ft @ fs.T
    n = len(fs)
    return kts @ np.linalg.solve(kss + reg * np.trace(kss) / n * np.eye(n), ys)


def test_krr_prediction_and_loss_match_numpy():
    rng = np.random.default_rng(0)
    fs, ys = rng.normal(size=(6, 9)), rng.normal(size=(6, 3))
    ft, yt = rng.normal(size=(5, 9)), rng.normal(size=(5, 3))
    reg = 1e-2
    expected = _numpy_krr(fs, ys, ft, reg)
    got = frepo.krr_predict(
        jnp.asarray(fs, jnp.float32), jnp.asarray(ys, jnp.float32), jnp.asarray(ft, jnp.float32), reg
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)
    loss = frepo.krr_loss(*(jnp.asarray(a, jnp.float32) for a in (fs, ys, ft, yt)), reg)
    np.testing.assert_allclose(float(loss), np.mean((expected - yt) ** 2), rtol=1e-4)


def test_krr_ridge_is_relative_to_the_kernel_trace():
    """lambda = reg * trace(K) / n: rescaling the features leaves the predictions unchanged."""
    rng = np.random.default_rng(1)
    fs, ys, ft = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((4, 3), (4, 2), (3, 3)))
    a = frepo.krr_predict(fs, ys, ft, 0.5)
    b = frepo.krr_predict(30.0 * fs, ys, 30.0 * ft, 0.5)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_krr_label_gradient_matches_closed_form():
    """d/dy_s mean((K_ts A^-1 y_s - y_t)^2) = A^-1 K_st 2 (pred - y_t) / (T K)."""
    rng = np.random.default_rng(2)
    fs, ys, ft, yt = (rng.normal(size=s) for s in ((5, 7), (5, 3), (4, 7), (4, 3)))
    reg = 0.1
    grad = jax.grad(frepo.krr_loss, argnums=1)(*(jnp.asarray(a, jnp.float32) for a in (fs, ys, ft, yt)), reg)
    kss, kts = fs @ fs.T, ft @ fs.T
    a = kss + reg * np.trace(kss) / 5 * np.eye(5)
    residual = _numpy_krr(fs, ys, ft, reg) - yt
    expected = np.linalg.solve(a, kts.T @ (2 * residual / residual.size))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-3, atol=1e-5)


def test_dm_loss_matches_numpy():
    rng = np.random.default_rng(3)
    real, syn = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 2, 4))
    expected = sum(np.sum((real[c].mean(0) - syn[c].mean(0)) ** 2) for c in range(3))
    np.testing.assert_allclose(float(dm.dm_loss(jnp.asarray(real), jnp.asarray(syn))), expected, rtol=1e-5)


def test_features_are_the_input_of_the_head():
    model = models.build_model("convnet", CLASSES, width=4, depth=2, norm="none")
    x = jnp.asarray(_toy_pixels()[0][:5])
    variables = model.init(jax.random.key(0), x, train=False)
    features, logits, _ = common.features_and_logits(model, variables, x, train=False)
    chex.assert_shape(features, (5, 2 * 2 * 4))
    head = variables["params"]["head"]
    np.testing.assert_allclose(np.asarray(features @ head["kernel"] + head["bias"]), np.asarray(logits), atol=1e-5)


def test_centred_one_hot_and_flip_doubling():
    y = common.centred_one_hot(jnp.array([0, 2]), 4)
    np.testing.assert_allclose(np.asarray(y), [[0.75, -0.25, -0.25, -0.25], [-0.25, -0.25, 0.75, -0.25]])
    images = jnp.arange(2 * 2 * 3 * 1, dtype=jnp.float32).reshape(2, 2, 3, 1)
    doubled, labels = frepo.flip_doubled(images, y)
    chex.assert_shape(doubled, (4, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(doubled[2:]), np.asarray(images)[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(labels), np.concatenate([y, y]))
    assert distill_mode.step_settings(_config("frepo", **{"distill.ipc": 1}), CLASSES)[0].flip_double is True
    assert distill_mode.step_settings(_config("frepo", **{"distill.ipc": 2}), CLASSES)[0].flip_double is False


def test_per_class_sampling_stays_in_its_class():
    labels = np.array([0] * 2 + [1] * 7 + [2] * 3)
    real = common.real_data_from_arrays(np.zeros((12, 2, 2, 1), np.float32), labels[::-1].copy(), 3,
                                        preprocess.fit("none", np.zeros((2, 2, 2, 1), np.float32)), "sizes")
    index = np.asarray(common.sample_per_class(jax.random.key(0), jnp.asarray(real.class_start),
                                               jnp.asarray(real.class_count), 50))
    chex.assert_shape(index, (3, 50))
    for c in range(3):
        assert np.all(real.labels[index[c]] == c)
    assert len(np.unique(index[1])) == 7  # every image of the class is reachable


def test_initial_images_are_distinct_real_images_grouped_by_class():
    real = _real("standardize")
    images, classes = common.initial_images(real, 3, "real", seed=0)
    np.testing.assert_array_equal(classes, np.repeat(np.arange(CLASSES), 3))
    for image, c in zip(images, classes, strict=True):
        matches = np.flatnonzero(np.all(real.images == image, axis=(1, 2, 3)))
        assert len(matches) == 1 and real.labels[matches[0]] == c
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)


def test_image_grid_layout():
    pixels = np.stack([np.full((4, 4, 1), v, np.float32) for v in (0.0, 0.5, 1.0, 2.0)])
    classes = np.array([1, 0, 1, 0])  # rows follow the class, columns the set order within it
    grid = image_grid.image_grid(pixels, classes, num_classes=2, gap=1)
    zoom = 8  # 4 px images are enlarged to 32 px
    assert grid.shape == (2 * 32 + 1, 2 * 32 + 1) and grid.dtype == np.uint8
    assert grid[0, 0] == 128 and grid[0, 33] == 255 and grid[33, 0] == 0 and grid[33 + zoom, 33 + zoom] == 255
    named = image_grid.image_grid(pixels, classes, num_classes=2, class_names=["zero", "one"])
    # A dark text column at the left.
    assert named.shape == (65, image_grid.LABEL_WIDTH + 65) and named[:, :image_grid.LABEL_WIDTH].min() < 128


# --------------------------------------------------------------------------- steps


def _dm_setup(init="noise"):
    real = _real("standardize")
    settings = dm.DMSettings(CLASSES, ipc=2, real_per_class=6, augment_ops=("flip", "crop"), augment_k=1)
    model = models.build_model("convnet", CLASSES, width=4, depth=2)
    optimizer = dm.make_dm_optimizer(1.0, 0.5)
    images, _ = common.initial_images(real, 2, init, seed=0)
    real_arrays = {"images": jnp.asarray(real.images), "class_start": jnp.asarray(real.class_start),
                   "class_count": jnp.asarray(real.class_count)}
    return jax.jit(dm.make_dm_step(model, optimizer, settings)), dm.init_dm_state(images, optimizer), real_arrays


def test_dm_step_is_pure_reaches_every_image_and_lowers_the_loss():
    step, state, real = _dm_setup()
    key = jax.random.key(0)
    before = jax.tree.map(np.asarray, state)
    a, metrics_a = step(state, real, key)
    b, metrics_b = step(state, real, key)
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state), before)  # the input is untouched
    moved = np.abs(np.asarray(a["images"]) - before["images"]).reshape(6, -1).max(axis=1)
    assert np.all(moved > 0), "every synthetic image receives a gradient through the siamese augmentation"
    losses = []
    for _ in range(30):
        state, metrics = step(state, real, key)
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def _frepo_setup(settings=None):
    real = _real("zca_frepo")
    settings = settings or frepo.FRePoSettings(CLASSES, real_batch_size=12, pool_size=2, max_online_updates=3,
                                               kernel_reg=1e-6, augment_ops=("flip", "crop"), augment_k=1)
    model = models.build_model("convnet_frepo", CLASSES, width=4, depth=2)
    optimizer, online = frepo.make_label_image_optimizer("adam", 0.01), frepo.make_online_optimizer(1e-3)
    images, classes = common.initial_images(real, 2, "real", seed=0)
    labels = common.centred_one_hot(classes, CLASSES)
    state = jax.jit(lambda x, y, k: frepo.init_frepo_state(model, optimizer, online, settings, x, y, k))(
        images, labels, jax.random.key(1))
    real_arrays = {"images": jnp.asarray(real.images), "labels": jnp.asarray(real.labels)}
    return model, settings, jax.jit(frepo.make_frepo_step(model, optimizer, online, settings)), state, real_arrays


def test_frepo_meta_gradient_reaches_every_image_and_label():
    model, settings, _, state, real = _frepo_setup()
    member = common.tree_index(state["pool"], 0)
    target = real["images"][:9]
    target_labels = common.centred_one_hot(real["labels"][:9], CLASSES)
    grads = jax.jit(jax.grad(lambda x, y: frepo.meta_loss(model, member, x, y, target, target_labels, settings),
                             argnums=(0, 1)))(state["images"], state["labels"])
    image_norms = np.sqrt((np.asarray(grads[0]) ** 2).reshape(6, -1).sum(1))
    label_norms = np.sqrt((np.asarray(grads[1]) ** 2).sum(1))
    assert np.all(image_norms > 0) and np.all(label_norms > 0), (image_norms, label_norms)


def test_frepo_step_is_pure_lowers_the_loss_and_recycles_the_pool():
    _, settings, step, state, real = _frepo_setup()
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(state["pool"]["updates"]), [0, 1])  # staggered start
    a, _ = step(state, real, key)
    b, _ = step(state, real, key)
    chex.assert_trees_all_equal(a, b)
    losses, resets = [], 0
    for _ in range(40):
        before = np.asarray(state["pool"]["updates"])
        state, metrics = step(state, real, key)
        losses.append(float(metrics["loss"]))
        counters = np.asarray(state["pool"]["updates"])
        assert np.all((counters >= 0) & (counters < settings.max_online_updates))
        changed = np.flatnonzero(counters != before)
        assert len(changed) == 1  # exactly one member trains per step
        resets += int(counters[changed[0]] == 0)  # ... and is re-initialised when its budget is spent
    assert settings.max_online_updates * resets == 1 + 40 - counters.sum() and resets >= 12
    assert np.asarray(state["labels"]).std() > 0 and not np.allclose(
        np.asarray(state["labels"]), np.asarray(common.centred_one_hot(jnp.repeat(jnp.arange(CLASSES), 2), CLASSES)))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


# --------------------------------------------------------------------------- the mode


def _write_npz_dataset(folder):
    """A tiny real dataset on disk ('npz' source), so the mode loads data as it does in real use."""
    folder.mkdir()
    for split, seed, per_class in (("train", 0, PER_CLASS), ("test", 1, 5)):
        pixels, labels = _toy_pixels(seed, per_class)
        np.savez(folder / f"{split}.npz", image=np.round(pixels * 255).astype(np.uint8), label=labels)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per method: an uninterrupted run, and one stopped after 3 of 6 steps then resumed."""
    root = tmp_path_factory.mktemp("distill")
    data = _write_npz_dataset(root / "data")
    out = {"data": data}
    for method in ("dm", "frepo"):
        full = distill_mode.run_distillation(_config(method, **{"data.data_dir": str(data)}), root / method / "full")
        stopped = distill_mode.run_distillation(
            _config(method, **{"data.data_dir": str(data), "distill.stop_after_steps": 3}), root / method / "resumed"
        )
        resumed = distill_mode.run_distillation(
            _config(method, **{"data.data_dir": str(data)}), root / method / "resumed"
        )
        out[method] = {"full": full, "stopped": stopped, "resumed": resumed, "workdir": root / method / "full"}
    return out


@pytest.mark.parametrize("method", ["dm", "frepo"])
def test_resume_is_exact(runs, method):
    full, stopped, resumed = runs[method]["full"], runs[method]["stopped"], runs[method]["resumed"]
    assert stopped["finished"] is False and "distilled_path" not in stopped
    assert full["finished"] and resumed["finished"]
    a = distilled_lib.load_distilled(full["distilled_path"])
    b = distilled_lib.load_distilled(resumed["distilled_path"])
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert [h["loss"] for h in full["history"] if h["step"] > 4] == [
        h["loss"] for h in resumed["history"] if h["step"] > 4
    ]


def test_produced_set_loads_and_trains_in_the_training_loop(runs, tmp_path):
    work, results = runs["frepo"]["workdir"], runs["frepo"]["full"]
    dset = distilled_lib.load_distilled(results["distilled_path"])
    assert dset.provenance["format"] == "distill_jax" and dset.provenance["derived_from"]["method"] == "frepo"
    assert dset.preprocessing == "zca_frepo" and dset.label_kind == "vector"
    chex.assert_shape(dset.images, (CLASSES * 2, SIZE, SIZE, 1))
    np.testing.assert_array_equal(dset.class_counts(), [2] * CLASSES)
    stored = preprocess.Preprocessing.load(work / distill_mode.PREPROCESSING_NAME)
    on_disk_pixels = np.round(_toy_pixels()[0] * 255).astype(np.uint8).astype(np.float32) / 255
    np.testing.assert_allclose(
        stored.zca_matrix, preprocess.fit("zca_frepo", on_disk_pixels).zca_matrix, rtol=1e-5, atol=1e-6
    )
    assert sorted(p.name for p in (work / "images").glob("*.png")) == [f"step_{s:07d}.png" for s in (3, 6)]
    on_disk = json.loads((work / "results.json").read_text())
    assert (
        on_disk["finished"] and on_disk["seconds_per_step"] > 0 and [h["step"] for h in on_disk["history"]] == [2, 4, 6]
    )
    assert distilled_lib.load_distilled(runs["dm"]["full"]["distilled_path"]).label_kind == "index"

    train = config_lib.default_config()
    train.data.dataset, train.data.data_dir = "npz", str(runs["data"])
    train.data.source, train.data.distilled_path = "distilled", results["distilled_path"]
    train.model.width, train.model.depth = 4, 2
    train.train.epochs, train.train.batch_size, train.train.augment.k = 2, 6, 0
    train.eval_every_epochs = 1
    trained = loop.train_and_evaluate(train, tmp_path / "train")
    assert trained["finished"] and 0 <= trained["final_accuracy"]["mean"] <= 100
    assert trained["preprocessing"] == "zca_frepo"
    # one software record, Python included, in the results of both
    assert on_disk["software"] == trained["software"] == runlife.software_versions() and on_disk["software"]["python"]


@pytest.fixture
def umask_027():
    """A umask other than the usual 022, so a mode fixed in the code shows (restored after)."""
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_every_file_of_a_distillation_and_of_a_training_on_its_set_has_the_mode_of_a_plain_open(tmp_path,
                                                                                               umask_027):
    """A distilled set is shared: another user trains on it (`transfer`). Every file a distillation
    and a training on its set write gets the mode open() gives, 0666 less the umask (0644 under
    the usual 022), the set and its preprocessing included."""
    data = _write_npz_dataset(tmp_path / "data")
    made = distill_mode.run_distillation(
        _config(**{"data.data_dir": str(data), "distill.steps": 2}), tmp_path / "distill"
    )
    train = config_lib.default_config()
    train.data.dataset, train.data.data_dir = "npz", str(data)
    train.data.source, train.data.distilled_path = "distilled", made["distilled_path"]
    train.model.width, train.model.depth = 4, 2
    train.train.epochs, train.train.batch_size, train.train.augment.k = 1, 6, 0
    loop.train_and_evaluate(train, tmp_path / "train")

    files = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for folder in ("distill", "train") for p in (tmp_path / folder).rglob("*") if p.is_file()}
    assert {
        "distill/" + name
        for name in (
            distill_mode.OUTPUT_NAME,
            distill_mode.PREPROCESSING_NAME,
            workdir_io.CONFIG_FILE,
            workdir_io.RESULTS_FILE,
            workdir_io.METRICS_FILE,
            "images/step_0000002.png",
        )
    } <= set(files)
    assert {"train/" + name for name in (workdir_io.CONFIG_FILE, workdir_io.MODEL_FILE, workdir_io.RESULTS_FILE,
                                         workdir_io.METRICS_FILE, workdir_io.TRAIN_SET_GRID)} <= set(files)
    assert any(name.startswith(f"train/{workdir_io.CHECKPOINT_DIR}/") for name in files)
    assert any(name.startswith(f"train/{workdir_io.TB_DIR}/") for name in files)
    expected = 0o666 & ~umask_027
    assert {name: oct(mode) for name, mode in files.items() if mode != expected} == {}


# --------------------------------------------------------------------------- errors


def test_unknown_method_is_rejected_by_validation():
    with pytest.raises(ConfigError, match=r"distill\.method.*'kip'.*'dm', 'frepo'"):
        config_lib.validate(_config("kip"))


def test_unknown_augment_op_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"distill\.augment_ops.*'zoom'"):
        distill_mode.run_distillation(
            _config(**{"distill.augment_ops": "flip,zoom"}), tmp_path, real=_real("standardize")
        )


def test_more_images_per_class_than_the_class_has(tmp_path):
    with pytest.raises(common.DistillationError, match=r"distill\.ipc = 13.*12"):
        distill_mode.run_distillation(_config(**{"distill.ipc": 13}), tmp_path, real=_real("standardize"))


def test_real_data_in_another_pixel_space(tmp_path):
    with pytest.raises(common.DistillationError, match=r"'standardize'.*'zca_frepo'"):
        distill_mode.run_distillation(_config("frepo"), tmp_path, real=_real("standardize"))


def test_resuming_a_different_run_is_refused(tmp_path):
    distill_mode.run_distillation(_config(**{"distill.steps": 2}), tmp_path, real=_real("standardize"))
    with pytest.raises(workdir_io.RunConfigError, match="distill.ipc: 2 -> 3"):
        distill_mode.run_distillation(
            _config(**{"distill.steps": 2, "distill.ipc": 3}), tmp_path, real=_real("standardize")
        )
    (tmp_path / "config.json").unlink()  # the checkpoints' own record still names the run
    with pytest.raises(ckpt_lib.CheckpointError, match="distill.ipc: 2 -> 3"):
        distill_mode.run_distillation(
            _config(**{"distill.steps": 2, "distill.ipc": 3}), tmp_path, real=_real("standardize")
        )


def test_non_finite_loss_stops_the_run(tmp_path):
    real = _real("standardize")
    broken = np.array(real.images)
    broken[:] = np.nan
    real = common.real_data_from_arrays(broken, real.labels, CLASSES, real.preprocessing, "broken")
    with pytest.raises(common.DistillationError, match=r"loss is nan at step 2"):
        distill_mode.run_distillation(_config(**{"distill.init": "noise"}), tmp_path, real=real)


def test_only_the_writer_process_writes_the_set(tmp_path, monkeypatch):
    """A process other than process 0 of a multi-process run (`workdir_io.is_writer` False) leaves the
    set, its preprocessing and the records to process 0: it writes none of them."""
    monkeypatch.setattr(workdir_io, "is_writer", lambda: False)
    results = distill_mode.run_distillation(_config(**{"distill.steps": 2}), tmp_path, real=_real("standardize"))
    assert results["finished"] and results["distilled_path"] == str(tmp_path / distill_mode.OUTPUT_NAME)
    for name in (distill_mode.OUTPUT_NAME, distill_mode.PREPROCESSING_NAME, "results.json", "config.json", "images"):
        assert not (tmp_path / name).exists(), name
