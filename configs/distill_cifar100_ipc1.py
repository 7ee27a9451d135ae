"""Distil CIFAR-100 to 1 image(s) per class.

DM by default; --config.distill.method=frepo for FRePo. Settings: configs/distill.py.
"""
from configs import distill


def get_config():
    return distill.get_config("cifar100,1")
