"""Primitive layers and block rules against independent numpy computations.

Conv3D and the depthwise convolution have two formulations (``layer_impl`` 'cpu_tuned' and 'xla'); each is
checked against the direct numpy sums, forward and gradients.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from vfusion_jax.models import blocks, layers

CONV3D = {'cpu_tuned': layers.conv3d_3x3x3, 'xla': layers.conv3d_3x3x3_xla}
DEPTHWISE = {'cpu_tuned': layers.depthwise_conv3x3, 'xla': layers.depthwise_conv3x3_xla}


def _init(module, *args, key=0):
  """Plain (unboxed) variables of ``module``: the layers box their params with logical axis names."""
  return nn.unbox(module.init(jax.random.key(key), *args))


def _init_apply(module, *args):
  variables = _init(module, *args)
  return variables['params'], np.asarray(module.apply(variables, *args))


@pytest.mark.parametrize('kind', ['WithBias', 'BiasFree'])
def test_layernorm_matches_numpy(kind):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 5, 8)).astype(np.float32) * 3 + 1
  params, y = _init_apply(layers.LayerNorm(kind), x)
  weight = rng.normal(size=8).astype(np.float32)
  params = {'scale': weight, **({'bias': np.full(8, 0.5, np.float32)} if kind == 'WithBias' else {})}
  y = np.asarray(layers.LayerNorm(kind).apply({'params': params}, x))
  x64 = x.astype(np.float64)
  mu = x64.mean(-1, keepdims=True)
  var = ((x64 - mu) ** 2).mean(-1, keepdims=True)  # biased variance
  if kind == 'WithBias':
    expected = (x64 - mu) / np.sqrt(var + 1e-5) * weight + 0.5
  else:
    expected = x64 / np.sqrt(var + 1e-5) * weight  # not centred
  np.testing.assert_allclose(y, expected, atol=2e-5)


def test_pixel_unshuffle_channel_order():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 8, 3)).astype(np.float32)
  y = np.asarray(layers.pixel_unshuffle(jnp.asarray(x), 2))
  assert y.shape == (2, 3, 4, 12)
  for c in range(3):
    for i in range(2):
      for j in range(2):
        # torch.nn.PixelUnshuffle: out[c*4 + i*2 + j, y, x] = in[c, 2y+i, 2x+j]
        np.testing.assert_array_equal(y[..., c * 4 + i * 2 + j], x[:, i::2, j::2, c])


def test_upsample_align_corners_matches_formula():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 3, 5, 2)).astype(np.float32)
  y = np.asarray(layers.upsample_bilinear_align_corners(jnp.asarray(x), 2))
  assert y.shape == (1, 6, 10, 2)

  def interp_axis(a, axis):
    n_in = a.shape[axis]
    n_out = 2 * n_in
    out = []
    for d in range(n_out):
      src = d * (n_in - 1) / (n_out - 1)
      i0 = int(np.floor(src))
      i1 = min(i0 + 1, n_in - 1)
      w = src - i0
      out.append((1 - w) * np.take(a, i0, axis) + w * np.take(a, i1, axis))
    return np.stack(out, axis)

  expected = interp_axis(interp_axis(x.astype(np.float64), 1), 2)
  np.testing.assert_allclose(y, expected, atol=1e-6)
  # align_corners=True keeps the corner pixels exactly.
  np.testing.assert_allclose(y[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]], atol=1e-7)


def _conv2d_numpy(x, kernel, groups=1):
  """Direct zero-padded 'same' cross-correlation. x (N,H,W,Cin), kernel (k,k,Cin/groups,Cout)."""
  k = kernel.shape[0]
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  n, h, w, cin = x.shape
  cout = kernel.shape[-1]
  out = np.zeros((n, h, w, cout))
  per_group_in, per_group_out = cin // groups, cout // groups
  for o in range(cout):
    g = o // per_group_out
    for dy in range(k):
      for dx in range(k):
        patch = xp[:, dy:dy + h, dx:dx + w, g * per_group_in:(g + 1) * per_group_in]
        out[..., o] += patch @ kernel[dy, dx, :, o]
  return out


@pytest.mark.parametrize('impl', ['cpu_tuned', 'xla'])
def test_depthwise_conv_matches_direct_sum(impl):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5, 7, 4)).astype(np.float32)
  params, y = _init_apply(layers.DepthwiseConv3x3(layer_impl=impl), x)
  np.testing.assert_allclose(y, _conv2d_numpy(x, np.asarray(params['kernel'], np.float64), groups=4), atol=1e-5)


def test_conv2d_and_conv1x1_match_direct_sum():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 3, 5, 6, 4)).astype(np.float32)  # two leading batch axes
  params, y = _init_apply(layers.Conv2D(5, 3), x)
  expected = _conv2d_numpy(x.reshape(6, 5, 6, 4), np.asarray(params['kernel'], np.float64)) + params['bias']
  np.testing.assert_allclose(y.reshape(6, 5, 6, 5), expected, atol=1e-5)
  params, y = _init_apply(layers.Conv1x1(3, use_bias=True), x)
  expected = x @ np.asarray(params['kernel'])[0, 0] + params['bias']
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_grouped_conv1x1_and_depthwise_match_one_map():
  """Conv1x1(output_groups=g) and DepthwiseConv3x3 on the groups equal splitting the direct full-map results."""
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  module = layers.Conv1x1(9, use_bias=True, output_groups=3)
  params = _init(module, x)['params']
  groups = module.apply({'params': params}, x)
  full = x @ np.asarray(params['kernel'])[0, 0] + params['bias']
  assert len(groups) == 3
  for got, want in zip(groups, np.split(full, 3, axis=-1)):
    np.testing.assert_allclose(got, want, atol=1e-5)
  depthwise = layers.DepthwiseConv3x3(use_bias=True)
  dw_params = _init(depthwise, groups, key=1)['params']
  assert dw_params['kernel'].shape == (3, 3, 1, 9)
  outs = depthwise.apply({'params': dw_params}, groups)
  expected = _conv2d_numpy(full, np.asarray(dw_params['kernel'], np.float64), groups=9) + dw_params['bias']
  for got, want in zip(outs, np.split(expected, 3, axis=-1)):
    np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(ValueError, match='equal groups'):
    layers.Conv1x1(8, output_groups=3).init(jax.random.key(0), x)


def test_channel_attention_matches_per_head_numpy():
  """Full-Gram channel attention equals the release's per-head form: normalise q and k, softmax, apply to v."""
  rng = np.random.default_rng(7)
  heads, (b, h, w, c) = 4, (3, 5, 6, 8)
  q, k, v = (rng.normal(size=(b, h, w, c)).astype(np.float32) for _ in range(3))
  temperature = rng.uniform(0.5, 2.0, size=heads).astype(np.float32)
  attn = jax.nn.softmax(blocks._attention_logits(q, k, temperature, heads), axis=-1)
  out = np.asarray(blocks._apply_attention(attn, v, jnp.float32))
  ch = c // heads
  for i in range(b):
    for head in range(heads):
      cols = slice(head * ch, (head + 1) * ch)
      qh, kh, vh = (t[i, ..., cols].reshape(h * w, ch).T.astype(np.float64) for t in (q, k, v))  # (ch, N)
      qh = qh / np.maximum(np.linalg.norm(qh, axis=1, keepdims=True), 1e-12)
      kh = kh / np.maximum(np.linalg.norm(kh, axis=1, keepdims=True), 1e-12)
      logits = qh @ kh.T * temperature[head]
      probs = np.exp(logits - logits.max(axis=1, keepdims=True))
      probs /= probs.sum(axis=1, keepdims=True)
      np.testing.assert_allclose(out[i, ..., cols], (probs @ vh).T.reshape(h, w, ch), atol=1e-5)


