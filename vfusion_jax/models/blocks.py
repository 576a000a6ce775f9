"""VideoFusion building blocks (REFERENCE.md section 2), channels-last.

Frame-wise blocks take (*batch, H, W, C) with any leading batch axes; the temporal blocks (``Conv3DModule``,
``CoAttentionLayer``) take (B, T, H, W, C). Submodule names mirror the official PyTorch module names so that the
weight converter is a mechanical renaming (see ``vfusion_jax.convert``).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vfusion_jax.models import layers

Array = jax.Array
Dtype = Any

# Every softmax over channel-attention maps and every L2 normalisation runs in float32 even when the compute
# dtype is bfloat16: the maps are small (heads x ch x ch) and their precision matters.
_L2_EPS = 1e-12


def _attention_logits(q: Array, k: Array, temperature: Array, heads: int) -> Array:
  """Per-head cosine similarity of q and k channels over the spatial axes, times the per-head temperature.

  q, k: (*batch, H, W, C); heads are contiguous blocks of C/heads channels. Returns (*batch, heads, ch, ch) in
  float32, equal to (q_h / max(|q_h|, eps)) @ (k_h / max(|k_h|, eps))^T of the release for each head h.

  The Gram matrix is computed for all C channels at once, one (C x H*W) @ (H*W x C) product read straight from
  the channels-last layout, and its diagonal head blocks are kept: splitting heads first would transpose q and
  k to (heads, ch, H*W), and those transposes cost more than the heads-times larger product
  (docs/performance.md). The L2 normalisation is applied to the small Gram blocks, not to q and k.
  """
  *batch, h, w, c = q.shape
  if c % heads:
    raise ValueError(f'{c} channels cannot be split into {heads} heads')
  ch = c // heads
  q2 = q.reshape(*batch, h * w, c)
  k2 = k.reshape(*batch, h * w, c)
  gram = jnp.einsum('...nc,...nd->...cd', q2, k2, preferred_element_type=jnp.float32)
  gram = jnp.einsum('...hihj->...hij', gram.reshape(*batch, heads, ch, heads, ch))
  q_inv = 1.0 / jnp.maximum(_spatial_norms(q2), _L2_EPS).reshape(*batch, heads, ch)
  k_inv = 1.0 / jnp.maximum(_spatial_norms(k2), _L2_EPS).reshape(*batch, heads, ch)
  logits = gram * q_inv[..., :, None] * k_inv[..., None, :]
  return logits * temperature[:, None, None]


def _spatial_norms(x: Array) -> Array:
  """L2 norm of every channel over the spatial axis: (*batch, N, C) -> (*batch, C), float32."""
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-2))


def _mean_in_float32(x: Array, axis) -> Array:
  """Mean of ``x`` over ``axis`` (keepdims) accumulated in float32, returned in x's dtype: a bfloat16 sum over
  a whole frame loses the mean's low bits (docs/precision.md)."""
  return jnp.mean(x.astype(jnp.float32), axis=axis, keepdims=True).astype(x.dtype)


def _apply_attention(attn: Array, v: Array, dtype) -> Array:
  """attn (*batch, heads, ch, ch) applied to v (*batch, H, W, C): out_h = attn_h @ v_h -> (*batch, H, W, C).

  One product with the block-diagonal (C x C) matrix of the heads' maps, in the channels-last layout (no
  transposes of v or of the output; the zero blocks add exact zeros).
  """
  *batch, heads, ch, _ = attn.shape
  block_diagonal = jnp.einsum('...hij,hk->...hikj', attn.astype(dtype), jnp.eye(heads, dtype=dtype))
  block_diagonal = block_diagonal.reshape(*batch, heads * ch, heads * ch)
  out = jnp.einsum('...nd,...cd->...nc', v.reshape(*batch, -1, heads * ch), block_diagonal,
                   preferred_element_type=dtype)
  return out.reshape(v.shape)


class Attention(nn.Module):
  """MDTA: Restormer's transposed (channel) self-attention (REFERENCE.md 2.3). (*b, H, W, C) -> same."""

  heads: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'  # layers.resolve_layer_impl

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    temperature = layers.logical_param(self, 'temperature', nn.initializers.ones, (self.heads,), layers.HEADS_AXES)
    qkv = layers.Conv1x1(3 * c, self.use_bias, self.dtype, output_groups=3, name='qkv')(x)
    q, k, v = layers.DepthwiseConv3x3(self.use_bias, self.dtype, self.layer_impl, name='qkv_dwconv')(qkv)
    attn = jax.nn.softmax(_attention_logits(q, k, temperature, self.heads), axis=-1)
    out = _apply_attention(attn, v, self.dtype)
    return layers.Conv1x1(c, self.use_bias, self.dtype, name='project_out')(out)


