"""CIFAR ResNets (docs/method.md §3) with per-sample DropPath (§2.1) and the improved shortcut (§2.3)."""
import dataclasses
from typing import Sequence

import flax.linen as nn
import jax

from distill_jax.models.droppath import residual_droppath, sample_keep_mask
from distill_jax.models.layers import (
    TEST_NETWORK_NORM,
    ConvChoice,
    check_images,
    conv,
    dense,
    logits,
    make_norm,
    max_pool,
)


class Shortcut(nn.Module):
    """Identity when shapes agree; else conv1x1(stride s) -> norm, or with `improved`
    maxpool(s, s) -> conv1x1(stride 1) -> norm, so every input position can reach the output."""

    features: int
    strides: int = 1
    norm: str = "instance"
    improved: bool = False
    weight_init: str = "torch"
    implementation: str = dataclasses.field(kw_only=True)  # the network's resolved conv
    compute_dtype: str = dataclasses.field(default="float32", kw_only=True)  # the network's

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.strides == 1 and x.shape[-1] == self.features:
            return x
        if self.improved and self.strides > 1:
            x = conv(self.features, 1, 1, implementation=self.implementation, weight_init=self.weight_init,
                     compute_dtype=self.compute_dtype, name="conv")(max_pool(x, self.strides))
        else:
            x = conv(self.features, 1, self.strides, implementation=self.implementation, weight_init=self.weight_init,
                     compute_dtype=self.compute_dtype, name="conv")(x)
        return make_norm(self.norm, "norm", train)(x)


class ResidualBlock(nn.Module):
    """BasicBlock (conv3x3 x2) or Bottleneck (1x1, 3x3 with the stride, 1x1 to 4x features).

    out = relu(shortcut(x) + branch(x) * m / p) in training with DropPath (m ~ Bernoulli(p)
    per sample), relu(shortcut(x) + branch(x)) otherwise. In training with DropPath the block
    sows the keep rate it used into 'intermediates'/'keep_rate'.
    """

    features: int
    strides: int = 1
    bottleneck: bool = False
    norm: str = "instance"
    droppath: bool = False
    improved_shortcut: bool = False
    weight_init: str = "torch"
    implementation: str = dataclasses.field(kw_only=True)  # the network's resolved conv
    compute_dtype: str = dataclasses.field(default="float32", kw_only=True)  # the network's

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_rate=1.0) -> jax.Array:
        f, s = self.features, self.strides
        if self.bottleneck:
            layers = [(f, 1, 1), (f, 3, s), (4 * f, 1, 1)]
        else:
            layers = [(f, 3, s), (f, 3, 1)]
        branch = x
        for i, (width, kernel, strides) in enumerate(layers):
            branch = conv(width, kernel, strides, implementation=self.implementation, weight_init=self.weight_init,
                          compute_dtype=self.compute_dtype, name=f"conv_{i}")(branch)
            branch = make_norm(self.norm, f"norm_{i}", train)(branch)
            if i < len(layers) - 1:
                branch = nn.relu(branch)
        shortcut = Shortcut(branch.shape[-1], s, self.norm, self.improved_shortcut, self.weight_init,
                            implementation=self.implementation, compute_dtype=self.compute_dtype,
                            name="shortcut")(x, train)
        if not (self.droppath and train):
            return nn.relu(shortcut + branch)
        self.sow("intermediates", "keep_rate", keep_rate)
        mask = sample_keep_mask(self.make_rng("droppath"), x.shape[0], keep_rate)
        return nn.relu(residual_droppath(shortcut, branch, mask, keep_rate))


class ResNet(ConvChoice):
    """CIFAR ResNet: stem conv3x3 width -> norm -> relu (no max-pool), stages of widths
    width * (1, 2, 4, 8) (stride 2 from the second stage), global average pool, dense.

    Submodules: stem_conv, stem_norm, stage{i}_block{j}, head.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    width: int = 64
    norm: str = TEST_NETWORK_NORM
    droppath: bool = False
    improved_shortcut: bool = False
    weight_init: str = "torch"
    conv: str = "auto"  # the convolution implementation (layers.CONV_CHOICES), resolved when built
    compute_dtype: str = "float32"  # of convs and matmuls (layers.COMPUTE_DTYPES); parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_rate=1.0) -> jax.Array:
        check_images(x, type(self).__name__)
        x = conv(
            self.width,
            3,
            implementation=self.conv,
            weight_init=self.weight_init,
            compute_dtype=self.compute_dtype,
            name="stem_conv",
        )(x)
        x = nn.relu(make_norm(self.norm, "stem_norm", train)(x))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = ResidualBlock(
                    self.width * 2**i, strides=2 if i > 0 and j == 0 else 1, bottleneck=self.bottleneck,
                    norm=self.norm, droppath=self.droppath, improved_shortcut=self.improved_shortcut,
                    weight_init=self.weight_init, implementation=self.conv, compute_dtype=self.compute_dtype,
                    name=f"stage{i}_block{j}")(x, train, keep_rate)
        return logits(dense(self.num_classes, weight_init=self.weight_init, compute_dtype=self.compute_dtype,
                            name="head")(x.mean(axis=(1, 2))))