def test_conv3d_zero_pads_time():
  """Frames outside [0, T) are zeros: a clip and its zero-extended copy agree on the original frames."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(1, 3, 4, 4, 2)).astype(np.float32)
  module = layers.Conv3D(3)
  params = _init(module, x)
  y = np.asarray(module.apply(params, x))
  x_ext = np.concatenate([np.zeros_like(x[:, :1]), x, np.zeros_like(x[:, :1])], axis=1)
  y_ext = np.asarray(module.apply(params, x_ext))
  np.testing.assert_allclose(y, y_ext[:, 1:-1], atol=1e-5)
  # Independent check of one output value: frame 0 sees only frames 0 and 1 (tap kt=0 hits the zero frame).
  kernel = np.asarray(params['params']['kernel'], np.float64)
  xp = np.pad(x[0].astype(np.float64), ((1, 1), (1, 1), (1, 1), (0, 0)))
  value = sum(xp[kt, 1 + dy, 1 + dx] @ kernel[kt, dy, dx]
              for kt in range(3) for dy in range(3) for dx in range(3))
  np.testing.assert_allclose(y[0, 0, 1, 1], value + params['params']['bias'], atol=1e-5)


def _conv3d_numpy(x, kernel):
  """Direct float64 3x3x3 cross-correlation, zero padding 1: x (T, H, W, Cin), kernel (3, 3, 3, Cin, Cout)."""
  t, h, w, _ = x.shape
  xp = np.pad(x.astype(np.float64), ((1, 1), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((t, h, w, kernel.shape[-1]))
  for kt in range(3):
    for dy in range(3):
      for dx in range(3):
        y += xp[kt:kt + t, dy:dy + h, dx:dx + w] @ kernel[kt, dy, dx].astype(np.float64)
  return y


def _conv3d_numpy_grads(x, kernel, g):
  """Gradients (dx, dkernel) of sum(conv3d(x, kernel) * g) by the direct sums, float64.

  x (T, H, W, Cin), kernel (3, 3, 3, Cin, Cout), g (T, H, W, Cout): every tap reads a shifted window of the
  zero-padded x, so dkernel[tap] = window^T g and the window's gradient gains g kernel[tap]^T.
  """
  t, h, w, _ = x.shape
  xp = np.pad(x.astype(np.float64), ((1, 1), (1, 1), (1, 1), (0, 0)))
  dxp, dk = np.zeros_like(xp), np.zeros(kernel.shape)
  g, kernel = g.astype(np.float64), kernel.astype(np.float64)
  for kt, dy, dx in itertools.product(range(3), repeat=3):
    window = (slice(kt, kt + t), slice(dy, dy + h), slice(dx, dx + w))
    dk[kt, dy, dx] = np.einsum('thwi,thwo->io', xp[window], g)
    dxp[window] += g @ kernel[kt, dy, dx].T
  return dxp[1:-1, 1:-1, 1:-1], dk


# 'cpu_tuned' stacks the frames below CONV3D_STACK_FRAMES_BELOW_CHANNELS input channels and sums per-tap 2-D
# convolutions from there: both branches; 'xla' is one formulation whatever Cin.
CONV3D_CASES = [('cpu_tuned', 1), ('cpu_tuned', 3), ('cpu_tuned', layers.CONV3D_STACK_FRAMES_BELOW_CHANNELS),
                ('xla', 3)]


@pytest.mark.parametrize('impl, cin', CONV3D_CASES)
@pytest.mark.parametrize('frames', [1, 2, 5])
def test_conv3d_matches_direct_sum(impl, cin, frames):
  """Both Conv3D formulations equal the direct 27-tap sum."""
  rng = np.random.default_rng(cin * 10 + frames)
  x = rng.normal(size=(2, frames, 5, 6, cin)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, cin, 4)).astype(np.float32)
  y = np.asarray(jax.jit(CONV3D[impl])(x, kernel))
  for b in range(2):
    # float32 sums of 27*Cin products of O(1) terms: rounding well under 1e-4.
    np.testing.assert_allclose(y[b], _conv3d_numpy(x[b], kernel), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('impl, cin', [case for case in CONV3D_CASES if case[1] > 1])
def test_conv3d_gradients_match_direct_sum(impl, cin):
  """Input and kernel gradients of both Conv3D formulations equal the direct sums."""
  rng = np.random.default_rng(cin)
  x = rng.normal(size=(2, 4, 6, 5, cin)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, cin, 3)).astype(np.float32)
  weights = rng.normal(size=(2, 4, 6, 5, 3)).astype(np.float32)
  dx, dk = jax.jit(jax.grad(lambda x, k: jnp.sum(CONV3D[impl](x, k) * weights), argnums=(0, 1)))(x, kernel)
  want = [_conv3d_numpy_grads(x[b], kernel, weights[b]) for b in range(2)]
  # Sums of up to 27*Cout (dx) or B*T*H*W = 240 (dk) float32 products of O(1) terms: rounding under 1e-4.
  np.testing.assert_allclose(dx, np.stack([d for d, _ in want]), atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(dk, sum(k for _, k in want), atol=1e-4, rtol=1e-5)


def test_bicam_boundary_rule():
  """prev/next of the release's per-frame loop: frame 0 is its own predecessor, frame T-1 its own successor."""
  x = np.arange(2 * 5).reshape(2, 5).astype(np.float32)[..., None]
  prev = np.asarray(blocks.shift_previous(jnp.asarray(x)))
  nxt = np.asarray(blocks.shift_next(jnp.asarray(x)))
  t_count = x.shape[1]
  for t in range(t_count):
    expected_prev = x[:, 0] if t == 0 else x[:, t - 1]
    expected_next = x[:, t_count - 1] if t == t_count - 1 else x[:, t + 1]
    np.testing.assert_array_equal(prev[:, t], expected_prev)
    np.testing.assert_array_equal(nxt[:, t], expected_next)


