"""Primitive layers of VideoFusion, channels-last.

Every layer here works on arrays of shape (*batch, H, W, C) with any number of leading batch axes (usually
(B, T)), so the time axis never has to be folded into the batch and can be sharded. Parameter names and shapes
follow the official PyTorch release (see ``vfusion_jax.convert``): ``kernel`` is (kh, kw, Cin, Cout), a
depthwise kernel is (kh, kw, 1, C), a Conv3D kernel is (kt, kh, kw, Cin, Cout).

Initialisers reproduce PyTorch's defaults (REFERENCE.md section 4) so that training from scratch starts from
the same distribution as the official code. Every parameter is declared with ``nn.with_logical_partitioning``
and the logical names of its axes (below), so ``init`` returns ``nn.LogicallyPartitioned`` boxes from which
``vfusion_jax.sharding`` derives shardings; ``nn.unbox`` gives the plain arrays that are stored and applied.

``layer_impl`` selects how the two convolutions XLA:CPU runs slowly are computed (`resolve_layer_impl`):
'cpu_tuned' (Conv3D as 2-D convolutions, the depthwise conv as fused shifted taps with a hand-written VJP,
both measured on CPU in docs/performance.md) or 'xla' (XLA's own 3-D and grouped convolutions, for GPU/TPU).
Both have the same parameters, so a checkpoint runs on either.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
Dtype = Any

# Logical axis names, what each axis of a parameter or activation is. One rules table
# (``config.sharding.logical_axis_rules``, vfusion_jax/sharding.py) maps each name to a mesh axis or None.
ACTIVATION_AXES = ('batch', 'time', 'height', 'width', 'channels')  # a (B, T, H, W, C) clip
# 2-D, 1x1 and depthwise kernels, HWIO (a depthwise kernel's I is its one input channel per group).
CONV_KERNEL_AXES = ('kernel_height', 'kernel_width', 'conv_in', 'conv_out')
CONV3D_KERNEL_AXES = ('kernel_time',) + CONV_KERNEL_AXES
BIAS_AXES = ('conv_out',)  # a convolution's bias, one per output channel
NORM_AXES = ('norm_channels',)  # LayerNorm scale and bias
HEADS_AXES = ('heads',)  # per-head attention temperatures
PARAM_AXES = CONV3D_KERNEL_AXES + NORM_AXES + HEADS_AXES  # every name a parameter axis may have

LAYER_IMPLS = ('auto', 'cpu_tuned', 'xla')


def resolve_layer_impl(layer_impl: str) -> str:
  """'cpu_tuned' or 'xla' for a ``layer_impl`` of `LAYER_IMPLS`; 'auto' is 'cpu_tuned' on the CPU backend.

  Called while tracing, so 'auto' follows the backend the network runs on, not the one a config was saved on.
  """
  if layer_impl not in LAYER_IMPLS:
    raise ValueError(f'layer_impl must be one of {LAYER_IMPLS}, got {layer_impl!r}')
  if layer_impl == 'auto':
    return 'cpu_tuned' if jax.default_backend() == 'cpu' else 'xla'
  return layer_impl


def logical_param(module: nn.Module, name: str, init: Callable, shape: tuple, names: tuple) -> Array:
  """A float32 parameter whose axes have the logical ``names`` (one per axis of ``shape``); its plain value."""
  if len(names) != len(shape):
    raise ValueError(f'{name}: {len(names)} logical axis names {names} for a parameter of shape {shape}')
  return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)

# PyTorch's default Conv initialisation is kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
# and the same bound for the bias.


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for a channels-last kernel (*spatial, Cin_per_group, Cout)."""
  fan_in = int(np.prod(shape[:-1]))
  bound = 1.0 / np.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_bias_init(fan_in: int) -> Callable:
  """Bias initialiser U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's Conv default)."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def scaled_kaiming_normal_init(scale: float) -> Callable:
  """Kaiming-normal (fan_in, gain sqrt(2)) times ``scale``: BasicSR's init of residual-block convs."""

  def init(key, shape, dtype=jnp.float32):
    fan_in = int(np.prod(shape[:-1]))
    return jax.random.normal(key, shape, dtype) * (np.sqrt(2.0 / fan_in) * scale)

  return init


