"""The README's main job: the whole pipeline offline on Fashion-MNIST at 10 images per class.

    python launch/main.py --config configs/pipeline.py --workdir workdirs/pipeline          # DM
    python launch/main.py --config configs/pipeline.py:frepo --workdir workdirs/pipeline_frepo

Cells, in order (each in `<workdir>/<cell>`, resumable): distil the set (DM, 300 steps; FRePo
with the argument `frepo`), train the distiller's ConvNet on it (3 seeds; the KD teacher),
a ConvNet on 10 random real images per class (the yardstick for the set), then ResNet-18
with the paper's Baseline recipe and with the Full method (DropPath schedule, improved
shortcut, KD, Lion + periodic lr, 2-op DSA). Prints the comparison table at the end
(`<workdir>/table.md`).

Sized to finish in under 30 minutes on a 2-core CPU: the trainings are the paper's
schedules divided by 20 (Baseline 50 epochs, Full 200, same phases; peak lr x 20), ResNet-18
at width 16 (16-128 channels, depth kept), ConvNets at the distiller's width 32. Remove the
scaling on an accelerator: --config.reproduce.epoch_divisor=1 --config.reproduce.lr_multiplier=1
--config.reproduce.width=0 --config.reproduce.teacher_width=0.
Other datasets: --config.reproduce.experiment=pipeline_<dm|frepo>_<dataset>_<ipc>_<network>.
"""
from distill_jax.config import default_config
from distill_jax.experiments.recipes import DISTILLERS


def get_config(arg: str = "dm"):
    if arg not in DISTILLERS:
        raise ValueError(f"configs/pipeline.py: argument must be one of {DISTILLERS}, got {arg!r}")
    c = default_config()
    c.mode = "reproduce"
    c.num_seeds = 3
    r = c.reproduce
    r.experiment = f"pipeline_{arg}_fashion_mnist_10_resnet18"
    r.epoch_divisor = 20
    r.lr_multiplier = 20.0
    r.width = 16
    r.teacher_width = 32
    r.evals = 2
    return c
