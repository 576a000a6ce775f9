"""The VideoFusion network (REFERENCE.md section 1.3), channels-last.

Three encoder scales, each built from the same per-scale recipe; a decoder path of bi-temporal co-attention
(BiCAM) layers with upsampling and skip connections; modality unmixing; three decoders. The network keeps the
time axis separate from the batch axis end to end, so it can be sharded over time.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vfusion_jax.models import blocks, layers

Array = jax.Array

NUM_SCALES = 3
SPATIAL_MULTIPLE = 2 ** (NUM_SCALES - 1)  # two pixel-unshuffles: H and W must be multiples of 4
RESIDUAL_BLOCKS_PER_SCALE = 4  # hard-coded in the release, independent of num_blocks


def _as_dtype(dtype) -> Any:
  return jnp.dtype(dtype) if isinstance(dtype, str) else dtype


def _constrain(x: Array) -> Array:
  """Pins a (B, T, H, W, C) activation to the logical axes `layers.ACTIVATION_AXES` (Flax logical partitioning).

  The identity unless traced under ``nn.logical_axis_rules`` and a mesh (``sharding.activation_rules``).
  """
  return nn.with_logical_constraint(x, layers.ACTIVATION_AXES)


def validate_inputs(ir: Any, vi: Any, in_channels: int = 3) -> None:
  """Raises ValueError naming the problem if (ir, vi) cannot go through the network.

  ir: (B, T, H, W, 1 or in_channels); vi: (B, T, H, W, in_channels); float; T >= 2; H, W multiples of 4.
  Values must lie in [0, 1]; that is checked only for concrete (non-traced) arrays.
  """
  for name, x in (('ir', ir), ('vi', vi)):
    if getattr(x, 'ndim', None) != 5:
      raise ValueError(f'{name} must be a 5-D array (B, T, H, W, C); got shape {getattr(x, "shape", None)}')
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'{name} must be a float array with values in [0, 1]; got dtype {x.dtype} '
                       '(convert uint8 frames with x / 255.)')
  if ir.shape[:4] != vi.shape[:4]:
    raise ValueError(f'ir and vi must have the same (B, T, H, W); got {ir.shape[:4]} and {vi.shape[:4]}')
  if ir.shape[-1] not in (1, in_channels):
    raise ValueError(f'ir must have 1 or {in_channels} channels; got {ir.shape[-1]}')
  if vi.shape[-1] != in_channels:
    raise ValueError(f'vi must have {in_channels} channels; got {vi.shape[-1]}')
  _, t, h, w, _ = vi.shape
  if t < 2:
    raise ValueError(f'the clip needs at least 2 frames (bi-temporal attention); got T={t}')
  if h % SPATIAL_MULTIPLE or w % SPATIAL_MULTIPLE:
    raise ValueError(f'H and W must be multiples of {SPATIAL_MULTIPLE}; got H={h}, W={w} '
                     '(use vfusion_jax.fuse, which pads and crops back)')
  for name, x in (('ir', ir), ('vi', vi)):
    if isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer):
      check_value_range(name, x)  # shapes only, or traced values: the range cannot be checked


def check_value_range(name: str, x: Any) -> None:
  """Raises ValueError naming ``name`` unless every value of the concrete array ``x`` is finite and in [0, 1]."""
  lo, hi = float(np.min(x)), float(np.max(x))
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
    raise ValueError(f'{name} values must lie in [0, 1]; got range [{lo:g}, {hi:g}]')


class VideoFusion(nn.Module):
  """VideoFusion (Tang et al., CVPR 2026), the released ``VideoFusion_Trans`` architecture.

  Attributes follow the official constructor (snake_case): ``num_features`` is the width F of scale 1
  (scales use F, 2F, 4F); ``num_blocks[s]`` is the number of transformer / BiCAM layers at scale s;
  ``num_heads[s]`` the attention heads at scale s; ``dtype`` the computation dtype (params stay float32);
  ``remat`` rematerialises every block's activations in the backward pass (same params, less memory);
  ``layer_impl`` ('auto' | 'cpu_tuned' | 'xla', `layers.resolve_layer_impl`) how Conv3D and the depthwise
  convolutions are computed ('auto' follows the backend at trace time; same params either way).

  Call: ``apply({'params': p}, ir, vi)`` with ir (B, T, H, W, 1 or 3) and vi (B, T, H, W, 3), float in [0, 1],
  T >= 2, H and W multiples of 4. Returns {'fusion', 'ir', 'vi'}, each (B, T, H, W, out_channels) in (0, 1).
  """

  in_channels: int = 3
  out_channels: int = 3
  num_features: int = 32
  num_blocks: Sequence[int] = (2, 2, 4)
  num_decoder_blocks: int = 2
  num_heads: Sequence[int] = (2, 4, 8)
  ffn_expansion_factor: float = 1.0
  bias: bool = False
  layernorm_type: str = 'WithBias'
  dtype: Any = 'float32'
  layer_impl: str = 'auto'
  remat: bool = False  # recompute block activations in the backward pass (memory for compute)

  def _block_kwargs(self, scale: int):
    return dict(heads=self.num_heads[scale], ffn_expansion_factor=self.ffn_expansion_factor,
                use_bias=self.bias, layernorm_type=self.layernorm_type, dtype=_as_dtype(self.dtype),
                layer_impl=layers.resolve_layer_impl(self.layer_impl))

  @nn.compact
  def __call__(self, ir: Array, vi: Array) -> dict:
    validate_inputs(ir, vi, self.in_channels)
    dtype = _as_dtype(self.dtype)
    impl = layers.resolve_layer_impl(self.layer_impl)
    if ir.shape[-1] == 1 and self.in_channels != 1:
      ir = jnp.repeat(ir, self.in_channels, axis=-1)  # the release feeds grey IR as 3 identical channels
    ir = ir.astype(dtype)
    vi = vi.astype(dtype)

    wrap = nn.remat if self.remat else (lambda cls: cls)
    conv3d, res_blocks, diff_enhance, aggregation, fusion, stack, down, up, co_attention, decoder = (
        wrap(c) for c in (blocks.Conv3DModule, blocks.ResidualBlocks, blocks.CrossModalityDiffEnhance,
                          blocks.CrossModalAggregation, blocks.FusionModule, blocks.TransformerStack,
                          blocks.Downsample, blocks.Upsample, blocks.StackedCoAttention, blocks.Decoder))
    widths = [self.num_features * 2 ** s for s in range(NUM_SCALES)]
    skips = []
    f_ir, f_vi = ir, vi
    for scale in range(NUM_SCALES):
      s = scale + 1
      kw = self._block_kwargs(scale)
      f_ir = _constrain(conv3d(widths[scale], dtype, impl, name=f'conv3d_ir_{s}')(f_ir))
      f_vi = _constrain(conv3d(widths[scale], dtype, impl, name=f'conv3d_vi_{s}')(f_vi))
      if scale > 0:  # scale 1 fuses the raw Conv3D features: no residual blocks, no CmDRM
        f_ir = res_blocks(RESIDUAL_BLOCKS_PER_SCALE, dtype, name=f'ir_conv_enhance_{s}')(f_ir)
        f_vi = res_blocks(RESIDUAL_BLOCKS_PER_SCALE, dtype, name=f'vi_conv_enhance_{s}')(f_vi)
        # CmDRM: differential enhancement, then aggregation with the pre-enhancement features.
        e_ir = diff_enhance(**kw, name=f'cross_modal_enhance_ir_{s}')(f_ir, f_vi)
        e_vi = diff_enhance(**kw, name=f'cross_modal_enhance_vi_{s}')(f_vi, f_ir)
        f_ir = aggregation(dtype, name=f'CMA_ir_{s}')(e_ir, f_ir)
        f_vi = aggregation(dtype, name=f'CMA_vi_{s}')(e_vi, f_vi)
      fused = _constrain(fusion(**kw, name=f'fusion_{s}')(f_ir, f_vi))
      if scale < NUM_SCALES - 1:
        fused = _constrain(stack(**kw, num_layers=self.num_blocks[scale], name=f'fusion_enhance_{s}')(fused))
        skips.append(fused)
        f_ir = down(dtype, name=f'down_ir_{s}')(f_ir)
        f_vi = down(dtype, name=f'down_vi_{s}')(f_vi)

    # Decoder path: BiCAM at the coarsest scale, then upsample + skip + BiCAM at each finer scale.
    x = fused
    for scale in reversed(range(NUM_SCALES)):
      if scale < NUM_SCALES - 1:
        x = up(dtype, name=f'up{scale + 1}')(x) + skips[scale]
      x = _constrain(co_attention(**self._block_kwargs(scale), num_layers=self.num_blocks[scale],
                                  name=f'co_attention_{scale + 1}')(x))

    g_ir, g_vi = blocks.VideoDecomposition(dtype, name='decomposition')(x)
    decoder_kwargs = dict(out_channels=self.out_channels, num_blocks=self.num_decoder_blocks,
                          heads=self.num_heads[0], ffn_expansion_factor=self.ffn_expansion_factor,
                          use_bias=self.bias, layernorm_type=self.layernorm_type, dtype=dtype, layer_impl=impl)
    raw = {
        'fusion': decoder(**decoder_kwargs, name='decoder_fusion')(x),
        'ir': decoder(**decoder_kwargs, name='decoder_ir')(g_ir),
        'vi': decoder(**decoder_kwargs, name='decoder_vi')(g_vi),
    }
    return {k: _constrain((jnp.tanh(v.astype(jnp.float32)) + 1.0) / 2.0) for k, v in raw.items()}
