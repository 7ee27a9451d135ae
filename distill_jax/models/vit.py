"""A small Vision Transformer with the method's DropPath (an extension beyond the paper).

The paper applies DropPath to the residual blocks of ResNets and to virtual shortcuts in plain
networks; a transformer's residual branches are the natural place for it too. Each
pre-norm block has two branches, attention and MLP, and each is dropped per sample with the
keep rate of the three-phase schedule (docs/method.md §2.1, §2.4): in training
`x + branch(x) * m / p`, at evaluation `x + branch(x)`. The keep rate is a traced input, as
for the ResNets, and every branch records the rate it used.

Patches of 4 pixels (28 px -> 7 x 7 tokens, 32 px -> 8 x 8), a learned position embedding,
`depth` blocks of width `width` with `width // 32` heads (at least 1), global average pooling
and a LayerNorm -> dense head. Sized for a CPU by default (width 64, depth 4: 0.2 M parameters).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from distill_jax.models.droppath import residual_droppath, sample_keep_mask
from distill_jax.models.layers import ConvChoice, cast, check_images, dense, logits

PATCH = 4


class _Branch(nn.Module):
    """One residual branch of a block: LayerNorm -> attention, or LayerNorm -> MLP."""

    kind: str  # "attention" or "mlp"
    width: int
    heads: int
    weight_init: str = "torch"
    compute_dtype: str = "float32"  # of the matmuls; the norm and the attention's softmax compute in float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = layer_norm("norm", x)
        if self.kind == "attention":
            return nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width,
                                                   dtype=jnp.dtype(self.compute_dtype), param_dtype=jnp.float32,
                                                   attention_fn=attention, name="attention")(y, y)
        y = nn.gelu(
            dense(4 * self.width, weight_init=self.weight_init, compute_dtype=self.compute_dtype, name="fc_0")(y)
        )
        return dense(self.width, weight_init=self.weight_init, compute_dtype=self.compute_dtype, name="fc_1")(y)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, dtype=None) -> jax.Array:
    """Flax's dot-product attention (no mask, no dropout) with its softmax in float32 and both
    products in the inputs' dtype (Flax's own fp32 softmax leaves the second product in float32)."""
    weights = nn.dot_product_attention_weights(query, key, dtype=dtype, force_fp32_for_softmax=True)
    return jnp.einsum("...hqk,...khd->...qhd", cast(weights, value.dtype), value)


def layer_norm(name: str, x: jax.Array) -> jax.Array:
    """LayerNorm computed in float32, returned in x's dtype (call inside a compact method)."""
    return cast(nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, name=name)(
        cast(x, jnp.float32)), x.dtype)


class ViT(ConvChoice):
    """Vision Transformer for 28 and 32 px images; DropPath on every residual branch."""

    num_classes: int
    width: int = 64
    depth: int = 4
    droppath: bool = False
    weight_init: str = "torch"
    # No convolutions: taken (and resolved) like every network's, so one config fits all of them.
    conv: str = "auto"
    compute_dtype: str = "float32"  # of the matmuls (layers.COMPUTE_DTYPES); parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_rate=1.0) -> jax.Array:
        check_images(x, type(self).__name__)
        b, h, w, c = x.shape
        if h % PATCH or w % PATCH:
            raise ValueError(f"ViT: image sides {h}x{w} must be multiples of the patch size {PATCH}")
        patches = jax.lax.transpose(
            jax.lax.reshape(x, (b, h // PATCH, PATCH, w // PATCH, PATCH, c)), (0, 1, 3, 2, 4, 5)
        )
        tokens = dense(self.width, weight_init=self.weight_init, compute_dtype=self.compute_dtype, name="patch_embed")(
            patches.reshape(b, (h // PATCH) * (w // PATCH), PATCH * PATCH * c))
        position = self.param("position", nn.initializers.normal(0.02), tokens.shape[1:])
        tokens = tokens + cast(position, tokens.dtype)
        heads = max(1, self.width // 32)
        for i in range(self.depth):
            for kind in ("attention", "mlp"):
                branch = _Branch(kind, self.width, heads, self.weight_init, self.compute_dtype,
                                 name=f"block{i}_{kind}")(tokens)
                if self.droppath and train:
                    self.sow("intermediates", "keep_rate", keep_rate)
                    mask = sample_keep_mask(self.make_rng("droppath"), b, keep_rate)
                    tokens = residual_droppath(tokens, branch, mask, keep_rate)
                else:
                    tokens = tokens + branch
        pooled = layer_norm("head_norm", jnp.mean(tokens, axis=1))
        return logits(dense(self.num_classes, weight_init=self.weight_init, compute_dtype=self.compute_dtype,
                            name="head")(pooled))
