"""The paper's configurations (docs/method.md §2.7), their scaling, named experiments and config files."""
import itertools
import pathlib

import numpy as np
import pytest

from configs import paper as paper_configs
from configs import pipeline as pipeline_configs
from distill_jax import config as config_lib
from distill_jax import models
from distill_jax.data import pipeline, preprocess
from distill_jax.experiments import recipes, registry, reproduce
from distill_jax.optim import schedules
from distill_jax.report.results_record import Role
from distill_jax.training import loop
from distill_jax.training import teacher as teacher_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# docs/method.md §2.7, row by row: optimiser, peak lr, wd, lr schedule, DSA ops k, KD, DropPath, epochs.
METHOD_TABLE = {
    "baseline": ("adamw", 5e-4, 5e-4, "step", 1, False, False, 1000),
    "no_dp_kd": ("lion", 5e-5, 5e-3, "warmup_cosine", 2, False, False, 1000),
    "no_dp": ("lion", 5e-5, 5e-3, "warmup_cosine", 2, True, False, 1000),
    "no_kd": ("lion", 5e-5, 5e-3, "periodic", 2, False, True, 4000),
    "full": ("lion", 5e-5, 5e-3, "periodic", 2, True, True, 4000),
}


@pytest.mark.parametrize("variant", recipes.VARIANTS)
def test_five_configurations_match_the_spec_table(variant):
    c = recipes.paper_config("resnet18", "frepo", "cifar10", 10, variant)
    t = c.train
    got = (t.optimizer, t.learning_rate, t.weight_decay, t.lr_schedule, t.augment.k, t.kd.enabled,
           bool(c.model.droppath) and t.keep_rate.enabled, t.epochs)
    assert got == METHOD_TABLE[variant]
    assert c.model.improved_shortcut is True  # all five use the improved shortcut in ResNets
    if variant == "baseline":
        assert t.decay_at_fraction == 0.5
    if variant in ("no_kd", "full"):
        assert (t.keep_rate.period_epochs, t.keep_rate.step, t.keep_rate.min, t.keep_rate.final) == (500, 0.1, 0.5, 0.8)
        assert (t.cycle_epochs, t.warmup_epochs) == (1000, 100)
    if t.kd.enabled:
        assert (t.kd.alpha, t.kd.temperature) == (0.5, 1.5)
        assert t.kd.teacher_path
    else:
        assert t.kd.teacher_path == ""


def test_every_paper_configuration_validates_with_its_dataset_sizes():
    count = 0
    for model, method, dataset, ipc, variant in itertools.product(recipes.TEST_NETWORKS, recipes.METHODS,
                                                                  ("cifar10", "cifar100", "tiny_imagenet"),
                                                                  recipes.IPCS, ("baseline", "full")):
        c = config_lib.validate(recipes.paper_config(model, method, dataset, ipc, variant))
        prefix = {"cifar10": "cifar10", "cifar100": "cifar100", "tiny_imagenet": "tiny_imagenet"}[dataset]
        assert c.data.distilled_path.endswith(f"distilled/{prefix}_{ipc}_{method}")
        assert c.data.dataset == dataset
        if model in ("vgg11", "alexnet"):
            assert c.model.get("improved_shortcut") is None
        assert c.model.norm == {"mtt": "instance", "frepo": "batch"}[method]
        count += 1
    assert count == 4 * 2 * 3 * 3 * 2


def test_resnet50_uses_its_own_keep_rate_steps():
    t = recipes.paper_config("resnet50", "mtt", "cifar10", 10, "full").train
    assert (t.keep_rate.step, t.keep_rate.min, t.keep_rate.final) == (0.13, 0.35, 0.8)


def test_teacher_networks_follow_the_distiller_and_image_size():
    frepo = recipes.teacher_config("frepo", "cifar100", 10)
    assert (frepo.model.name, frepo.model.get("depth")) == ("convnet_frepo", None)  # default depth 3 on 32 px
    tiny = recipes.teacher_config("mtt", "tiny_imagenet", 50)
    assert (tiny.model.name, tiny.model.depth, tiny.model.norm) == ("convnet", 4, "instance")
    assert tiny.mode == "teacher"
    config_lib.validate(tiny)