def test_co_transformer_block_equals_per_frame_loop():
  """The time-vectorised BiCAM layer equals the release's loop over frames with explicit neighbours."""
  rng = np.random.default_rng(6)
  x = rng.normal(size=(1, 4, 4, 4, 8)).astype(np.float32)
  block = blocks.CoTransformerBlock(heads=2)
  variables = _init(block, x, key=1)
  y = np.asarray(block.apply(variables, x))
  p = variables['params']
  norm = layers.LayerNorm()
  ln = lambda a: np.asarray(norm.apply({'params': p['norm1']}, a))
  attn_p = p['attn']

  def conv1(a, name):
    return a @ np.asarray(attn_p[name]['kernel'])[0, 0]

  def dw(a, name):
    return _conv2d_numpy(a[None], np.asarray(attn_p[name]['kernel']), groups=a.shape[-1])[0]

  def heads(a):  # (H, W, C) -> (h, ch, N)
    return a.reshape(-1, 2, 4).transpose(1, 2, 0)

  def l2n(a):
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

  def softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  temp = np.asarray(attn_p['temperature'])[:, None, None]
  for t in range(4):
    xc, xp_, xn = x[0, t], x[0, max(t - 1, 0)], x[0, min(t + 1, 3)]
    q = heads(dw(conv1(ln(xc), 'q'), 'q_dwconv'))
    kvp = dw(conv1(ln(xp_), 'kv_prev'), 'kv_dwconv_prev')
    kvn = dw(conv1(ln(xn), 'kv_next'), 'kv_dwconv_next')
    kp, vp = heads(kvp[..., :8]), heads(kvp[..., 8:])
    kn, vn = heads(kvn[..., :8]), heads(kvn[..., 8:])
    a_p = softmax(l2n(q) @ l2n(kp).transpose(0, 2, 1) * temp)
    a_n = softmax(l2n(q) @ l2n(kn).transpose(0, 2, 1) * temp)
    a = softmax(a_p * a_n)
    out = (a @ vp).transpose(2, 0, 1).reshape(4, 4, 8) + (a @ vn).transpose(2, 0, 1).reshape(4, 4, 8)
    mid = xc + out @ np.asarray(attn_p['project_out']['kernel'])[0, 0]
    ffn_in = np.asarray(norm.apply({'params': p['norm2']}, mid))
    ffn = p['ffn']
    hdn = _conv2d_numpy((ffn_in @ np.asarray(ffn['project_in']['kernel'])[0, 0])[None],
                        np.asarray(ffn['dwconv']['kernel']), groups=16)[0]
    gelu = np.asarray(jax.nn.gelu(jnp.asarray(hdn[..., :8]), approximate=False))
    expected = mid + (gelu * hdn[..., 8:]) @ np.asarray(ffn['project_out']['kernel'])[0, 0]
    np.testing.assert_allclose(y[0, t], expected, atol=2e-5)


