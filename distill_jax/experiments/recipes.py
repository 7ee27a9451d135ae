"""The paper's configurations: plain functions from a few names to a complete config.

A *cell* is one training (or evaluation) run: one row of an experiment's table. The
builders here are plain functions from a few names to a complete config, so that the
config files in `configs/` stay thin and the experiments of `reproduce` mode use exactly
the configs a user would launch by hand.

The five configurations of docs/method.md §2.7 are `VARIANTS`; `scale_config` shortens a schedule
by an integer factor (every epoch count divided, same phase structure) for machines that
cannot run 4000 epochs.
"""
from __future__ import annotations

import pathlib
from typing import Optional

import ml_collections

from distill_jax import config as config_lib
from distill_jax import models
from distill_jax.data import datasets
from distill_jax.distillation import common as distill_common
from distill_jax.distillation import distill_mode
from distill_jax.errors import UserError

# docs/method.md §2.7 column names, in table order.
VARIANTS = ("baseline", "no_dp_kd", "no_dp", "no_kd", "full")
VARIANT_LABELS = {"baseline": "Baseline", "no_dp_kd": "w/o DP & KD", "no_dp": "w/o DP",
                  "no_kd": "w/o KD", "full": "Full"}
TEST_NETWORKS = ("resnet18", "resnet50", "vgg11", "alexnet")
METHODS = ("frepo", "mtt")
IPCS = (1, 10, 50)

# Each dataset's sizes: classes, image side, the depth the distillers' ConvNets use at that side.
DATASETS = {
    "cifar10": {"num_classes": 10, "image_size": 32, "convnet_depth": 3, "distilled_prefix": "cifar10"},
    "cifar10_jpeg": {"num_classes": 10, "image_size": 32, "convnet_depth": 3, "distilled_prefix": "cifar10"},
    "cifar100": {"num_classes": 100, "image_size": 32, "convnet_depth": 3, "distilled_prefix": "cifar100"},
    "tiny_imagenet": {"num_classes": 200, "image_size": 64, "convnet_depth": 4, "distilled_prefix": "tiny_imagenet"},
    "fashion_mnist": {"num_classes": 10, "image_size": 28, "convnet_depth": 3, "distilled_prefix": "fashion_mnist"},
}

TEACHER_ROOT = pathlib.Path("teachers")  # relative: teachers trained by `configs/teacher.py` live in ./teachers/<set>


class ExperimentError(UserError, ValueError):
    """An experiment or configuration name is not known, or its parts do not fit together."""


def check_choice(value, allowed, what: str, where: str):
    if value not in allowed:
        raise ExperimentError(f"{where}: {what} {value!r} is not known; allowed: {tuple(allowed)}")


def set_name(method: str, dataset: str, ipc: int) -> str:
    """'cifar10_10_frepo': the name of a distilled set (and of its teacher)."""
    return f"{DATASETS[dataset]['distilled_prefix']}_{ipc}_{method}"


def distilled_path(method: str, dataset: str, ipc: int) -> str:
    """A published set in the data root: <data root>/distilled/<set>."""
    return str(datasets.data_root() / "distilled" / set_name(method, dataset, ipc))


def default_teacher_path(method: str, dataset: str, ipc: int) -> str:
    """Where a student looks for its KD teacher: the published MTT teacher if the data root holds
    one (<data root>/teachers/<set>_convnet/checkpoint_best.pth), else ./teachers/<set> (the
    workdir `configs/teacher.py` suggests)."""
    name = set_name(method, dataset, ipc)
    shared = datasets.data_root() / "teachers" / f"{name}_convnet" / "checkpoint_best.pth"
    if method == "mtt" and shared.is_file():
        return str(shared)
    return str(TEACHER_ROOT / name)


def base_config(dataset: str, num_seeds: int = 3) -> ml_collections.ConfigDict:
    c = config_lib.default_config()
    c.num_seeds = num_seeds
    c.data.dataset = dataset
    return c


