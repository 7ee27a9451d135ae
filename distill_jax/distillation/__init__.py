"""Producing distilled sets in JAX: FRePo and distribution matching (DM), launcher mode 'distill'.

`distill_mode.run_distillation(config, workdir)` is the mode's entry point; the
methods themselves are pure step builders in `dm.py` and `frepo.py`, sharing the parts in
`common.py`.
"""
from distill_jax.distillation.common import DistillationError, features_and_logits
from distill_jax.distillation.dm import DMSettings, dm_loss, make_dm_step
from distill_jax.distillation.frepo import FRePoSettings, krr_loss, krr_predict, make_frepo_step

__all__ = ["DistillationError", "features_and_logits", "DMSettings", "dm_loss", "make_dm_step",
           "FRePoSettings", "krr_loss", "krr_predict", "make_frepo_step"]
