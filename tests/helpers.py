"""Small builders the tests share: synthetic labelled data, a toy on-disk dataset and dotted
config overrides."""
import pathlib

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


def write_toy_npz_dataset(folder, classes: int = 4, size: int = 8) -> pathlib.Path:
    """Separable size x size grey images as the 'npz' dataset (train.npz: 12 a class, test.npz: 6):
    class-dependent brightness and a bright column, so a tiny network learns them in a few steps."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True)
    for split, seed, per_class in (("train", 0, 12), ("test", 1, 6)):
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(classes), per_class)
        pixels = rng.uniform(0.0, 0.4, size=(len(labels), size, size, 1)) + 0.15 * labels[:, None, None, None]
        pixels[np.arange(len(labels)), :, 2 * labels + 1, 0] += 0.3
        np.savez(folder / f"{split}.npz", image=np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8), label=labels)
    return folder
