"""Mode "reproduce": every cell of a named experiment, then its Markdown table.

    python launch/main.py --config configs/reproduce.py:frepo_cifar10_10_resnet18 --workdir runs/frepo10

Names: see distill_jax.experiments.recipes.experiment_names(). Shrink for a small machine
with --config.reproduce.epoch_divisor, .lr_multiplier, .width, .teacher_width (docs/results.md).
"""
from distill_jax.config import default_config

DEFAULT = "frepo_cifar10_jpeg_10_resnet18"


def get_config(arg: str = DEFAULT):
    c = default_config()
    c.mode = "reproduce"
    c.num_seeds = 3
    c.reproduce.experiment = arg
    return c
