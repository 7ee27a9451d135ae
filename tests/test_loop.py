"""The training loop: results.json, exact resume, keep-rate schedule reaching the blocks."""
import json
import pathlib
import shutil

import chex
import jax
import numpy as np
import pytest

from distill_jax import config as config_lib
from distill_jax.data import pipeline, preprocess
from distill_jax.training import checkpoint as ckpt_lib
from distill_jax.training import loop, workdir_io
from distill_jax.training import teacher as teacher_lib
from helpers import override


def _data(n_per_class=4, classes=4, size=8, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.normal(size=(len(labels), size, size, channels)).astype(np.float32) + labels[:, None, None, None] * 0.5
    test_labels = np.repeat(np.arange(classes), 5)
    test_images = (
        rng.normal(size=(len(test_labels), size, size, channels)).astype(np.float32)
        + test_labels[:, None, None, None] * 0.5
    )
    prep = preprocess.fit("none", np.zeros((2, size, size, channels), np.float32))
    return pipeline.TrainingData(images, labels, test_images, test_labels, classes, prep, "synthetic test data")


def _config(**over):
    c = config_lib.default_config()
    c.num_seeds = 2
    c.model.width = 4
    c.model.depth = 2
    c.model.norm = "batch"
    c.train.epochs = 6
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.augment.k = 1
    c.eval_every_epochs = 2
    c.checkpoint_every_epochs = 1
    c.log_every_steps = 1
    return override(c, **over)


def test_results_json_has_final_accuracy_mean_std_per_seed(tmp_path):
    results = loop.train_and_evaluate(_config(), tmp_path, data=_data())
    on_disk = json.loads((tmp_path / "results.json").read_text())
    fa = on_disk["final_accuracy"]
    assert set(fa) >= {"mean", "std", "per_seed"}
    assert len(fa["per_seed"]) == 2
    np.testing.assert_allclose(fa["mean"], np.mean(fa["per_seed"]))
    np.testing.assert_allclose(fa["std"], np.std(fa["per_seed"], ddof=1))
    assert all(0 <= a <= 100 for a in fa["per_seed"])
    assert [h["epoch"] for h in on_disk["history"]] == [2, 4, 6]
    assert on_disk["history"][-1]["test_accuracy"] == fa["per_seed"]
    assert on_disk["config"]["model"]["width"] == 4
    assert results["finished"] is True
    assert (tmp_path / "model.json").is_file()


def test_resume_continues_exactly(tmp_path):
    """Stopped after N epochs and restarted, a run ends where an uninterrupted one does."""
    data = _data()
    full = _config()
    loop.train_and_evaluate(full, tmp_path / "full", data=data)
    part = _config(**{"train.stop_after_epochs": 3})
    stopped = loop.train_and_evaluate(part, tmp_path / "resumed", data=data)
    assert stopped["finished"] is False and stopped["final_accuracy"] is None
    resumed = loop.train_and_evaluate(_config(), tmp_path / "resumed", data=data)
    assert resumed["finished"] is True
    a = _restore_params(tmp_path / "full")
    b = _restore_params(tmp_path / "resumed")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    full_results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert resumed["history"] == full_results["history"]


def _restore_state(workdir):
    """The latest checkpoint's state tree (leading seed axis)."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(pathlib.Path(workdir).resolve() / "checkpoints", item_names=("state", "meta"))
    return manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def _restore_params(workdir):
    return [np.asarray(x) for x in jax.tree.leaves(_restore_state(workdir)["params"])]


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _kd_terms_numpy(student_logits, teacher_logits, labels, alpha, temperature):
    """SPEC 2.5 by hand (float64): (alpha T^2 KL(softmax(t/T) || softmax(s/T)), (1 - alpha) CE(s, y)),
    KL summed over classes, both averaged over the batch; the KD loss is their sum."""
    s, t = np.asarray(student_logits, np.float64), np.asarray(teacher_logits, np.float64)
    log_p_teacher, log_p_student = _log_softmax(t / temperature), _log_softmax(s / temperature)
    kl = np.mean(np.sum(np.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1))
    ce = -np.mean(_log_softmax(s)[np.arange(len(labels)), labels])
    return alpha * temperature**2 * kl, (1 - alpha) * ce


ALPHA, TEMPERATURE = 0.7, 2.0  # not the defaults (0.5, 1.5), so swapped or ignored settings show


def _assert_first_kd_loss_uses_the_teacher(workdir, teacher_path, data):
    """One KD step of a whole-training-set batch at learning rate 0 and no augmentation: the saved params
    are then the ones the recorded loss was computed with, and that batch's mean loss is independent of
    the shuffle. The recorded loss must be alpha T^2 KL(teacher || student) + (1 - alpha) CE, with the
    teacher's logits on the same images, and differ from the loss without a teacher by far more than
    the tolerance."""
    config = _config(**{"num_seeds": 1, "train.epochs": 1, "train.batch_size": len(data.train_images),
                        "train.learning_rate": 0.0, "train.augment.k": 0, "model.norm": "none",
                        "train.kd.enabled": True, "train.kd.teacher_path": str(teacher_path),
                        "train.kd.alpha": ALPHA, "train.kd.temperature": TEMPERATURE})
    results = loop.train_and_evaluate(config, workdir, data=data)
    assert results["finished"] and len(results["history"]) == 1
    recorded = results["history"][0]["train_loss"]

    student = loop.build_model(config, data.num_classes)
    params = jax.tree.map(lambda x: np.asarray(x)[0], _restore_state(workdir)["params"])  # seed 0 = init (lr 0)
    student_logits = student.apply({"params": params}, data.train_images, train=True)
    teacher_module, teacher_variables = teacher_lib.load_teacher(teacher_path)
    teacher_logits = teacher_module.apply(teacher_variables, data.train_images, train=False)
    soft, hard = _kd_terms_numpy(student_logits, teacher_logits, data.train_labels, ALPHA, TEMPERATURE)
    np.testing.assert_allclose(recorded, soft + hard, rtol=1e-5)
    # The teacher's term is large against that tolerance: a loss that dropped it ((1 - alpha) CE, or the
    # plain CE of a run without KD) or took it from other teacher logits could not pass the check above.
    assert soft > 1e-2 * (soft + hard)
    no_kd_loss = hard / (1 - ALPHA)
    assert abs(recorded - no_kd_loss) > 1e-2 * recorded
    return recorded


def test_checkpoint_of_another_run_is_refused(tmp_path):
    """config.json names the run; without it, the checkpoints' own record still does."""
    data = _data()
    loop.train_and_evaluate(_config(**{"train.stop_after_epochs": 1}), tmp_path, data=data)
    with pytest.raises(workdir_io.RunConfigError, match="model.width: 4 -> 8"):
        loop.train_and_evaluate(_config(**{"model.width": 8}), tmp_path, data=data)
    (tmp_path / "config.json").unlink()
    with pytest.raises(
        ckpt_lib.CheckpointError, match=r"belongs to a different run:\n  train.learning_rate: 0.001 -> 0.002"
    ):
        loop.train_and_evaluate(_config(**{"train.learning_rate": 2e-3}), tmp_path, data=data)


def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    data = _data()
    loop.train_and_evaluate(_config(**{"train.stop_after_epochs": 1}), tmp_path, data=data)
    step_dir = next(p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    shutil.rmtree(step_dir / "state")
    (step_dir / "state").mkdir()
    (step_dir / "state" / "garbage").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ckpt_lib.CheckpointError, match="corrupt|cannot be read"):
        loop.train_and_evaluate(_config(), tmp_path, data=data)


def test_keep_rate_schedule_reaches_the_blocks(tmp_path):
    """The reference code's setter never reached the blocks; here the used rate follows the schedule."""
    config = _config(**{
        "model.name": "resnet10", "model.depth": None, "model.droppath": True, "model.improved_shortcut": True,
        "train.epochs": 8, "train.keep_rate.enabled": True, "train.keep_rate.period_epochs": 2,
        "train.keep_rate.step": 0.25, "train.keep_rate.min": 0.5, "train.keep_rate.final": 0.75,
        "train.lr_schedule": "periodic", "train.cycle_epochs": 4, "train.warmup_epochs": 1,
        "eval_every_epochs": 1, "checkpoint_every_epochs": 8, "num_seeds": 1, "train.augment.k": 0})
    results = loop.train_and_evaluate(config, tmp_path, data=_data())
    used = [round(h["keep_rate_used"], 4) for h in results["history"]]
    assert used == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.75, 0.75]