def test_unknown_names_are_rejected_with_the_allowed_values():
    with pytest.raises(recipes.ExperimentError, match=r"test network 'resnet19'.*resnet18"):
        recipes.paper_config("resnet19", "frepo", "cifar10", 10, "full")
    with pytest.raises(recipes.ExperimentError, match=r"variant 'fast'.*baseline"):
        recipes.paper_config("resnet18", "frepo", "cifar10", 10, "fast")
    with pytest.raises(recipes.ExperimentError, match=r"images per class 20"):
        recipes.teacher_config("frepo", "cifar10", 20)
    with pytest.raises(recipes.ExperimentError, match=r"per_class must be a positive int"):
        recipes.realsubset_config("fashion_mnist", 0, "convnet")


def test_scaling_divides_every_epoch_count_and_keeps_the_phases():
    c = recipes.scale_config(recipes.paper_config("resnet18", "frepo", "cifar10", 10, "full"),
                        epoch_divisor=20, lr_multiplier=20.0, width=8, evals=2)
    t = c.train
    assert (t.epochs, t.keep_rate.period_epochs, t.cycle_epochs, t.warmup_epochs) == (200, 25, 50, 5)
    np.testing.assert_allclose(t.learning_rate, 1e-3)
    assert c.model.width == 8 and c.eval_every_epochs == 100
    # same phase structure: keep rates 1, .9, .8, .7, .6, .5 then .8 over the last quarter
    _, keep = schedules.from_config(c.train, steps_per_epoch=1)
    np.testing.assert_allclose([float(keep(e)) for e in range(0, 200, 25)], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.8, 0.8],
                               rtol=1e-6)


def test_scaling_refuses_a_divisor_that_would_shift_phases():
    with pytest.raises(recipes.ExperimentError, match=r"train.epochs = 1000 is not divisible by epoch_divisor 3"):
        recipes.scale_config(recipes.paper_config("resnet18", "frepo", "cifar10", 10, "baseline"), epoch_divisor=3)


def test_paper_experiment_trains_its_teacher_first_and_points_students_at_it(tmp_path):
    cells = registry.get_experiment("frepo_cifar10_10_resnet18", tmp_path, registry.Scale(epoch_divisor=20, width=8),
                              split_seeds=True, num_seeds=3, seed=4)
    assert [c.name for c in cells] == ["teacher", *recipes.VARIANTS]
    assert cells[0].role is Role.TEACHER and cells[0].config.model.name == "convnet_frepo"
    for cell in cells[1:]:
        assert cell.config.seed == 4 and cell.config.num_seeds == 3 and cell.config.model.width == 8
        if cell.config.train.kd.enabled:
            assert cell.config.train.kd.teacher_path == str(tmp_path / "teacher" / "seed_4")
        config_lib.validate(cell.config)


def test_realsubset_experiment_cells(tmp_path):
    cells = registry.get_experiment("realsubset_fashion_mnist_10_resnet18", tmp_path)
    assert [c.label for c in cells] == ["ConvNet", "resnet18 Baseline", "resnet18 DropPath + KD"]
    convnet, baseline, dp_kd = (c.config for c in cells)
    assert convnet.data.source == "real" and convnet.data.per_class == 10 and convnet.model.name == "convnet"
    assert baseline.train.optimizer == "adamw" and not baseline.model.droppath
    assert (
        dp_kd.model.droppath
        and dp_kd.train.keep_rate.enabled
        and dp_kd.train.kd.teacher_path == str(tmp_path / "teacher")
    )


def test_published_mtt_teacher_is_evaluated_not_trained(tmp_path, shared_data):
    cells = registry.get_experiment("mtt_cifar10_jpeg_1_resnet18", tmp_path)
    assert cells[0].role is Role.IMPORT
    assert cells[0].config.evaluate.path == str(
        shared_data / "teachers" / "cifar10_1_mtt_convnet" / "checkpoint_best.pth"
    )
    assert cells[-1].config.train.kd.teacher_path == str(tmp_path / "teacher")  # where it is imported


