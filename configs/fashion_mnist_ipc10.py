"""The offline main job: a ConvNet on 10 real images per class of Fashion-MNIST.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` (no download). Three seeds are
trained together; the result is the last-epoch test accuracy as mean ± std.
"""
from distill_jax.config import default_config


def get_config():
    c = default_config()
    c.num_seeds = 3
    c.data.dataset = "fashion_mnist"
    c.data.per_class = 10
    c.model.name = "convnet"
    c.model.width = 64
    c.train.epochs = 300
    c.train.optimizer = "lion"
    c.train.learning_rate = 5e-5
    c.train.lr_schedule = "warmup_cosine"
    c.train.augment.k = 2
    c.eval_every_epochs = 50
    c.log_every_steps = 50
    return c