def test_teacher_from_a_finished_run(tmp_path):
    """A finished run is a KD teacher: its first seed's network, and its logits reach the student's loss."""
    data = _data()
    # A teacher far from uniform (a constant high learning rate), so its KD term is large.
    teacher = _config(**{"num_seeds": 2, "train.epochs": 3, "train.augment.k": 0, "train.lr_schedule": "constant",
                         "train.learning_rate": 0.05, "eval_every_epochs": 3, "checkpoint_every_epochs": 3})
    loop.train_and_evaluate(teacher, tmp_path / "teacher", data=data)
    module, variables = teacher_lib.load_teacher(tmp_path / "teacher")
    first_seed = jax.tree.map(lambda x: np.asarray(x)[0], _restore_state(tmp_path / "teacher"))
    expected = module.apply({"params": first_seed["params"], "batch_stats": first_seed["batch_stats"]},
                            data.test_images[:3], train=False)
    np.testing.assert_array_equal(module.apply(variables, data.test_images[:3], train=False), expected)
    _assert_first_kd_loss_uses_the_teacher(tmp_path / "student", tmp_path / "teacher", data)


def test_missing_teacher_says_how_to_train_one(tmp_path):
    with pytest.raises(teacher_lib.TeacherError, match="launch/main.py"):
        teacher_lib.load_teacher(tmp_path / "nothing_here")


