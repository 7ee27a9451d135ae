"""The distiller's ConvNet trained on its own distilled set: the KD teacher of configs/paper.py.

    python launch/main.py --config configs/teacher.py:frepo,cifar10,10 --workdir teachers/cifar10_10_frepo

The argument is "<method>,<dataset>,<ipc>" (see configs/paper.py). ConvNet-FRePo (batch norm)
for FRePo sets, the instance-norm ConvNet for MTT sets; depth 4 on Tiny-ImageNet.
"""
from distill_jax.experiments import recipes

DEFAULT = "frepo,cifar10,10"


def get_config(arg: str = DEFAULT):
    parts = arg.split(",")
    if len(parts) != 3:
        raise ValueError(f"configs/teacher.py: argument {arg!r} must be '<method>,<dataset>,<ipc>', e.g. {DEFAULT!r}")
    method, dataset, ipc = parts
    return recipes.teacher_config(method, dataset, int(ipc))