def leaky_relu(x: Array, slope: float) -> Array:
  return jnp.where(x >= 0, x, x * slope)


def gelu_exact(x: Array) -> Array:
  """The erf GELU of PyTorch's ``F.gelu`` (flax's ``nn.gelu`` defaults to the tanh approximation)."""
  return nn.gelu(x, approximate=False)


class LayerNorm(nn.Module):
  """Per-pixel LayerNorm over channels; 'WithBias' (Restormer's default) or 'BiasFree'.

  Input (..., C), output (..., C). Statistics are computed in float32 whatever the compute dtype.
  The variance is the biased one (mean of squared deviations), eps 1e-5, as in the release.
  """

  layernorm_type: str = 'WithBias'
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    weight = logical_param(self, 'scale', nn.initializers.ones, (features,), NORM_AXES)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    inv = jax.lax.rsqrt(var + self.epsilon)
    if self.layernorm_type == 'BiasFree':
      y = xf * inv * weight
    elif self.layernorm_type == 'WithBias':
      bias = logical_param(self, 'bias', nn.initializers.zeros, (features,), NORM_AXES)
      y = (xf - mean) * inv * weight + bias
    else:
      raise ValueError(f"layernorm_type must be 'WithBias' or 'BiasFree', got {self.layernorm_type!r}")
    return y.astype(self.dtype)


class Conv1x1(nn.Module):
  """1x1 convolution as a matrix product over the channel axis. (..., Cin) -> (..., Cout).

  ``output_groups`` > 1 returns the output as that many equal contiguous channel groups (a tuple, as
  ``jnp.split(y, output_groups, -1)`` would), each computed by its own product with its slice of the kernel:
  the groups come out as separate contiguous arrays, where splitting one product's output would copy them.
  """

  features: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Callable = torch_default_kernel_init
  output_groups: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array | tuple[Array, ...]:
    cin = x.shape[-1]
    if self.features % self.output_groups:
      raise ValueError(f'{self.features} output channels cannot form {self.output_groups} equal groups')
    kernel = logical_param(self, 'kernel', self.kernel_init, (1, 1, cin, self.features), CONV_KERNEL_AXES)
    kernel = kernel.reshape(cin, self.features).astype(self.dtype)
    bias = (logical_param(self, 'bias', torch_default_bias_init(cin), (self.features,), BIAS_AXES).astype(self.dtype)
            if self.use_bias else None)
    x = x.astype(self.dtype)
    size = self.features // self.output_groups
    outputs = []
    for g in range(self.output_groups):
      y = jnp.dot(x, kernel[:, g * size:(g + 1) * size], preferred_element_type=self.dtype)
      outputs.append(y if bias is None else y + bias[g * size:(g + 1) * size])
    return outputs[0] if self.output_groups == 1 else tuple(outputs)


def _flatten_batch(x: Array, spatial_rank: int):
  """(*batch, *spatial, C) -> (N, *spatial, C) and the batch shape to restore."""
  batch_shape = x.shape[:x.ndim - spatial_rank - 1]
  return x.reshape((-1,) + x.shape[x.ndim - spatial_rank - 1:]), batch_shape


def _conv2d_same(x: Array, kernel: Array, dtype: Dtype) -> Array:
  """k x k cross-correlation, stride 1, zero padding k // 2: (*batch, H, W, Cin), kernel (k, k, Cin, Cout)."""
  xf, batch_shape = _flatten_batch(x, 2)
  pad = kernel.shape[0] // 2
  y = jax.lax.conv_general_dilated(
      xf, kernel, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), preferred_element_type=dtype)
  return y.reshape(batch_shape + y.shape[1:])


