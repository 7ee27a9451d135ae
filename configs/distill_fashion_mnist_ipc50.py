"""Distil Fashion-MNIST to 50 image(s) per class.

DM by default; --config.distill.method=frepo for FRePo. Settings: configs/distill.py.
"""
from distill_jax.experiments.recipes import distill_config


def get_config():
    return distill_config("fashion_mnist", 50)