@pytest.mark.parametrize("name", ["frepo_cifar10_10", "dc_cifar10_10_resnet18", "frepo_cifar10_x_resnet18",
                                  "realsubset_cifar10_ten_resnet18", "frepo_svhn_10_resnet18"])
def test_bad_experiment_names(name, tmp_path):
    with pytest.raises(recipes.ExperimentError):
        registry.get_experiment(name, tmp_path)


def test_every_listed_experiment_builds(tmp_path):
    names = registry.experiment_names()
    assert "frepo_cifar10_10_resnet18" in names and "realsubset_fashion_mnist_10_resnet18" in names
    for name in names:
        assert registry.get_experiment(name, tmp_path)


def test_registered_experiment_takes_precedence_until_unregistered(tmp_path):
    cell = registry.Cell("only", "Only", recipes.teacher_config("frepo", "cifar10", 1), Role.TEACHER)
    registry.register_experiment("my_experiment", lambda workdir, scale, **kw: [cell])
    try:
        assert registry.get_experiment("my_experiment", tmp_path, seed=7)[0].config.seed == 7
        assert "my_experiment" in registry.experiment_names()
    finally:
        registry.unregister_experiment("my_experiment")
    assert "my_experiment" not in registry.experiment_names()
    with pytest.raises(recipes.ExperimentError, match="experiment name 'my_experiment' is not of the form"):
        registry.get_experiment("my_experiment", tmp_path)
    with pytest.raises(recipes.ExperimentError, match="unregister_experiment: 'my_experiment' is not registered"):
        registry.unregister_experiment("my_experiment")


@pytest.mark.parametrize("spec, model, epochs", [
    ("configs/paper.py:vgg11,mtt,cifar100,50,no_dp", "vgg11", 1000),
    ("configs/paper.py:alexnet,frepo,tiny_imagenet,1,full", "alexnet", 4000),
    ("configs/teacher.py:mtt,cifar10,10", "convnet", 1000),
    ("configs/realsubset.py:cifar10,100,baseline,resnet50", "resnet50", 1000),
    ("configs/reproduce.py:frepo_cifar10_10_resnet18", "convnet", 1000),
])
def test_config_files_take_an_argument(spec, model, epochs):
    c = config_lib.validate(config_lib.load_config_file(ROOT / spec))
    assert (c.model.name, c.train.epochs) == (model, epochs)


def test_config_file_with_a_bad_argument_says_what_it_expects():
    with pytest.raises(ValueError, match=r"<network>,<method>,<dataset>,<ipc>,<variant>"):
        config_lib.load_config_file(ROOT / "configs" / "paper.py:resnet18,frepo")


def test_student_with_missing_teacher_says_how_to_train_one(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(20, 8, 8, 3)).astype(np.float32)
    labels = np.repeat(np.arange(10), 2)
    data = pipeline.TrainingData(
        images,
        labels,
        images,
        labels,
        10,
        preprocess.fit("none", np.zeros((2, 8, 8, images.shape[-1]), np.float32)),
        "synthetic",
    )
    c = recipes.paper_config("resnet18", "frepo", "cifar10", 10, "full", teacher_path=str(tmp_path / "no_teacher"))
    with pytest.raises(teacher_lib.TeacherError, match=r"train one with .*launch/main.py"):
        loop.train_and_evaluate(c, tmp_path / "run", data=data)


@pytest.mark.parametrize("method", recipes.METHODS)
def test_reference_code_sets_are_read_in_the_mtt_zca_space(method):
    # measured on training statistics only (docs/results.md): the published FRePo sets too
    assert recipes.paper_config("resnet18", method, "cifar10", 10, "full").data.preprocessing == "zca_mtt"
    assert recipes.teacher_config(method, "cifar10", 10).data.preprocessing == "zca_mtt"


def _expected_norm(name: str) -> str:
    """docs/method.md §3, written out per experiment family: FRePo sets batch norm, MTT and DM
    sets instance norm (every network of the experiment), real subsets batch norm."""
    if name.startswith("realsubset_"):
        return "batch"
    source = name.split("_")[1] if name.startswith("pipeline_") else name.split("_")[0]
    return {"frepo": "batch", "mtt": "instance", "dm": "instance"}[source]


