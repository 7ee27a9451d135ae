"""Small builders the tests share: synthetic labelled data and dotted config overrides."""
import numpy as np

from distill_jax import config as config_lib
from distill_jax.data import pipeline, preprocess


def override(config, **fields):
    """Sets dotted fields ('train.kd.alpha': 0.7) on a ConfigDict; returns it."""
    for key, value in fields.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def synthetic_data(per_class=4, classes=4, size=8, channels=1, test_per_class=2, shift=0.5, seed=0):
    """Gaussian images whose mean grows with the class (learnable in a few steps), already in
    their pixel space ('none' preprocessing)."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = np.repeat(np.arange(classes), n)
        images = rng.normal(size=(len(labels), size, size, channels)).astype(np.float32)
        return images + labels[:, None, None, None] * shift, labels

    train_images, train_labels = split(per_class)
    test_images, test_labels = split(test_per_class)
    prep = preprocess.fit("none", np.zeros((2, size, size, channels), np.float32))
    return pipeline.TrainingData(train_images, train_labels, test_images, test_labels, classes, prep, "synthetic")


def tiny_run_config(**fields):
    """A two-seed ConvNet run on `synthetic_data()`: 3 epochs of 2 steps, logged, evaluated and
    checkpointed every epoch; `fields` override it."""
    c = config_lib.default_config()
    c.num_seeds, c.model.width, c.model.depth, c.model.norm = 2, 4, 2, "batch"
    c.train.epochs, c.train.batch_size, c.train.augment.k = 3, 8, 1
    c.eval_every_epochs = c.checkpoint_every_epochs = c.log_every_steps = 1
    return override(c, **fields)