class CrossAttention(nn.Module):
  """Queries from ``x``, keys and values from ``y`` (REFERENCE.md 2.6). (*b, H, W, C) x2 -> (*b, H, W, C)."""

  heads: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'  # layers.resolve_layer_impl

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    c = x.shape[-1]
    temperature = layers.logical_param(self, 'temperature', nn.initializers.ones, (self.heads,), layers.HEADS_AXES)
    q = layers.Conv1x1(c, self.use_bias, self.dtype, name='q')(x)
    q = layers.DepthwiseConv3x3(self.use_bias, self.dtype, self.layer_impl, name='q_dwconv')(q)
    kv = layers.Conv1x1(2 * c, self.use_bias, self.dtype, output_groups=2, name='kv')(y)
    k, v = layers.DepthwiseConv3x3(self.use_bias, self.dtype, self.layer_impl, name='kv_dwconv')(kv)
    attn = jax.nn.softmax(_attention_logits(q, k, temperature, self.heads), axis=-1)
    out = _apply_attention(attn, v, self.dtype)
    return layers.Conv1x1(c, self.use_bias, self.dtype, name='project_out')(out)


def shift_previous(x: Array) -> Array:
  """Frame t-1 for every t along axis 1 of (B, T, ...); frame 0 is its own predecessor (BiCAM rule)."""
  return jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)


def shift_next(x: Array) -> Array:
  """Frame t+1 for every t along axis 1 of (B, T, ...); frame T-1 is its own successor (BiCAM rule)."""
  return jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)


class CoAttention(nn.Module):
  """Bi-temporal co-attention of BiCAM (REFERENCE.md 2.7), vectorised over time.

  ``x`` is the normalised clip (B, T, H, W, C). Every frame queries its predecessor and successor (with the
  boundary rule of ``shift_previous``/``shift_next``). Keys and values are per-frame maps, so they are computed
  once for all frames and then shifted in time, which equals computing them on shifted inputs.
  """

  heads: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'  # layers.resolve_layer_impl

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    temperature = layers.logical_param(self, 'temperature', nn.initializers.ones, (self.heads,), layers.HEADS_AXES)
    q = layers.Conv1x1(c, self.use_bias, self.dtype, name='q')(x)
    q = layers.DepthwiseConv3x3(self.use_bias, self.dtype, self.layer_impl, name='q_dwconv')(q)
    kv_p = layers.Conv1x1(2 * c, self.use_bias, self.dtype, output_groups=2, name='kv_prev')(x)
    kv_p = layers.DepthwiseConv3x3(self.use_bias, self.dtype, self.layer_impl, name='kv_dwconv_prev')(kv_p)
    k_p, v_p = map(shift_previous, kv_p)
    kv_n = layers.Conv1x1(2 * c, self.use_bias, self.dtype, output_groups=2, name='kv_next')(x)
    kv_n = layers.DepthwiseConv3x3(self.use_bias, self.dtype, self.layer_impl, name='kv_dwconv_next')(kv_n)
    k_n, v_n = map(shift_next, kv_n)
    attn_p = jax.nn.softmax(_attention_logits(q, k_p, temperature, self.heads), axis=-1)
    attn_n = jax.nn.softmax(_attention_logits(q, k_n, temperature, self.heads), axis=-1)
    # The release applies a second softmax to the product of the two probability maps (near uniform); kept.
    attn = jax.nn.softmax(attn_p * attn_n, axis=-1)
    v = v_p + v_n  # A v_p + A v_n == A (v_p + v_n): one product instead of two.
    out = _apply_attention(attn, v, self.dtype)
    return layers.Conv1x1(c, self.use_bias, self.dtype, name='project_out')(out)


class FeedForward(nn.Module):
  """GDFN gated feed-forward (REFERENCE.md 2.4). (*b, H, W, C) -> same."""

  expansion: float
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'  # layers.resolve_layer_impl

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    hidden = int(c * self.expansion)
    y = layers.Conv1x1(2 * hidden, self.use_bias, self.dtype, name='project_in')(x)
    y = layers.DepthwiseConv3x3(self.use_bias, self.dtype, self.layer_impl, name='dwconv')(y)
    gated, gate = jnp.split(y, 2, axis=-1)
    y = layers.gelu_exact(gated) * gate
    return layers.Conv1x1(c, self.use_bias, self.dtype, name='project_out')(y)


class _BlockConfig(nn.Module):
  """Fields shared by the three transformer blocks."""

  heads: int
  ffn_expansion_factor: float = 1.0
  use_bias: bool = False
  layernorm_type: str = 'WithBias'
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'  # layers.resolve_layer_impl

  def _norm(self, name):
    return layers.LayerNorm(self.layernorm_type, dtype=self.dtype, name=name)

  def _ffn_residual(self, x):
    ffn = FeedForward(self.ffn_expansion_factor, self.use_bias, self.dtype, self.layer_impl, name='ffn')
    return x + ffn(self._norm('norm2')(x))


