"""Plain CIFAR networks, VGG-11 and AlexNet (docs/method.md §3), with the virtual-shortcut
DropPath blocks of the reference code (§2.2).

A network is a *layout*: plain convs (`PlainConv`: conv -> norm -> relu), max-pools (`POOL`)
and DropPath pairs (`Pair`: two convs that a virtual shortcut can bypass). The first layers
stay plain, as in the reference code: VGG-11 has two plain convs then three pairs, AlexNet one
plain conv then two pairs, the first with its max-pool between the two convs. Without
DropPath a pair is just its two convs, so the same layout gives the plain network.

Pools use SAME (ceil) padding so 28 px inputs survive five pools (28 -> 14 -> 7 -> 4 -> 2 -> 1)
where the reference code pads grayscale inputs to 32 px instead; on 32 px both agree. The
classifier is a dense layer on the flattened (h, w, c) features, so any image size works.
"""
import dataclasses
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax

from distill_jax.models.droppath import sample_keep_mask, virtual_shortcut_mix
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
from distill_jax.models.resnet import Shortcut

POOL = "M"


class PlainConv(NamedTuple):
    """conv `kernel` x `kernel` to `width` channels -> norm -> relu; never dropped."""
    width: int
    kernel: int


class Pair(NamedTuple):
    """DP(c_in, hidden, out, k1, k2, pool) of docs/method.md §2.2 (c_in is the input's width):
    conv k1 -> norm -> relu -> [max-pool] -> conv k2 -> norm -> relu."""
    hidden: int
    out: int
    k1: int
    k2: int
    pool: bool = False


VGG11_LAYOUT = (PlainConv(64, 3), POOL, PlainConv(128, 3), POOL, Pair(256, 256, 3, 3), POOL,
                Pair(512, 512, 3, 3), POOL, Pair(512, 512, 3, 3), POOL)
ALEXNET_LAYOUT = (PlainConv(128, 5), POOL, Pair(192, 256, 5, 3, pool=True), Pair(192, 192, 3, 3), POOL)


def scale_layout(layout: Sequence, width: int, base: int) -> tuple:
    """Every conv width times width / base (the network's first width), rounded, at least 1."""
    def scaled(c: int) -> int:
        return max(1, round(c * width / base))

    out = []
    for item in layout:
        if isinstance(item, PlainConv):
            item = item._replace(width=scaled(item.width))
        elif isinstance(item, Pair):
            item = item._replace(hidden=scaled(item.hidden), out=scaled(item.out))
        out.append(item)
    return tuple(out)


def layer_sequence(layout: Sequence) -> tuple:
    """The layers in order as (width, kernel) convs and POOLs, pairs unrolled: the network
    without DropPath."""
    seq = []
    for item in layout:
        if isinstance(item, PlainConv):
            seq.append((item.width, item.kernel))
        elif isinstance(item, Pair):
            seq += [(item.hidden, item.k1)] + [POOL] * item.pool + [(item.out, item.k2)]
        else:
            seq.append(POOL)
    return tuple(seq)


class PlainBlock(nn.Module):
    """One `Pair`; with `droppath`, a virtual-shortcut block: training output
    main(x) * m + shortcut(x) * (1 - m) (m ~ Bernoulli(p) per sample, no 1/p), evaluation
    output main(x). The shortcut is [max-pool] then identity when the widths agree, else
    conv1x1 -> norm; its weights are created at init but unused at evaluation.
    """

    pair: Pair
    norm: str = "instance"
    droppath: bool = False
    weight_init: str = "torch"
    implementation: str = dataclasses.field(kw_only=True)  # the network's resolved conv
    compute_dtype: str = dataclasses.field(default="float32", kw_only=True)  # the network's

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_rate=1.0) -> jax.Array:
        p = self.pair
        main = conv(p.hidden, p.k1, implementation=self.implementation, weight_init=self.weight_init,
                    compute_dtype=self.compute_dtype, name="conv_0")(x)
        main = nn.relu(make_norm(self.norm, "norm_0", train)(main))
        if p.pool:
            main = max_pool(main, 2)
        main = conv(p.out, p.k2, implementation=self.implementation, weight_init=self.weight_init,
                    compute_dtype=self.compute_dtype, name="conv_1")(main)
        main = nn.relu(make_norm(self.norm, "norm_1", train)(main))
        if not (self.droppath and (train or self.is_initializing())):
            return main
        shortcut = max_pool(x, 2) if p.pool else x
        shortcut = Shortcut(p.out, 1, self.norm, weight_init=self.weight_init, implementation=self.implementation,
                            compute_dtype=self.compute_dtype, name="shortcut")(shortcut, train)
        if not train:
            return main  # initialising in eval mode: the shortcut exists only to create its weights
        self.sow("intermediates", "keep_rate", keep_rate)
        mask = sample_keep_mask(self.make_rng("droppath"), x.shape[0], keep_rate)
        return virtual_shortcut_mix(main, shortcut, mask)


class _PlainNet(ConvChoice):
    """A layout: plain convs named conv_i / norm_i, pairs named block_j (pools have no name),
    then flatten -> dense `head`."""

    num_classes: int
    width: int = 64
    norm: str = TEST_NETWORK_NORM
    droppath: bool = False
    weight_init: str = "torch"
    conv: str = "auto"  # the convolution implementation (layers.CONV_CHOICES), resolved when built
    compute_dtype: str = "float32"  # of convs and matmuls (layers.COMPUTE_DTYPES); parameters stay float32

    def layout(self) -> tuple:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_rate=1.0) -> jax.Array:
        check_images(x, type(self).__name__)
        convs = blocks = 0
        for item in self.layout():
            if isinstance(item, PlainConv):
                x = conv(item.width, item.kernel, implementation=self.conv, weight_init=self.weight_init,
                         compute_dtype=self.compute_dtype, name=f"conv_{convs}")(x)
                x = nn.relu(make_norm(self.norm, f"norm_{convs}", train)(x))
                convs += 1
            elif isinstance(item, Pair):
                x = PlainBlock(item, self.norm, self.droppath, self.weight_init, implementation=self.conv,
                               compute_dtype=self.compute_dtype, name=f"block_{blocks}")(x, train, keep_rate)
                blocks += 1
            else:
                x = max_pool(x, 2)
        return logits(dense(self.num_classes, weight_init=self.weight_init, compute_dtype=self.compute_dtype,
                            name="head")(x.reshape(x.shape[0], -1)))


class VGG11(_PlainNet):
    """VGG-11 (conv3x3 widths 64-512 scaled by width / 64): two plain convs, then three
    DropPath pairs, a max-pool after each, dense head."""

    width: int = 64

    def layout(self) -> tuple:
        return scale_layout(VGG11_LAYOUT, self.width, 64)


class AlexNet(_PlainNet):
    """CIFAR AlexNet of the distillation code (widths scaled by width / 128): conv5x5 128 and
    a pool, then the pairs (conv5x5 192, pool, conv3x3 256) and (conv3x3 192, conv3x3 192),
    then a pool and the dense head."""

    width: int = 128

    def layout(self) -> tuple:
        return scale_layout(ALEXNET_LAYOUT, self.width, 128)