class Conv2D(nn.Module):
  """k x k convolution, stride 1, zero 'same' padding. (*batch, H, W, Cin) -> (*batch, H, W, Cout)."""

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable = torch_default_kernel_init
  bias_init: Callable | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    cin = x.shape[-1]
    kernel = logical_param(self, 'kernel', self.kernel_init, (k, k, cin, self.features), CONV_KERNEL_AXES)
    y = _conv2d_same(x.astype(self.dtype), kernel.astype(self.dtype), self.dtype)
    if self.use_bias:
      bias_init = self.bias_init or torch_default_bias_init(k * k * cin)
      bias = logical_param(self, 'bias', bias_init, (self.features,), BIAS_AXES)
      y = y + bias.astype(self.dtype)
    return y


def _shifted_taps(xp: Array, kernel: Array, h: int, w: int) -> Array:
  """sum over the 3x3 taps of xp[..., dy:dy+h, dx:dx+w, :] * kernel[dy, dx]; xp is padded by 1. One fusion."""
  y = None
  for dy in range(3):
    for dx in range(3):
      term = xp[..., dy:dy + h, dx:dx + w, :] * kernel[dy, dx]
      y = term if y is None else y + term
  return y


def _pad_hw(x: Array, materialize: bool = False) -> Array:
  """Zero-pads H and W by 1. ``materialize`` makes the padded array its own buffer instead of fusing the
  padding into the nine shifted reads: measured faster in the backward pass (bounds-checked reads of two
  streams), slower in the forward (one more pass over memory) on this CPU (docs/performance.md)."""
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
  return jax.lax.optimization_barrier(padded) if materialize else padded


@jax.custom_vjp
def depthwise_conv3x3(x: Array, kernel: Array) -> Array:
  """Depthwise 3x3 cross-correlation, zero padding 1. x (*batch, H, W, C), kernel (3, 3, C) -> like x.

  Nine shifted multiply-adds fuse into one pass. The custom VJP keeps the backward pass to one fused pass for
  the input gradient (the same taps with the kernel flipped) and nine reductions for the kernel gradient;
  autodiff of the shifted form would materialise nine padded copies of the output gradient at once.
  """
  return _shifted_taps(_pad_hw(x), kernel, x.shape[-3], x.shape[-2])


def _depthwise_fwd(x, kernel):
  return depthwise_conv3x3(x, kernel), (x, kernel)


def _depthwise_bwd(residuals, g):
  x, kernel = residuals
  h, w, c = x.shape[-3:]
  dx = _shifted_taps(_pad_hw(g, materialize=True), kernel[::-1, ::-1], h, w)
  xp = _pad_hw(x, materialize=True)
  # Each tap's kernel gradient sums x_shifted * g over every pixel: first over the rows (the leading axes,
  # contiguous (W, C) rows added together, which vectorises), then over W.
  dk = jnp.stack([jnp.stack([jnp.sum(jnp.sum((xp[..., dy:dy + h, dx_:dx_ + w, :] * g).reshape(-1, w, c), axis=0),
                                     axis=0) for dx_ in range(3)]) for dy in range(3)])
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


depthwise_conv3x3.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv3x3_xla(x: Array, kernel: Array) -> Array:
  """``depthwise_conv3x3`` as XLA's grouped convolution (one group per channel), differentiated by autodiff.

  x (*batch, H, W, C), kernel (3, 3, C) -> like x. The 'xla' formulation: GPU and TPU compilers have their
  own depthwise kernels, which the shifted-tap form and its custom VJP would hide from them.
  """
  xf, batch_shape = _flatten_batch(x, 2)
  y = jax.lax.conv_general_dilated(
      xf, kernel[:, :, None, :], window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1],
      preferred_element_type=x.dtype)
  return y.reshape(batch_shape + y.shape[1:])