# Pixel space of the sets published with the paper's reference code. Its FRePo sets were
# re-saved in the reference code's own ZCA (MTT's: raw [0, 1] pixels, absolute eps 0.1):
# measured on cifar10_10_frepo against real *training* images only, the set's pixel std
# (0.267) and mean per-image L2 norm (14.40) match zca_mtt (0.265, 14.27), not zca_frepo
# (0.467, 24.97) nor standardize (1.069, 57.8). See docs/results.md.
REFERENCE_SET_PREPROCESSING = {"frepo": "zca_mtt", "mtt": "zca_mtt"}


def _distilled_data(c, method: str, dataset: str, ipc: int):
    c.data.source = "distilled"
    c.data.per_class = 0
    c.data.distilled_path = distilled_path(method, dataset, ipc)
    c.data.preprocessing = REFERENCE_SET_PREPROCESSING[method]


def convnet_depth(dataset: str) -> int:
    """The ConvNets' depth on `dataset`: 4 on 64-px images (Tiny-ImageNet), else 3."""
    return DATASETS.get(dataset, {}).get("convnet_depth", 3)


def teacher_model(c, method: str, dataset: str):
    """The distiller's training network: ConvNet-FRePo (batch norm) for FRePo sets, the
    instance-norm ConvNet for MTT (and DM) sets; depth 4 on 64 px images."""
    c.model.name = "convnet_frepo" if method == "frepo" else "convnet"
    if convnet_depth(dataset) != 3:  # 3 is the networks' default
        c.model.depth = convnet_depth(dataset)
    c.model.norm = models.norm_for_set(method)


def _lion_cosine(c, epochs: int = 1000):
    t = c.train
    t.optimizer, t.learning_rate, t.weight_decay = "lion", 5e-5, 5e-3
    t.lr_schedule, t.warmup_fraction, t.epochs = "warmup_cosine", 0.1, epochs
    t.augment.k = 2


def apply_variant(c, variant: str, model: str, teacher_path: str):
    """Sets the optimiser, schedules, augmentation, KD and DropPath of one docs/method.md §2.7 column."""
    check_choice(variant, VARIANTS, "variant", "experiments.apply_variant")
    t = c.train
    if model.startswith("resnet"):
        c.model.improved_shortcut = True
    c.model.droppath = variant in ("no_kd", "full")
    if variant == "baseline":
        t.optimizer, t.learning_rate, t.weight_decay = "adamw", 5e-4, 5e-4
        t.lr_schedule, t.decay_at_fraction, t.epochs = "step", 0.5, 1000
        t.augment.k = 1
    elif variant in ("no_dp_kd", "no_dp"):
        _lion_cosine(c, 1000)
    else:
        _lion_cosine(c, 4000)
        t.lr_schedule, t.cycle_epochs, t.warmup_epochs = "periodic", 1000, 100
        t.keep_rate.enabled = True
        t.keep_rate.period_epochs = 500
        if model == "resnet50":
            t.keep_rate.step, t.keep_rate.min, t.keep_rate.final = 0.13, 0.35, 0.8
        else:
            t.keep_rate.step, t.keep_rate.min, t.keep_rate.final = 0.1, 0.5, 0.8
    t.kd.enabled = variant in ("no_dp", "full")
    t.kd.teacher_path = teacher_path if t.kd.enabled else ""
    c.eval_every_epochs = 100
    c.checkpoint_every_epochs = 100
    return c


def _check_published_set(method: str, dataset: str, ipc: int, where: str) -> None:
    check_choice(method, METHODS, "distillation method", where)
    check_choice(dataset, DATASETS, "dataset", where)
    check_choice(ipc, IPCS, "images per class", where)


def paper_config(model: str, method: str, dataset: str, ipc: int, variant: str, *,
                 teacher_path: Optional[str] = None, num_seeds: int = 3) -> ml_collections.ConfigDict:
    """A test network trained on a distilled set as one column of the paper's main table."""
    where = "experiments.paper_config"
    check_choice(model, TEST_NETWORKS, "test network", where)
    _check_published_set(method, dataset, ipc, where)
    c = base_config(dataset, num_seeds)
    c.mode = "student"
    _distilled_data(c, method, dataset, ipc)
    c.model.name = model
    c.model.norm = models.norm_for_set(method)  # batch for FRePo sets, instance for MTT (docs/method.md §3)
    apply_variant(c, variant, model, teacher_path or default_teacher_path(method, dataset, ipc))
    return c