def test_teacher_from_a_reference_pth(shared_data):
    from distill_jax.formats.torch_pickle import load_torch_file
    from test_torch_import import torch_convnet_forward

    path = shared_data / "teachers" / "cifar10_1_mtt_convnet" / "checkpoint_best.pth"
    module, variables = teacher_lib.load_teacher(path)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    logits = module.apply(variables, x, train=False)
    expected = torch_convnet_forward(load_torch_file(path)["state_dict"], np.transpose(x, (0, 3, 1, 2)))
    chex.assert_shape(logits, (2, 10))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_teacher_from_a_synthetic_pth_file(tmp_path):
    """A reference-code .pth is a KD teacher: the reference network's logits, and they reach the student's loss."""
    import collections

    from test_torch_import import synthetic_state_dict, torch_convnet_forward
    from test_torch_pickle import tensor, write_torch_file

    data = _data()  # 8x8x1 images, 4 classes: a depth-2 ConvNet ends on 2x2 features
    sd = synthetic_state_dict(np.random.default_rng(0), in_channels=1, width=4, depth=2, num_classes=4, side=2)
    path = write_torch_file(tmp_path / "teacher.pth",
                            {"state_dict": collections.OrderedDict((k, tensor(v)) for k, v in sd.items()), "epoch": 3})
    module, variables = teacher_lib.load_teacher(path)
    logits = module.apply(variables, data.train_images, train=False)
    chex.assert_shape(logits, (16, 4))
    np.testing.assert_allclose(logits, torch_convnet_forward(sd, np.transpose(data.train_images, (0, 3, 1, 2))),
                               rtol=1e-4, atol=1e-4)
    _assert_first_kd_loss_uses_the_teacher(tmp_path / "student", path, data)
