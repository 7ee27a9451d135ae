"""A test network on a distilled set, as one column of the paper's main table (docs/method.md §2.7).

    python launch/main.py --config configs/paper.py:resnet18,frepo,cifar10,10,full --workdir <dir>

The argument is "<network>,<method>,<dataset>,<ipc>,<variant>":
network resnet18 | resnet50 | vgg11 | alexnet; method frepo | mtt; dataset cifar10 |
cifar10_jpeg | cifar100 | tiny_imagenet; ipc 1 | 10 | 50; variant baseline | no_dp_kd | no_dp |
no_kd | full. The KD teacher is read from train.kd.teacher_path (default ./teachers/<set>, or
the shared MTT teacher when it exists); train one with configs/teacher.py first.
"""
from distill_jax.experiments import recipes

DEFAULT = "resnet18,frepo,cifar10,10,full"


def get_config(arg: str = DEFAULT):
    parts = arg.split(",")
    if len(parts) != 5:
        raise ValueError(f"configs/paper.py: argument {arg!r} must be '<network>,<method>,<dataset>,<ipc>,<variant>', "
                         f"e.g. {DEFAULT!r}")
    model, method, dataset, ipc, variant = parts
    return recipes.paper_config(model, method, dataset, int(ipc), variant)