def teacher_config(method: str, dataset: str, ipc: int, *, num_seeds: int = 1) -> ml_collections.ConfigDict:
    """The distiller's ConvNet trained on its own set (KD teacher), with the recipe of
    'w/o DP & KD' (Lion, warm-up + cosine, 2 DSA ops, 1000 epochs)."""
    _check_published_set(method, dataset, ipc, "experiments.teacher_config")
    c = base_config(dataset, num_seeds)
    _distilled_data(c, method, dataset, ipc)
    return teacher_recipe(c, method, dataset)


def teacher_recipe(c, family: str, dataset: str):
    """Mode 'teacher' with the distiller's network (`family` 'frepo' or 'mtt') and the recipe of
    'w/o DP & KD' (Lion, warm-up + cosine, 2 DSA ops, 1000 epochs, evaluated every 100)."""
    c.mode = "teacher"
    teacher_model(c, family, dataset)
    _lion_cosine(c, 1000)
    c.eval_every_epochs = c.checkpoint_every_epochs = 100
    return c


REALSUBSET_VARIANTS = ("convnet", "baseline", "dp_kd")
REALSUBSET_LABELS = {"convnet": "ConvNet", "baseline": "Baseline", "dp_kd": "DropPath + KD"}


def realsubset_config(dataset: str, per_class: int, variant: str, *, model: str = "resnet18",
                      teacher_path: Optional[str] = None, num_seeds: int = 3) -> ml_collections.ConfigDict:
    """The real-subset experiment: `per_class` real images per class, standardised.

    'convnet' is the small network (recipe of 'w/o DP & KD', also the KD teacher), 'baseline'
    the test network with the Baseline recipe, 'dp_kd' the test network with the Full recipe
    (DropPath schedule + KD from the ConvNet of the same subset).
    """
    where = "experiments.realsubset_config"
    check_choice(variant, REALSUBSET_VARIANTS, "real-subset variant", where)
    check_choice(dataset, DATASETS, "dataset", where)
    if not (isinstance(per_class, int) and per_class > 0):
        raise ExperimentError(f"{where}: per_class must be a positive int, got {per_class!r}")
    c = base_config(dataset, num_seeds)
    c.data.source = "real"
    c.data.per_class = per_class
    c.model.norm = models.norm_for_set("real")  # every network of a real subset: batch norm
    if variant == "convnet":
        c.mode = "teacher"
        c.model.name = "convnet"
        if DATASETS[dataset]["convnet_depth"] != 3:
            c.model.depth = DATASETS[dataset]["convnet_depth"]
        _lion_cosine(c, 1000)
        c.eval_every_epochs = 100
        c.checkpoint_every_epochs = 100
        return c
    c.mode = "student"
    c.model.name = model
    teacher = teacher_path or str(TEACHER_ROOT / f"{dataset}_real{per_class}")
    return apply_variant(c, "baseline" if variant == "baseline" else "full", model, teacher)