class DepthwiseConv3x3(nn.Module):
  """Depthwise 3x3 convolution (groups = channels), zero padding 1.

  (*batch, H, W, C) -> same shape. Kernel parameter (3, 3, 1, C), as a grouped Flax/PyTorch conv. Given a
  tuple of arrays (the channel groups of one C-channel map, as ``Conv1x1(output_groups=...)`` returns them),
  the kernel covers their channels in order and a tuple of the convolved groups is returned. Computed by
  ``depthwise_conv3x3`` ('cpu_tuned') or ``depthwise_conv3x3_xla`` ('xla'), see `resolve_layer_impl`.
  """

  use_bias: bool = False
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array | tuple[Array, ...]) -> Array | tuple[Array, ...]:
    parts = x if isinstance(x, (tuple, list)) else (x,)
    c = sum(p.shape[-1] for p in parts)
    conv = depthwise_conv3x3 if resolve_layer_impl(self.layer_impl) == 'cpu_tuned' else depthwise_conv3x3_xla
    kernel = logical_param(self, 'kernel', torch_default_kernel_init, (3, 3, 1, c), CONV_KERNEL_AXES)
    kernel = kernel[:, :, 0].astype(self.dtype)
    bias = (logical_param(self, 'bias', torch_default_bias_init(9), (c,), BIAS_AXES).astype(self.dtype)
            if self.use_bias else None)
    outputs, start = [], 0
    for part in parts:
      stop = start + part.shape[-1]
      y = conv(part.astype(self.dtype), kernel[..., start:stop])
      outputs.append(y if bias is None else y + bias[start:stop])
      start = stop
    return tuple(outputs) if isinstance(x, (tuple, list)) else outputs[0]


# Below this many input channels Conv3D stacks the three frames along channels (one 2-D convolution with
# 27*Cin taps); at or above it, it sums three per-tap 2-D convolutions (docs/performance.md, "Intel Xeon with AVX-512").
CONV3D_STACK_FRAMES_BELOW_CHANNELS = 8


def conv3d_3x3x3(x: Array, kernel: Array, dtype: Dtype = jnp.float32) -> Array:
  """3x3x3 cross-correlation over (T, H, W), zero padding 1 on every axis, as 2-D convolutions.

  x (B, T, H, W, Cin), kernel (3, 3, 3, Cin, Cout) indexed (kt, kh, kw, Cin, Cout); returns (B, T, H, W, Cout).
  Output frame t is the sum over kt of a 2-D convolution of frame t + kt - 1 (zeros outside [0, T)) with
  kernel[kt]. XLA:CPU runs 2-D convolutions 2-4x faster than its 3-D convolution on these shapes (measured in
  docs/performance.md): with few input channels the three frames are stacked along channels and convolved
  once (3*Cin channels, kernel (3, 3, 3*Cin, Cout)); otherwise the three per-tap convolutions are summed.
  """
  cin = x.shape[-1]
  rest = ((0, 0),) * (x.ndim - 2)
  # Frames t-1, t, t+1 for every t, zeros outside the clip. Slicing before padding keeps each shifted copy the
  # shape of x, so with time sharded the shift is a one-frame halo exchange between neighbouring devices
  # (padding first and slicing after makes XLA move whole shards).
  taps = [jnp.pad(x[:, :-1], ((0, 0), (1, 0)) + rest), x, jnp.pad(x[:, 1:], ((0, 0), (0, 1)) + rest)]
  if cin < CONV3D_STACK_FRAMES_BELOW_CHANNELS:
    stacked_kernel = jnp.concatenate(list(kernel), axis=2)  # (3, 3, 3*Cin, Cout), kt-major along Cin
    return _conv2d_same(jnp.concatenate(taps, axis=-1), stacked_kernel, dtype)
  y = None
  for kt in range(3):
    term = _conv2d_same(taps[kt], kernel[kt], dtype)
    y = term if y is None else y + term
  return y


