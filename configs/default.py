"""The default configuration. The schema is code in the package
(`distill_jax.defaults.default_config`); config files anywhere start from it:

    from distill_jax.config import default_config

    def get_config():
        c = default_config()
        c.train.epochs = 300
        return c
"""
from distill_jax.defaults import default_config


def get_config():
    return default_config()
