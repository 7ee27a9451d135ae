"""Named experiments: lists of cells, each one run of an experiment and one row of its table.

An experiment builder turns a few names (set, network, scale) into cells whose configs come
from `recipes`, so `reproduce` runs exactly the configs a user would launch by hand. Names
follow `experiment_names()`; `register_experiment` adds one's own (`unregister_experiment` removes it).
"""
from __future__ import annotations

import copy
import dataclasses
import pathlib

import ml_collections

from distill_jax import models
from distill_jax.distillation import distill_mode
from distill_jax.experiments import recipes
from distill_jax.report.results_record import Role
from distill_jax.training import workdir_io


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of an experiment: `name` is its sub-workdir, `label` its table row, `role` what it
    is (a `Role`: a teacher, a student, an imported or scored network, a distillation)."""
    name: str
    label: str
    config: ml_collections.ConfigDict
    role: Role

    def __post_init__(self):
        if not isinstance(self.role, Role):
            raise TypeError(f"cell {self.name!r}: role {self.role!r}; expected a Role, one of "
                            f"{', '.join('Role.' + r.name for r in Role)}")


@dataclasses.dataclass(frozen=True)
class Scale:
    """How `reproduce` shrinks an experiment for a small machine (1 / 1.0 / 0 = the paper's)."""
    epoch_divisor: int = 1
    lr_multiplier: float = 1.0
    width: int = 0
    teacher_width: int = 0
    evals: int = 0

    @classmethod
    def from_config(cls, config) -> "Scale":
        r = config.reproduce
        return cls(int(r.epoch_divisor), float(r.lr_multiplier), int(r.width), int(r.teacher_width), int(r.evals))


def _scaled(c, scale: Scale, teacher: bool):
    return recipes.scale_config(c, epoch_divisor=scale.epoch_divisor, lr_multiplier=scale.lr_multiplier,
                        width=scale.teacher_width if teacher else scale.width, evals=scale.evals)


def teacher_dir(workdir, split_seeds: bool, seed: int) -> str:
    """The workdir a student's KD reads: the teacher cell (its first seed is used)."""
    base = pathlib.Path(workdir) / "teacher"
    return str(workdir_io.seed_dir(base, seed)) if split_seeds else str(base)


# Where a paper experiment's KD teacher comes from: 'auto' imports the published one where it
# exists (MTT), else trains it; 'trained' always trains it here (mode 'teacher', final epoch).
TEACHER_SOURCES = ("auto", "trained")
# The published teachers were kept by the reference code at their best test accuracy.
PUBLISHED_TEACHER_LABEL = "Teacher (published ConvNet, kept at its best test accuracy: selected on the test set)"


def paper_experiment(model: str, method: str, dataset: str, ipc: int, workdir, scale: Scale = Scale(), *,
                     split_seeds: bool = False, num_seeds: int = 3, seed: int = 0,
                     teacher: str = "auto") -> list[Cell]:
    """Teacher (the published .pth imported and scored, or trained here) then the five columns."""
    recipes.check_choice(teacher, TEACHER_SOURCES, "teacher source", "experiments.paper_experiment")
    shared = recipes.default_teacher_path(method, dataset, ipc)
    cells = []
    if shared.endswith(".pth") and teacher == "auto":
        c = recipes.teacher_config(method, dataset, ipc, num_seeds=1)
        c.mode = "evaluate"
        c.evaluate.path = shared
        cells.append(Cell("teacher", PUBLISHED_TEACHER_LABEL, c, Role.IMPORT))
        teacher_path = str(pathlib.Path(workdir) / "teacher")  # imported there as a run of this project
    else:
        c = _scaled(recipes.teacher_config(method, dataset, ipc, num_seeds=num_seeds), scale, teacher=True)
        cells.append(Cell("teacher", f"Teacher ({c.model.name}, trained here, final epoch)", c, Role.TEACHER))
        teacher_path = teacher_dir(workdir, split_seeds, seed)
    for variant in recipes.VARIANTS:
        c = recipes.paper_config(model, method, dataset, ipc, variant, teacher_path=teacher_path, num_seeds=num_seeds)
        cells.append(
            Cell(variant, f"{model} {recipes.VARIANT_LABELS[variant]}", _scaled(c, scale, teacher=False), Role.STUDENT)
        )
    return cells


def realsubset_experiment(dataset: str, per_class: int, workdir, scale: Scale = Scale(), *, model: str = "resnet18",
                          split_seeds: bool = False, num_seeds: int = 3, seed: int = 0) -> list[Cell]:
    """ConvNet, then the test network as Baseline and with DropPath + KD from that ConvNet."""
    teacher_path = teacher_dir(workdir, split_seeds, seed)
    cells = [
        Cell(
            "teacher",
            "ConvNet",
            _scaled(recipes.realsubset_config(dataset, per_class, "convnet", num_seeds=num_seeds), scale, teacher=True),
            Role.TEACHER,
        )
    ]
    for variant in ("baseline", "dp_kd"):
        c = recipes.realsubset_config(
            dataset, per_class, variant, model=model, teacher_path=teacher_path, num_seeds=num_seeds
        )
        cells.append(
            Cell(
                variant, f"{model} {recipes.REALSUBSET_LABELS[variant]}", _scaled(c, scale, teacher=False), Role.STUDENT
            )
        )
    return cells


def pipeline_experiment(distiller: str, dataset: str, ipc: int, model: str, workdir, scale: Scale = Scale(), *,
                        split_seeds: bool = False, num_seeds: int = 3, seed: int = 0) -> list[Cell]:
    """The whole pipeline on one dataset: distil a set (DM or FRePo), train the distiller's
    ConvNet on it (the KD teacher), then the test network as Baseline and Full, with a ConvNet
    on a random real subset of the same size as the yardstick for the set itself.

    The distillation keeps its own step budget (`recipes.distill_config`); `scale` shortens the
    trainings as in the paper's experiments.
    """
    where = f"experiment pipeline_{distiller}_{dataset}_{ipc}_{model}"
    recipes.check_choice(distiller, recipes.DISTILLERS, "distillation method", where)
    recipes.check_choice(model, recipes.TEST_NETWORKS, "test network", where)
    workdir = pathlib.Path(workdir)
    dc = recipes.distill_config(dataset, ipc, distiller)
    set_path = str(workdir / "distill" / "distilled.npz")
    cells = [Cell("distill", f"{recipes.DISTILLER_LABELS[distiller]} set", dc, Role.DISTILL)]
    # The distiller's own network family: the instance-norm ConvNet of DM (as for MTT sets),
    # ConvNet-FRePo for FRePo; students take the norm of the set's source (docs/method.md §3).
    family = "frepo" if distiller == "frepo" else "mtt"
    teacher = recipes.base_config(dataset, num_seeds)
    recipes.use_own_set(teacher, dataset, set_path)
    teacher = _scaled(recipes.teacher_recipe(teacher, family, dataset), scale, teacher=True)
    cells.append(Cell("teacher", f"{teacher.model.name} on the {recipes.DISTILLER_LABELS[distiller]} set (KD teacher)",
                      teacher, Role.TEACHER))
    real = copy.deepcopy(teacher)  # the distiller's network and norm: a yardstick for the set, not the norm
    real.mode = "train"
    real.data.source, real.data.per_class, real.data.distilled_path = "real", ipc, ""
    real.data.preprocessing = distill_mode.pixel_space(dc)  # the set's own pixel space
    cells.append(Cell("real_subset", f"{teacher.model.name} on {ipc} random real images/class", real, Role.STUDENT))
    teacher_path = teacher_dir(workdir, split_seeds, seed)
    for variant in ("baseline", "full"):
        c = recipes.base_config(dataset, num_seeds)
        c.mode = "student"
        recipes.use_own_set(c, dataset, set_path)
        c.model.name = model
        c.model.norm = models.norm_for_set(distiller)
        recipes.apply_variant(c, variant, model, teacher_path)
        cells.append(
            Cell(variant, f"{model} {recipes.VARIANT_LABELS[variant]}", _scaled(c, scale, teacher=False), Role.STUDENT)
        )
    return cells


# name -> builder(workdir, scale, *, split_seeds, num_seeds, seed) -> list[Cell]
_REGISTERED: dict = {}


def register_experiment(name: str, builder) -> None:
    """Adds an experiment of one's own; `builder(workdir, scale, *, split_seeds, num_seeds, seed)`
    returns its cells (teachers first). Registered names take precedence over the built-in ones."""
    if not name or "/" in name:
        raise recipes.ExperimentError(f"experiments.register_experiment: bad name {name!r}")
    _REGISTERED[name] = builder


def unregister_experiment(name: str) -> None:
    """Removes an experiment `register_experiment` added (the registry is the process's: a test or
    a notebook that registered one for a while takes it out again)."""
    if name not in _REGISTERED:
        raise recipes.ExperimentError(f"experiments.unregister_experiment: {name!r} is not registered; "
                                      f"registered: {sorted(_REGISTERED)}")
    del _REGISTERED[name]


def experiment_names() -> list[str]:
    """Every named experiment: '<method>_<dataset>_<ipc>_<model>' (published sets),
    'realsubset_<dataset>_<n>_<model>' and 'pipeline_<dm|frepo>_<dataset>_<ipc>_<model>' (sets made here)."""
    names = sorted(_REGISTERED) + [
        f"{m}_{d}_{i}_{n}"
        for m in recipes.METHODS
        for d in ("cifar10", "cifar10_jpeg", "cifar100", "tiny_imagenet")
        for i in recipes.IPCS
        for n in recipes.TEST_NETWORKS
    ]
    names += [f"realsubset_{d}_{n}_{m}" for d in ("fashion_mnist", "cifar10", "cifar10_jpeg") for n in (10, 100)
              for m in ("resnet18", "resnet50")]
    names += [
        f"pipeline_{m}_{d}_{i}_{n}"
        for m in recipes.DISTILLERS
        for d in recipes.DISTILL_DATASETS
        for i in recipes.IPCS
        for n in recipes.TEST_NETWORKS
    ]
    return names


def get_experiment(name: str, workdir, scale: Scale = Scale(), *, split_seeds: bool = False,
                   num_seeds: int = 3, seed: int = 0, teacher: str = "auto") -> list[Cell]:
    """The cells of experiment `name` (see `experiment_names()`), with teacher paths inside `workdir`;
    `teacher` ('auto' or 'trained') says where a paper experiment's KD teacher comes from."""
    if name in _REGISTERED:
        cells = _REGISTERED[name](workdir, scale, split_seeds=split_seeds, num_seeds=num_seeds, seed=seed)
        return _with_seed(cells, seed)
    parts = name.split("_")
    kind = parts[0] if parts[0] in ("realsubset", "pipeline") else "paper"
    first = 2 if kind == "pipeline" else 1  # index of the dataset's first part
    try:
        model, number, dataset = parts[-1], int(parts[-2]), "_".join(parts[first:-2])
    except (IndexError, ValueError):
        dataset = ""
    if not dataset:
        raise recipes.ExperimentError(
            f"experiment name {name!r} is not of the form <method>_<dataset>_<ipc>_<model>, "
            f"realsubset_<dataset>_<per_class>_<model> or pipeline_<dm|frepo>_<dataset>_<ipc>_<model>, "
            f"e.g. frepo_cifar10_10_resnet18"
        )
    where = f"experiment {name!r}"
    common = dict(split_seeds=split_seeds, num_seeds=num_seeds, seed=seed)
    if kind == "realsubset":
        recipes.check_choice(dataset, recipes.DATASETS, "dataset", where)
        recipes.check_choice(model, recipes.TEST_NETWORKS, "test network", where)
        cells = realsubset_experiment(dataset, number, workdir, scale, model=model, **common)
    elif kind == "pipeline":
        recipes.check_choice(dataset, recipes.DISTILL_DATASETS, "dataset", where)
        cells = pipeline_experiment(parts[1], dataset, number, model, workdir, scale, **common)
    else:
        recipes.check_choice(parts[0], recipes.METHODS, "distillation method", where)
        recipes.check_choice(dataset, recipes.DATASETS, "dataset", where)
        cells = paper_experiment(model, parts[0], dataset, number, workdir, scale, teacher=teacher, **common)
    return _with_seed(cells, seed)


def _with_seed(cells: list[Cell], seed: int) -> list[Cell]:
    for cell in cells:
        cell.config.seed = seed
    return cells
