"""Mode 'distill': produce a distilled set (DM by default, FRePo by --config.distill.method=frepo).

One builder for every dataset and IPC: `get_config("<dataset>,<ipc>")`, for example
`--config configs/distill.py:cifar10_jpeg,50`; the files `configs/distill_<dataset>_ipc<n>.py`
are this builder with the argument fixed (no argument: Fashion-MNIST at IPC 10). The
settings live in `distill_jax.experiments.recipes.distill_config`, shared with the
pipeline experiments of mode 'reproduce':

* Fashion-MNIST (Debian's `dataset-fashion-mnist`, offline) is sized for a 2-core CPU:
  narrower networks (ConvNet width 32; ConvNet-FRePo widths 32/64/128), smaller real
  batches and a few hundred steps; no flips in DSA (FRePo's choice for MNIST-like data).
* CIFAR-10 and CIFAR-100 keep the papers' settings (width 128, DM: 20k steps of 256 real
  images per class, SGD lr 1; FRePo: batches of 1024 real images, LAMB lr 3e-4, a pool of
  10 models reset after 100 updates): sized for an accelerator. The CIFAR-10 files read
  the offline CIFAR-10 (JPEG) copy (`cifar10_jpeg`); `--config.data.dataset=cifar10` reads
  the original through tensorflow-datasets. On a CPU lower the budget on the command line
  (docs/results.md lists the commands used for the measured sets).
"""
from distill_jax.experiments import recipes

DATASETS = recipes.DISTILL_DATASETS


def get_config(arg: str = "fashion_mnist,10"):
    dataset, _, ipc = arg.partition(",")
    if dataset not in DATASETS or not ipc.isdigit() or int(ipc) < 1:
        raise ValueError(f"configs/distill.py: argument must be '<dataset>,<images per class>' with dataset in "
                         f"{DATASETS}, got {arg!r}")
    return recipes.distill_config(dataset, int(ipc))
