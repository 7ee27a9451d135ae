"""distill_jax: training on distilled datasets without architecture overfitting."""

__version__ = "0.1.0"