def scale_config(c, *, epoch_divisor: int = 1, lr_multiplier: float = 1.0, width: int = 0, evals: int = 0):
    """Shortens every epoch count by `epoch_divisor` (same phases: 4000/500/1000/100 become
    4000/d, 500/d, ...), multiplies the peak lr, sets the width (0 = keep) and, with `evals` > 0,
    evaluates every epochs // evals epochs (the last epoch is always evaluated)."""
    if not (isinstance(epoch_divisor, int) and epoch_divisor >= 1):
        raise ExperimentError(f"experiments.scale_config: epoch_divisor must be an int >= 1, got {epoch_divisor!r}")
    t = c.train
    for name in ("epochs", "cycle_epochs", "warmup_epochs"):
        value = t[name]
        if value % epoch_divisor:
            raise ExperimentError(f"experiments.scale_config: train.{name} = {value} is not divisible by "
                                  f"epoch_divisor {epoch_divisor}: the phases would shift")
        t[name] = value // epoch_divisor
    if t.keep_rate.period_epochs % epoch_divisor:
        raise ExperimentError(f"experiments.scale_config: train.keep_rate.period_epochs = {t.keep_rate.period_epochs} "
                              f"is not divisible by epoch_divisor {epoch_divisor}")
    t.keep_rate.period_epochs //= epoch_divisor
    t.learning_rate = t.learning_rate * lr_multiplier
    for name in ("eval_every_epochs", "checkpoint_every_epochs"):
        c[name] = max(1, c[name] // epoch_divisor)
    if width:
        c.model.width = width
    if evals:
        c.eval_every_epochs = max(1, t.epochs // evals)
    return c


DISTILLERS = distill_common.METHODS
DISTILLER_LABELS = distill_mode.DISPLAY_NAME
DISTILL_DATASETS = ("fashion_mnist", "cifar10_jpeg", "cifar10", "cifar100")


# Distillation sizes: "cpu" for Fashion-MNIST on a 2-core machine, "paper" (DM's and FRePo's
# published settings) for CIFAR.
_DISTILL_SIZES = {
    "cpu": {"width": 32, "steps": 300, "checkpoint_every_steps": 100, "log_every_steps": 25,
            "augment_ops": "color,crop,cutout,scale,rotate", "dm_real_per_class": 32,
            "frepo": {"real_batch_size": 256, "optimizer": "adam", "learning_rate": 3e-3,
                      "online_learning_rate": 1e-3, "pool_size": 5, "max_online_updates": 30}},
    "paper": {"width": 128, "steps": 20000, "checkpoint_every_steps": 1000, "log_every_steps": 100,
              "augment_ops": "color,crop,cutout,flip,scale,rotate", "dm_real_per_class": 256,
              "frepo": {"real_batch_size": 1024, "optimizer": "lamb", "learning_rate": 3e-4,
                        "online_learning_rate": 3e-4, "pool_size": 10, "max_online_updates": 100}},
}


def distill_config(dataset: str, ipc: int, method: str = "dm") -> ml_collections.ConfigDict:
    """Mode 'distill' for one dataset and IPC (the builder behind `configs/distill.py`).

    Fashion-MNIST is sized for a 2-core CPU (ConvNet width 32, ConvNet-FRePo 32/64/128,
    300 steps, small real batches, no flips: FRePo's choice for MNIST-like data); CIFAR keeps
    the papers' settings (width 128; DM 20k steps of 256 real images per class, SGD lr 1;
    FRePo batches of 1024, LAMB 3e-4, a pool of 10 models reset after 100 updates).
    """
    where = "experiments.distill_config"
    check_choice(dataset, DISTILL_DATASETS, "dataset", where)
    check_choice(method, DISTILLERS, "distillation method", where)
    if not (isinstance(ipc, int) and ipc >= 1):
        raise ExperimentError(f"{where}: images per class must be an int >= 1, got {ipc!r}")
    c = config_lib.default_config()
    c.mode = "distill"
    c.data.dataset = dataset
    d = c.distill
    d.method, d.ipc, d.init, d.augment_k = method, ipc, "real", 1
    d.dm.learning_rate, d.dm.momentum = 1.0, 0.5
    sizes = _DISTILL_SIZES["cpu" if dataset == "fashion_mnist" else "paper"]
    d.width, d.steps, d.checkpoint_every_steps, d.augment_ops = (
        sizes["width"], sizes["steps"], sizes["checkpoint_every_steps"], sizes["augment_ops"])
    d.dm.real_per_class = sizes["dm_real_per_class"]
    for name, value in sizes["frepo"].items():
        d.frepo[name] = value
    c.log_every_steps = sizes["log_every_steps"]
    return c


def use_own_set(c, dataset: str, set_path: str):
    c.data.dataset = dataset
    c.data.source = "distilled"
    c.data.per_class = 0
    c.data.distilled_path = set_path
    c.data.preprocessing = "auto"  # the recipe the distiller stored with the set