def _depthwise_numpy_grads(x, kernel, g):
  """Gradients (dx, dkernel) of sum(depthwise(x, kernel) * g) by the direct sums, float64.

  x and g (N, H, W, C), kernel (3, 3, C): each channel is its own 3x3 cross-correlation with zero padding 1.
  """
  _, h, w, _ = x.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  dxp, dk = np.zeros_like(xp), np.zeros(kernel.shape)
  g, kernel = g.astype(np.float64), kernel.astype(np.float64)
  for dy, dx in itertools.product(range(3), repeat=2):
    window = (slice(None), slice(dy, dy + h), slice(dx, dx + w))
    dk[dy, dx] = np.sum(xp[window] * g, axis=(0, 1, 2))
    dxp[window] += g * kernel[dy, dx]
  return dxp[:, 1:-1, 1:-1], dk


@pytest.mark.parametrize('impl', ['cpu_tuned', 'xla'])
def test_depthwise_gradients_match_direct_sum(impl):
  """The hand-written VJP ('cpu_tuned') and autodiff of XLA's grouped conv ('xla') equal the direct sums."""
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 3, 6, 5, 4)).astype(np.float32)  # (B, T, H, W, C): two leading batch axes
  kernel = rng.normal(size=(3, 3, 4)).astype(np.float32)
  weights = rng.normal(size=(2, 3, 6, 5, 4)).astype(np.float32)
  loss = lambda x, k: jnp.sum(DEPTHWISE[impl](x, k) * weights)
  value, (dx, dk) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)
  want = np.sum(_conv2d_numpy(x.reshape(6, 6, 5, 4), kernel[:, :, None, :].astype(np.float64), groups=4)
                * weights.reshape(6, 6, 5, 4))
  np.testing.assert_allclose(value, want, rtol=1e-5)
  want_dx, want_dk = _depthwise_numpy_grads(x.reshape(6, 6, 5, 4), kernel, weights.reshape(6, 6, 5, 4))
  # Sums of 9 (dx) or N*H*W = 180 (dk) float32 products of O(1) terms.
  np.testing.assert_allclose(dx, want_dx.reshape(x.shape), atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(dk, want_dk, atol=1e-4, rtol=1e-5)


def test_layer_impl_resolution(monkeypatch):
  """'auto' is 'cpu_tuned' on the CPU backend and 'xla' elsewhere, decided when called (at trace time)."""
  assert layers.resolve_layer_impl('auto') == 'cpu_tuned'  # the tests run on CPU
  assert layers.resolve_layer_impl('xla') == 'xla'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  assert layers.resolve_layer_impl('auto') == 'xla'
  assert layers.resolve_layer_impl('cpu_tuned') == 'cpu_tuned'
  with pytest.raises(ValueError, match='layer_impl must be one of'):
    layers.resolve_layer_impl('cuda')


def test_layer_impls_share_params_and_declare_logical_axes():
  """Both formulations have the same params (a checkpoint runs on either), boxed with their logical axes."""
  x = jnp.zeros((1, 2, 4, 4, 3))
  for module, kernel_axes in ((lambda impl: layers.Conv3D(5, layer_impl=impl), layers.CONV3D_KERNEL_AXES),
                              (lambda impl: layers.DepthwiseConv3x3(True, layer_impl=impl),
                               layers.CONV_KERNEL_AXES)):
    boxed = {impl: jax.eval_shape(module(impl).init, jax.random.key(0), x)['params'] for impl in ('cpu_tuned', 'xla')}
    assert nn.get_partition_spec(boxed['xla']) == {'kernel': P(*kernel_axes), 'bias': P(*layers.BIAS_AXES)}
    assert nn.unbox(boxed['cpu_tuned']) == nn.unbox(boxed['xla'])  # names, shapes and dtypes
