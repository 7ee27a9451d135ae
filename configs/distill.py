"""Mode 'distill': produce a distilled set (DM by default, FRePo by --config.distill.method=frepo).

One builder for every dataset and IPC: `get_config("<dataset>,<ipc>")`, for example
`--config configs/distill.py:cifar10_jpeg,50`; the files `configs/distill_<dataset>_ipc<n>.py`
are this builder with the argument fixed (no argument: Fashion-MNIST at IPC 10).

* Fashion-MNIST (Debian's `dataset-fashion-mnist`, offline) is sized for a 2-core CPU:
  narrower networks (ConvNet width 32; ConvNet-FRePo widths 32/64/128), smaller real
  batches and a few hundred steps; no flips in DSA (FRePo's choice for MNIST-like data).
* CIFAR-10 and CIFAR-100 keep the papers' settings (width 128, DM: 20k steps of 256 real
  images per class, SGD lr 1; FRePo: batches of 1024 real images, LAMB lr 3e-4, a pool of
  10 models reset after 100 updates): sized for an accelerator. The CIFAR-10 files read
  the offline CIFAR-10 (JPEG) copy (`cifar10_jpeg`); `--config.data.dataset=cifar10` reads
  the original through tensorflow-datasets. On a CPU lower the budget on the command line
  (docs/results_distillation.md lists the commands used for the measured sets).
"""
from configs import default

DATASETS = ("fashion_mnist", "cifar10_jpeg", "cifar10", "cifar100")


def get_config(arg: str = "fashion_mnist,10"):
    dataset, _, ipc = arg.partition(",")
    if dataset not in DATASETS or not ipc.isdigit() or int(ipc) < 1:
        raise ValueError(f"configs/distill.py: argument must be '<dataset>,<images per class>' with dataset in "
                         f"{DATASETS}, got {arg!r}")
    c = default.get_config()
    c.mode = "distill"
    c.data.dataset = dataset
    d = c.distill
    d.method = "dm"
    d.ipc = int(ipc)
    d.init = "real"
    d.augment_k = 1
    d.dm.learning_rate = 1.0
    d.dm.momentum = 0.5
    if dataset == "fashion_mnist":
        d.width = 32
        d.steps = 300
        d.checkpoint_every_steps = 100
        d.augment_ops = "color,crop,cutout,scale,rotate"
        d.dm.real_per_class = 32
        d.frepo.real_batch_size = 256
        d.frepo.optimizer = "adam"
        d.frepo.learning_rate = 3e-3
        d.frepo.online_learning_rate = 1e-3
        d.frepo.pool_size = 5
        d.frepo.max_online_updates = 30
        c.log_every_steps = 25
    else:
        d.width = 128
        d.steps = 20000
        d.checkpoint_every_steps = 1000
        d.augment_ops = "color,crop,cutout,flip,scale,rotate"
        d.dm.real_per_class = 256
        d.frepo.real_batch_size = 1024
        d.frepo.optimizer = "lamb"
        d.frepo.learning_rate = 3e-4
        d.frepo.online_learning_rate = 3e-4
        d.frepo.pool_size = 10
        d.frepo.max_online_updates = 100
        c.log_every_steps = 100
    return c
