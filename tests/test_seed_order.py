"""Seeds trained together draw their own data order: a vmapped run of seeds (s, s+1) equals
runs of each seed alone, on a set with several batches an epoch."""
import numpy as np

from distill_jax import config as config_lib
from distill_jax.training import loop
from helpers import synthetic_data


def _data():
    """24 images, 4 classes: with batch 8, three batches an epoch."""
    return synthetic_data(per_class=6, test_per_class=10, shift=0.4, seed=3)


def _config(seed, num_seeds):
    c = config_lib.default_config()
    c.seed, c.num_seeds = seed, num_seeds
    c.model.width, c.model.depth, c.model.norm = 4, 2, "batch"
    c.train.epochs, c.train.batch_size, c.train.learning_rate = 3, 8, 3e-3
    c.train.augment.k = 1
    c.eval_every_epochs = c.checkpoint_every_epochs = 3
    return c


def test_epoch_orders_are_per_seed_permutations():
    orders = loop.epoch_orders([5, 6], epoch=2, num_train=24)
    assert orders.shape == (2, 24)
    assert all(sorted(o) == list(range(24)) for o in orders)
    assert not np.array_equal(orders[0], orders[1])  # different seeds, different batches
    np.testing.assert_array_equal(orders[1], loop.epoch_orders([6], epoch=2, num_train=24)[0])  # alone: the same
    assert not np.array_equal(orders[0], loop.epoch_orders([5], epoch=3, num_train=24)[0])  # and a new one each epoch


def test_vmapped_seeds_equal_the_same_seeds_trained_alone(tmp_path):
    data = _data()
    together = loop.train_and_evaluate(_config(seed=5, num_seeds=2), tmp_path / "together", data=data)
    alone = [loop.train_and_evaluate(_config(seed=s, num_seeds=1), tmp_path / f"seed_{s}", data=data)
             for s in (5, 6)]
    assert together["seeds"] == [5, 6]
    per_seed = together["final_accuracy"]["per_seed"]
    assert per_seed == [run["final_accuracy"]["per_seed"][0] for run in alone]
    losses = [h["train_loss"] for h in together["history"]]
    np.testing.assert_allclose(losses, [np.mean([run["history"][i]["train_loss"] for run in alone])
                                        for i in range(len(losses))], rtol=1e-4)