def conv3d_3x3x3_xla(x: Array, kernel: Array, dtype: Dtype = jnp.float32) -> Array:
  """``conv3d_3x3x3`` as XLA's own 3-D convolution (the 'xla' formulation, for GPU and TPU).

  x (B, T, H, W, Cin), kernel (3, 3, 3, Cin, Cout) -> (B, T, H, W, Cout); zero padding 1 on T, H and W.
  """
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1, 1), padding=((1, 1),) * 3,
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'), preferred_element_type=dtype)


class Conv3D(nn.Module):
  """3x3x3 convolution over (T, H, W), zero padding 1 on every axis (frames outside [0, T) are zeros), bias.

  (B, T, H, W, Cin) -> (B, T, H, W, Cout), computed by ``conv3d_3x3x3`` ('cpu_tuned') or
  ``conv3d_3x3x3_xla`` ('xla'), see `resolve_layer_impl`.
  """

  features: int
  dtype: Dtype = jnp.float32
  layer_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cin = x.shape[-1]
    conv = conv3d_3x3x3 if resolve_layer_impl(self.layer_impl) == 'cpu_tuned' else conv3d_3x3x3_xla
    kernel = logical_param(self, 'kernel', torch_default_kernel_init, (3, 3, 3, cin, self.features),
                           CONV3D_KERNEL_AXES)
    bias = logical_param(self, 'bias', torch_default_bias_init(27 * cin), (self.features,), BIAS_AXES)
    y = conv(x.astype(self.dtype), kernel.astype(self.dtype), self.dtype)
    return y + bias.astype(self.dtype)


def pixel_unshuffle(x: Array, factor: int = 2) -> Array:
  """PyTorch PixelUnshuffle in channels-last layout.

  (*batch, H, W, C) -> (*batch, H/f, W/f, C*f*f) with output channel index c*f*f + i*f + j holding the input
  pixel (f*y + i, f*x + j) of channel c, exactly as ``torch.nn.PixelUnshuffle``.
  """
  *batch, h, w, c = x.shape
  if h % factor or w % factor:
    raise ValueError(f'pixel_unshuffle needs H and W divisible by {factor}, got {(h, w)}')
  nb = len(batch)
  x = x.reshape(*batch, h // factor, factor, w // factor, factor, c)
  # axes: batch..., Y, i, X, j, c  ->  batch..., Y, X, c, i, j
  perm = list(range(nb)) + [nb, nb + 2, nb + 4, nb + 1, nb + 3]
  x = jnp.transpose(x, perm)
  return x.reshape(*batch, h // factor, w // factor, c * factor * factor)


def _align_corners_taps(n_in: int, n_out: int):
  """Source indices (i0, i1) and weights w of 1-D linear interpolation with align_corners=True."""
  if n_out == 1 or n_in == 1:
    src = np.zeros(n_out)
  else:
    src = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
  i0 = np.floor(src).astype(np.int32)
  i0 = np.minimum(i0, n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w = (src - i0).astype(np.float32)
  return i0, i1, w


def upsample_bilinear_align_corners(x: Array, factor: int = 2) -> Array:
  """Bilinear x``factor`` upsampling with align_corners=True, as PyTorch's ``F.interpolate``.

  (*batch, H, W, C) -> (*batch, H*f, W*f, C). ``jax.image.resize`` uses half-pixel centres and differs.
  """
  h, w = x.shape[-3], x.shape[-2]
  i0, i1, wy = _align_corners_taps(h, h * factor)
  wy = jnp.asarray(wy, x.dtype)[:, None, None]
  x = jnp.take(x, i0, axis=-3) * (1 - wy) + jnp.take(x, i1, axis=-3) * wy
  j0, j1, wx = _align_corners_taps(w, w * factor)
  wx = jnp.asarray(wx, x.dtype)[:, None]
  return jnp.take(x, j0, axis=-2) * (1 - wx) + jnp.take(x, j1, axis=-2) * wx