class TransformerBlock(_BlockConfig):
  """Restormer block: x + MDTA(LN x), then x + GDFN(LN x). (*b, H, W, C) -> same."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x + Attention(self.heads, self.use_bias, self.dtype, self.layer_impl, name='attn')(self._norm('norm1')(x))
    return self._ffn_residual(x)


class CrossTransformerBlock(_BlockConfig):
  """x + CrossAttention(LN x, LN s), then the GDFN residual; one ``norm1`` normalises both inputs."""

  @nn.compact
  def __call__(self, x: Array, s: Array) -> Array:
    norm1 = self._norm('norm1')
    x = x + CrossAttention(self.heads, self.use_bias, self.dtype, self.layer_impl, name='attn')(norm1(x), norm1(s))
    return self._ffn_residual(x)


class CoTransformerBlock(_BlockConfig):
  """One BiCAM layer on a clip (B, T, H, W, C): x + CoAttention(LN x), then the GDFN residual.

  All frames are updated from the same input (the release's parallel update), and LN(prev), LN(next) are the
  time-shifted LN(x) since the norm is per pixel.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x + CoAttention(self.heads, self.use_bias, self.dtype, self.layer_impl, name='attn')(self._norm('norm1')(x))
    return self._ffn_residual(x)


class ChannelAttention(nn.Module):
  """CBAM channel attention, ratio 16, LeakyReLU 0.2 (REFERENCE.md 2.10).

  (*b, H, W, C) -> weights (*b, 1, 1, C) in (0, 1); the caller multiplies.
  """

  ratio: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    fc1 = layers.Conv1x1(c // self.ratio, False, self.dtype, name='fc1')
    fc2 = layers.Conv1x1(c, False, self.dtype, name='fc2')
    avg = _mean_in_float32(x, (-3, -2)).astype(self.dtype)
    mx = jnp.max(x, axis=(-3, -2), keepdims=True)
    mlp = lambda t: fc2(layers.leaky_relu(fc1(t), 0.2))
    return jax.nn.sigmoid(mlp(avg) + mlp(mx))


class SpatialAttention(nn.Module):
  """CBAM spatial attention with a 3x3 kernel. (*b, H, W, C) -> weights (*b, H, W, 1) in (0, 1)."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pooled = jnp.concatenate(
        [_mean_in_float32(x, -1),
         jnp.max(x, axis=-1, keepdims=True)], axis=-1)
    return jax.nn.sigmoid(layers.Conv2D(1, 3, use_bias=False, dtype=self.dtype, name='conv1')(pooled))


class CrossModalAggregation(nn.Module):
  """Contribution-weighted aggregation of CmDRM (REFERENCE.md 2.11). (*b,H,W,C) x2 -> (*b,H,W,C)."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_main: Array, x_supple: Array) -> Array:
    w = layers.Conv1x1(2, False, self.dtype, name='conv')(jnp.concatenate([x_main, x_supple], axis=-1))
    # Sigmoid first, then the global average over the frame: one scalar per frame and branch.
    w = _mean_in_float32(jax.nn.sigmoid(w.astype(jnp.float32)), (-3, -2)).astype(self.dtype)
    g1 = x_main * w[..., 0:1]
    g2 = x_supple * w[..., 1:2]
    g1 = ChannelAttention(dtype=self.dtype, name='ChannelAttention')(g1) * g1
    g1 = SpatialAttention(dtype=self.dtype, name='SpatialAttention')(g1) * g1
    return g1 + g2


class VideoDecomposition(nn.Module):
  """Modality unmixing (REFERENCE.md 2.12): (*b, H, W, C) -> (ir features, visible features)."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array):
    outputs = []
    for branch in ('ir', 'vi'):
      y = ChannelAttention(dtype=self.dtype, name=f'channel_attention_{branch}')(x) * x
      y = SpatialAttention(dtype=self.dtype, name=f'spatial_attention_{branch}')(y) * y
      outputs.append(y)
    return tuple(outputs)


class Decoder(nn.Module):
  """Decoder3D of the release (purely 2-D): transformer blocks, 1x1 conv (bias), LReLU 0.2, 3x3 conv.

  (*b, H, W, C) -> raw output (*b, H, W, out_channels) before the (tanh + 1) / 2 mapping.
  """

  out_channels: int
  num_blocks: int
  heads: int
  ffn_expansion_factor: float = 1.0
  use_bias: bool = False
  layernorm_type: str = 'WithBias'
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'  # layers.resolve_layer_impl

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    for i in range(self.num_blocks):
      x = TransformerBlock(self.heads, self.ffn_expansion_factor, self.use_bias, self.layernorm_type,
                           self.dtype, self.layer_impl, name=f'decoder_{i}')(x)
    x = layers.Conv1x1(c // 2, True, self.dtype, name='conv_0')(x)
    x = layers.leaky_relu(x, 0.2)
    return layers.Conv2D(self.out_channels, 3, use_bias=False, dtype=self.dtype, name='conv_2')(x)


class Conv3DModule(nn.Module):
  """Conv3D 3x3x3 (bias) -> LReLU 0.2 -> Conv3D 3x3x3 (bias). (B, T, H, W, Cin) -> (B, T, H, W, Cout)."""

  features: int
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'  # layers.resolve_layer_impl

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = layers.Conv3D(self.features, self.dtype, self.layer_impl, name='module_0')(x)
    x = layers.leaky_relu(x, 0.2)
    return layers.Conv3D(self.features, self.dtype, self.layer_impl, name='module_2')(x)


class ResidualBlockNoBN(nn.Module):
  """x + conv3x3(LReLU_0.1(conv3x3(x))), convs with bias, no residual scaling. (*b, H, W, C) -> same."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    init = layers.scaled_kaiming_normal_init(0.1)
    conv1 = layers.Conv2D(c, 3, True, self.dtype, init, nn.initializers.zeros, name='conv1')
    conv2 = layers.Conv2D(c, 3, True, self.dtype, init, nn.initializers.zeros, name='conv2')
    return x + conv2(layers.leaky_relu(conv1(x), 0.1))


class ResidualBlocks(nn.Module):
  """``num_blocks`` residual blocks (the release hard-codes 4). (*b, H, W, C) -> same."""

  num_blocks: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_blocks):
      # The release nests a Sequential in a Sequential: parameter path blocks.0.<i>.
      x = ResidualBlockNoBN(self.dtype, name=f'blocks_0_{i}')(x)
    return x


class Downsample(nn.Module):
  """3x3 conv C -> C/2 (no bias), then pixel-unshuffle x2. (*b, H, W, C) -> (*b, H/2, W/2, 2C)."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = layers.Conv2D(x.shape[-1] // 2, 3, use_bias=False, dtype=self.dtype, name='body_0')(x)
    return layers.pixel_unshuffle(x, 2)


class Upsample(nn.Module):
  """3x3 conv C -> C/2 (no bias), bilinear x2 (align_corners), 3x3 conv (bias). -> (*b, 2H, 2W, C/2)."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1] // 2
    x = layers.Conv2D(c, 3, use_bias=False, dtype=self.dtype, name='body_0')(x)
    x = layers.upsample_bilinear_align_corners(x, 2)
    return layers.Conv2D(c, 3, use_bias=True, dtype=self.dtype, name='body_2')(x)


class FusionModule(_BlockConfig):
  """CMGF (REFERENCE.md 2.8): Q = ir + vi; out = XTB(Q, ir) + XTB(Q, vi) with ONE shared cross block."""

  @nn.compact
  def __call__(self, ir: Array, vi: Array) -> Array:
    block = CrossTransformerBlock(self.heads, self.ffn_expansion_factor, self.use_bias, self.layernorm_type,
                                  self.dtype, self.layer_impl, name='cross_transformer')
    q = ir + vi
    return block(q, ir) + block(q, vi)


class CrossModalityDiffEnhance(_BlockConfig):
  """First half of CmDRM (REFERENCE.md 2.9): XTB(x, suppl - x), queries from the primary modality."""

  @nn.compact
  def __call__(self, x: Array, suppl: Array) -> Array:
    return CrossTransformerBlock(self.heads, self.ffn_expansion_factor, self.use_bias, self.layernorm_type,
                                 self.dtype, self.layer_impl, name='cross_transformer')(x, suppl - x)


class TransformerStack(_BlockConfig):
  """``num_layers`` TransformerBlocks in sequence (the release's ``fusion_enhance_*``)."""

  num_layers: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_layers):
      x = TransformerBlock(self.heads, self.ffn_expansion_factor, self.use_bias, self.layernorm_type,
                           self.dtype, self.layer_impl, name=f'transformer_{i}')(x)
    return x


class CoAttentionModule(_BlockConfig):
  """One BiCAM layer (the release's ``CoAttentionModule``): a CoTransformerBlock over the clip."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return CoTransformerBlock(self.heads, self.ffn_expansion_factor, self.use_bias, self.layernorm_type,
                              self.dtype, self.layer_impl, name='co_transformer')(x)


class StackedCoAttention(_BlockConfig):
  """``num_layers`` BiCAM layers in sequence on a clip (B, T, H, W, C)."""

  num_layers: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_layers):
      x = CoAttentionModule(self.heads, self.ffn_expansion_factor, self.use_bias, self.layernorm_type,
                            self.dtype, self.layer_impl, name=f'layers_{i}')(x)
    return x
