"""The training networks of the distillers: ConvNet (MTT, DC, DSA, DM) and ConvNet-FRePo (docs/method.md §3)."""
import flax.linen as nn
import jax

from distill_jax.models.layers import ConvChoice, avg_pool, check_images, conv, dense, logits, make_norm


def _conv_norm_relu_pool(x, widths, norm, weight_init, implementation, compute_dtype, train):
    """depth x [conv3x3 -> norm -> relu -> avgpool 2] named conv_i / norm_i (torch import relies on it)."""
    for i, width in enumerate(widths):
        x = conv(width, 3, implementation=implementation, weight_init=weight_init, compute_dtype=compute_dtype,
                 name=f"conv_{i}")(x)
        x = nn.relu(make_norm(norm, f"norm_{i}", train)(x))
        x = avg_pool(x, 2)
    return x


class ConvNet(ConvChoice):
    """depth x [conv3x3 width -> norm -> relu -> avgpool 2] -> flatten -> dense.

    Submodules: conv_0, norm_0, ..., conv_{depth-1}, norm_{depth-1}, head. The flatten is
    in NHWC order (h, w, c), unlike torch's (c, h, w): imported classifier weights need that
    permutation. `keep_rate` is accepted for a uniform call signature and ignored.
    """

    num_classes: int
    width: int = 128
    depth: int = 3
    norm: str = "instance"
    weight_init: str = "torch"
    conv: str = "auto"  # the convolution implementation (layers.CONV_CHOICES), resolved when built
    compute_dtype: str = "float32"  # of convs and matmuls (layers.COMPUTE_DTYPES); parameters stay float32

    def layer_widths(self) -> list[int]:
        return [self.width] * self.depth

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_rate=1.0) -> jax.Array:
        check_images(x, type(self).__name__)
        x = _conv_norm_relu_pool(x, self.layer_widths(), self.norm, self.weight_init, self.conv, self.compute_dtype,
                                 train)
        return logits(dense(self.num_classes, weight_init=self.weight_init, compute_dtype=self.compute_dtype,
                            name="head")(x.reshape(x.shape[0], -1)))


class ConvNetFRePo(ConvNet):
    """FRePo's ConvNet: widths width * 2**i (128, 256, 512), conv -> norm -> relu -> avgpool,
    flatten -> dense. Depth 4 for 64 px images is the config's choice. Same names as ConvNet."""

    norm: str = "batch"
    weight_init: str = "flax"

    def layer_widths(self) -> list[int]:
        return [self.width * 2**i for i in range(self.depth)]
