"""Plain CIFAR networks, VGG-11 and AlexNet (SPEC §3), with virtual-shortcut DropPath (§2.2).

Layers are listed as (width, kernel) convs (conv -> norm -> relu) and "M" max-pools. Pools use
SAME (ceil) padding so 28 px inputs survive five pools (28 -> 14 -> 7 -> 4 -> 2 -> 1) where the
reference code pads the first conv of grayscale inputs to 32 px instead; on 32 px both agree.
The classifier is a dense layer on the flattened (h, w, c) features, so any image size works.
"""
from typing import Sequence

import flax.linen as nn
import jax

from distill_jax.models.droppath import sample_keep_mask, virtual_shortcut_mix
from distill_jax.models.layers import check_images, conv, dense, make_norm, max_pool
from distill_jax.models.resnet import Shortcut

POOL = "M"
VGG11_LAYERS = ((64, 3), POOL, (128, 3), POOL, (256, 3), (256, 3), POOL, (512, 3), (512, 3), POOL,
                (512, 3), (512, 3), POOL)
ALEXNET_LAYERS = ((128, 5), POOL, (192, 5), POOL, (256, 3), (192, 3), (192, 3), POOL)


def scale_widths(layers: Sequence, width: int, base: int) -> tuple:
    """Conv widths times width / base (the network's first width), at least 1."""
    return tuple(layer if layer == POOL else (max(1, round(layer[0] * width / base)), layer[1]) for layer in layers)


def group_blocks(layers: Sequence) -> list[tuple]:
    """Split a layer list into blocks of two consecutive convs (with the pools between them);
    pools outside a pair stand alone, and a trailing unpaired conv forms a one-conv block.

    VGG-11: [c M c] M [c c] M [c c] M [c c] M.  AlexNet: [c M c] M [c c] [c M].
    """
    groups, block = [], []
    for layer in layers:
        if layer == POOL and not block:
            groups.append((POOL,))
            continue
        block.append(layer)
        if sum(item != POOL for item in block) == 2:
            groups.append(tuple(block))
            block = []
    if block:
        groups.append(tuple(block))
    return groups


class PlainBlock(nn.Module):
    """Convs and pools in sequence; with `droppath` and two convs, a virtual-shortcut block:
    training output main(x) * m + shortcut(x) * (1 - m) (m ~ Bernoulli(p) per sample, no 1/p),
    evaluation output main(x). The shortcut applies the block's pools, then conv1x1 -> norm
    unless shapes already agree; its weights are created at init but unused at evaluation.
    """

    layers: tuple
    norm: str = "instance"
    droppath: bool = False
    weight_init: str = "torch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_rate=1.0) -> jax.Array:
        main, num_convs = x, 0
        for layer in self.layers:
            if layer == POOL:
                main = max_pool(main, 2)
                continue
            main = conv(layer[0], layer[1], weight_init=self.weight_init, name=f"conv_{num_convs}")(main)
            main = nn.relu(make_norm(self.norm, f"norm_{num_convs}", train)(main))
            num_convs += 1
        if not (self.droppath and num_convs == 2 and (train or self.is_initializing())):
            return main
        shortcut = x
        for _ in range(self.layers.count(POOL)):
            shortcut = max_pool(shortcut, 2)
        shortcut = Shortcut(main.shape[-1], 1, self.norm, weight_init=self.weight_init, name="shortcut")(
            shortcut, train)
        if not train:
            return main  # initialising in eval mode: the shortcut exists only to create its weights
        self.sow("intermediates", "keep_rate", keep_rate)
        mask = sample_keep_mask(self.make_rng("droppath"), x.shape[0], keep_rate)
        return virtual_shortcut_mix(main, shortcut, mask)


class _PlainNet(nn.Module):
    """Blocks from `group_blocks` named block_0, block_1, ... (pools between them have no name),
    then flatten -> dense `head`."""

    num_classes: int
    width: int = 64
    norm: str = "instance"
    droppath: bool = False
    weight_init: str = "torch"

    def layer_list(self) -> tuple:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_rate=1.0) -> jax.Array:
        check_images(x, type(self).__name__)
        blocks = 0
        for group in group_blocks(self.layer_list()):
            if group == (POOL,):
                x = max_pool(x, 2)
                continue
            block = PlainBlock(group, self.norm, self.droppath, self.weight_init, name=f"block_{blocks}")
            x = block(x, train, keep_rate)
            blocks += 1
        return dense(self.num_classes, weight_init=self.weight_init, name="head")(x.reshape(x.shape[0], -1))


class VGG11(_PlainNet):
    """VGG-11 (conv widths 64-512 scaled by width / 64), conv3x3 -> norm -> relu, dense head."""

    width: int = 64

    def layer_list(self) -> tuple:
        return scale_widths(VGG11_LAYERS, self.width, 64)


class AlexNet(_PlainNet):
    """CIFAR AlexNet of the distillation code: convs 128(5x5), 192(5x5), 256, 192, 192 (3x3),
    scaled by width / 128, each conv -> norm -> relu, max-pools after convs 1, 2 and 5."""

    width: int = 128

    def layer_list(self) -> tuple:
        return scale_widths(ALEXNET_LAYERS, self.width, 128)
