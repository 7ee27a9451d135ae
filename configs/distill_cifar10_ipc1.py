"""Distil CIFAR-10 (JPEG: the offline copy; --config.data.dataset=cifar10 reads the original) to 1 image(s) per class.

DM by default; --config.distill.method=frepo for FRePo. Settings: configs/distill.py.
"""
from distill_jax.experiments.recipes import distill_config


def get_config():
    return distill_config("cifar10_jpeg", 1)
