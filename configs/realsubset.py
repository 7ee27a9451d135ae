"""The real-subset experiment: a few real images per class, ConvNet vs a test network.

    python launch/main.py --config configs/realsubset.py:fashion_mnist,10,convnet \
        --workdir teachers/fashion_mnist_real10
    python launch/main.py --config configs/realsubset.py:fashion_mnist,10,dp_kd,resnet18 --workdir <dir>

The argument is "<dataset>,<per_class>,<variant>[,<network>]": variant convnet (the small
network, also the KD teacher), baseline, or dp_kd (DropPath schedule + KD from the ConvNet,
read from train.kd.teacher_path, default ./teachers/<dataset>_real<per_class>).
"""
from distill_jax.experiments import recipes

DEFAULT = "fashion_mnist,10,dp_kd,resnet18"


def get_config(arg: str = DEFAULT):
    parts = arg.split(",")
    if len(parts) not in (3, 4):
        raise ValueError(
            f"configs/realsubset.py: argument {arg!r} must be '<dataset>,<per_class>,<variant>[,<network>]', "
            f"e.g. {DEFAULT!r}"
        )
    dataset, per_class, variant = parts[:3]
    model = parts[3] if len(parts) == 4 else "resnet18"
    return recipes.realsubset_config(dataset, int(per_class), variant, model=model)
