"""Cross-architecture report for one distilled set (mode 'transfer').

    python launch/main.py --config configs/transfer.py:frepo_cifar10_jpeg_10 --workdir runs/transfer
    python launch/main.py --config configs/transfer.py --workdir runs/t \
        --config.transfer.set_path=runs/pipeline/distill/distilled.npz --config.data.dataset=fashion_mnist

The argument names a set published with the paper ('<method>_<dataset>_<ipc>', read from the
data root); without one, give `transfer.set_path` and `data.dataset`. Shorten schedules for a
small machine with `--config.reproduce.epoch_divisor=5 --config.reproduce.lr_multiplier=5`
and widths with `--config.reproduce.width=16 --config.transfer.widths=vit:64`
(`distill-jax transfer SET ...` does the same from a pip install).
"""
from distill_jax import defaults
from distill_jax.experiments import transfer


def get_config(arg: str = ""):
    if arg:
        return transfer.published_transfer_config(arg)
    c = defaults.default_config()
    c.mode = "transfer"
    return c