def test_every_named_experiment_cell_names_its_norm(tmp_path):
    """Every cell of every built-in experiment (paper tables, real subsets, pipelines) sets its
    network's norm explicitly, as the set's source requires; the paper.py config files agree."""
    checked = 0
    for name in registry.experiment_names():
        for cell in registry.get_experiment(name, tmp_path):
            if cell.role is Role.DISTILL:
                continue
            assert cell.config.model.get("norm") == _expected_norm(name), (name, cell.name)
            checked += 1
    assert checked == 996  # 96 paper experiments x 6 cells, 12 real-subset x 3, 96 pipelines x 4
    for variant in recipes.VARIANTS:
        assert paper_configs.get_config(f"resnet18,frepo,cifar10,10,{variant}").model.norm == "batch"
        assert paper_configs.get_config(f"vgg11,mtt,cifar10,1,{variant}").model.norm == "instance"
    assert pipeline_configs.get_config("frepo").reproduce.experiment.startswith("pipeline_frepo_")


def test_norm_for_set_falls_back_to_batch_for_sets_a_user_brings():
    assert models.norm_for_set("frepo") == "batch" and models.norm_for_set("mtt") == "instance"
    assert models.norm_for_set("dm") == "instance" and models.norm_for_set("real") == "batch"
    assert models.norm_for_set("kip") == "batch" and models.norm_for_set("my_own_set") == "batch"
    for name in ("resnet18", "resnet50", "vgg11", "alexnet"):  # the test networks' own default agrees
        assert models.default_option(name, "norm") == "batch"
    assert models.default_option("convnet", "norm") == "instance"


def test_mtt_teacher_is_published_and_labelled_as_test_selected_or_trained_here(tmp_path, monkeypatch):
    """The published MTT teacher was kept at its best test accuracy: its cell says so; the
    'trained' variant trains the teacher here instead and its students read that run."""
    published = tmp_path / "teachers" / "cifar10_1_mtt_convnet" / "checkpoint_best.pth"
    published.parent.mkdir(parents=True)
    published.write_bytes(b"")  # only its existence is looked at when building cells
    monkeypatch.setenv("DISTILL_JAX_DATA", str(tmp_path))
    cells = registry.get_experiment("mtt_cifar10_jpeg_1_resnet18", tmp_path / "run")
    assert (cells[0].role, cells[0].config.evaluate.path) == (Role.IMPORT, str(published))
    assert "selected on the test set" in cells[0].label
    own = registry.get_experiment("mtt_cifar10_jpeg_1_resnet18", tmp_path / "run", teacher="trained")
    assert own[0].role is Role.TEACHER and "trained here, final epoch" in own[0].label
    assert (own[0].config.mode, own[0].config.model.name, own[0].config.model.norm) == (
        "teacher",
        "convnet",
        "instance",
    )
    full = {c.name: c for c in own}["full"]
    assert full.config.train.kd.teacher_path == str(tmp_path / "run" / "teacher")
    with pytest.raises(recipes.ExperimentError, match=r"teacher source 'best'.*'auto', 'trained'"):
        registry.get_experiment("mtt_cifar10_jpeg_1_resnet18", tmp_path / "run", teacher="best")


def test_a_cell_takes_a_role_not_a_string():
    config = recipes.teacher_config("frepo", "cifar10", 1)
    assert registry.Cell("teacher", "Teacher", config, Role.TEACHER).role is Role.TEACHER
    with pytest.raises(TypeError, match=r"cell 'teacher': role 'teacher'; expected a Role, one of Role.TEACHER, "):
        registry.Cell("teacher", "Teacher", config, "teacher")


def test_a_table_with_an_imported_teacher_says_it_was_selected_on_the_test_set():
    trained = [{"role": "teacher"}, {"role": "student"}]
    assert reproduce.teacher_note(trained) == ""
    note = reproduce.teacher_note([{"role": "import"}, {"role": "student"}])
    assert "best test accuracy" in note and "test-set selection" in note and "reproduce.teacher=trained" in note
