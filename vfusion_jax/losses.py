"""Training losses of VideoFusion: the released-code loss and the paper's loss.

Two losses are provided, selected by ``loss_config.name``:

* ``'released'`` (default): the loss the official code trains with
  (``Fusion_loss + Fidelity_loss + TemporalConsistency_loss``, REFERENCE.md §6).
  Terms are named like the official logged keys.
* ``'paper'``: our reading of the paper's Eq. 7-13 (five terms, no SSIM, no
  clamp), with either the literal ``sum_t ||.||_1 / HW`` normalisation or an
  element-mean normalisation (fixture manifest ``paper_variant``).

Layout is channels-last: videos are (B, T, H, W, C), values in [0, 1]. The
infrared ground truth may be single-channel (B, T, H, W, 1); it is broadcast to
three identical channels wherever the official code uses its 3-channel copy.
Everything is pure ``jnp`` and jit-able; the loss config is read at trace time
only (Python floats and strings, never traced values).
"""

import math
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Array = jax.Array

# BT.601 RGB -> YCbCr with the rounded coefficients of the official
# `RGB2YCrCb` (rows: Y, Cb, Cr; columns: R, G, B), chroma offset 128/255.
YCBCR_MATRIX = ((0.299, 0.587, 0.114),
                (-0.169, -0.331, 0.5),
                (0.5, -0.419, -0.081))
CHROMA_OFFSET = 128.0 / 255.0

# Sobel kernels, applied as cross-correlation (no flip) like `F.conv2d`.
SOBEL_X = np.array([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]], np.float32)
SOBEL_Y = SOBEL_X.T.copy()

# SSIM constants: C1 = (K1 * L)^2, C2 = (K2 * L)^2 with data range L. The
# official code detects L from the ground-truth argument; for images in [0, 1]
# it is always 1.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_DATA_RANGE = 1.0
SSIM_WINDOW_SIZE = 13
SSIM_SIGMA = 1.5

LOSS_NAMES = ('released', 'paper')
PAPER_NORMALISATIONS = ('literal', 'mean')

# Official logged keys of the released loss, in the order the code logs them.
RELEASED_LOGGED_KEYS = (
    'loss_intensity_max', 'loss_color', 'loss_grad', 'loss_intensity_consist',
    'loss_ssim', 'loss_fusion', 'ir_loss_intensity', 'ir_loss_grad',
    'ir_loss_fid', 'vi_loss_intensity', 'vi_loss_grad', 'vi_loss_fid',
    'l_cons_ir', 'l_cons_vi', 'l_cons_fusion')


def default_loss_config(name: str = 'released') -> ml_collections.ConfigDict:
  """Operative default loss configuration.

  Args:
    name: 'released' (the official training loss, REFERENCE.md §6; weights as
      hard-coded in the official code, which its yml cannot change) or 'paper'
      (Eq. 13 weights lambda_int 15, lambda_grad 1, lambda_color 100,
      lambda_sf 10, lambda_var 100).

  Returns:
    A ConfigDict with ``name``, ``weights`` and the variant's options.
  """
  if name == 'released':
    return ml_collections.ConfigDict({
        'name': 'released',
        'weights': {
            # Fusion_loss (forward defaults).
            'intensity_max': 15.0,        # L1(Y_f, max(Y_vi, Y_ir)).
            'intensity_consist': 1.0,     # Outer weight of L_cons.
            'intensity_consist_ir': 0.8,  # IR share inside L_cons.
            'color': 100.0,               # L1 on Cb and Cr.
            'grad': 1.0,                  # Max-gradient L1, x and y.
            'ssim': 1.0,                  # Outer weight of the SSIM pair.
            'ssim_ir': 1.0,               # IR (Y) SSIM share.
            # Fidelity_loss, per modality.
            'fidelity_intensity': 10.0,
            'fidelity_grad': 10.0,
            # TemporalConsistency_loss (model default; the paper says 100).
            'temporal': 10.0,
        },
        'ssim_window_size': SSIM_WINDOW_SIZE,
        'ssim_sigma': SSIM_SIGMA,
    })
  if name == 'paper':
    return ml_collections.ConfigDict({
        'name': 'paper',
        'weights': {
            'intensity': 15.0,   # lambda_int, Eq. 7.
            'grad': 1.0,         # lambda_grad, Eq. 8.
            'color': 100.0,      # lambda_color, Eq. 9.
            'fidelity': 10.0,    # lambda_sf, Eq. 10.
            'temporal': 100.0,   # lambda_var, Eq. 12.
        },
        # 'literal': per clip sum over frames of ||.||_1 / (H W), batch mean.
        # 'mean': mean over every element (code style).
        'paper_normalisation': 'literal',
        # 0: exact sqrt(Gx^2 + Gy^2) with a zero subgradient where it is 0.
        # > 0: sqrt(Gx^2 + Gy^2 + eps) (smooth; shifts values, see
        # `gradient_magnitude`).
        'grad_magnitude_eps': 0.0,
    })
  raise ValueError(f'Unknown loss name {name!r}; expected one of {LOSS_NAMES}.')


def _float(x: Array) -> Array:
  """Casts to float32 unless already float64 (bf16/f16 are promoted)."""
  x = jnp.asarray(x)
  return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


def _clamp01(x: Array) -> Array:
  """Clamps to [0, 1], passing the gradient on the closed interval (torch)."""
  return jnp.where(x < 0.0, 0.0, jnp.where(x > 1.0, 1.0, x))


def _abs(x: Array) -> Array:
  """|x| with torch's derivative sign(x), i.e. 0 at x = 0.

  ``jnp.abs`` differentiates to +1 at 0; the official loss hits |0| in flat
  regions (e.g. Sobel of a constant patch), where torch propagates nothing.
  """
  return x * jnp.sign(x)


def _to_rgb(x: Array) -> Array:
  """Broadcasts a single-channel (..., 1) image to three identical channels."""
  if x.shape[-1] == 1:
    return jnp.broadcast_to(x, x.shape[:-1] + (3,))
  if x.shape[-1] != 3:
    raise ValueError(f'Expected 1 or 3 channels, got shape {x.shape}.')
  return x


def rgb_to_ycbcr(rgb: Array, clamp: bool = True) -> Array:
  """Converts RGB to YCbCr like the official ``RGB2YCrCb``.

  Y = 0.299R + 0.587G + 0.114B, Cb = -0.169R - 0.331G + 0.5B + 128/255,
  Cr = 0.5R - 0.419G - 0.081B + 128/255, each clamped to [0, 1] when
  ``clamp`` (the gradient is zero outside [0, 1] and passes on the boundary,
  as ``torch.clamp``). Y of a grey image (R = G = B = I) equals I up to 1 ulp.

  Args:
    rgb: (..., 3) RGB in [0, 1], channels last.
    clamp: clamp Y, Cb, Cr to [0, 1] (released loss) or not (paper loss).

  Returns:
    (..., 3) array with channels (Y, Cb, Cr), in [0, 1] when clamped.
  """
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  (yr, yg, yb), (br, bg, bb), (rr, rg, rb) = YCBCR_MATRIX
  y = yr * r + yg * g + yb * b
  cb = br * r + bg * g + bb * b + CHROMA_OFFSET
  cr = rr * r + rg * g + rb * b + CHROMA_OFFSET
  ycc = jnp.stack([y, cb, cr], axis=-1)
  return _clamp01(ycc) if clamp else ycc


def sobel_xy(x: Array) -> Tuple[Array, Array]:
  """Signed Sobel responses with 1-pixel replicate padding.

  Cross-correlation (no kernel flip) with ``SOBEL_X`` / ``SOBEL_Y``, per
  channel, output the same size as the input.

  Args:
    x: (..., H, W, C) images, channels last.

  Returns:
    (Gx, Gy), each (..., H, W, C).
  """
  h, w = x.shape[-3], x.shape[-2]
  pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
  p = jnp.pad(x, pad, mode='edge')
  shifted = [[p[..., i:i + h, j:j + w, :] for j in range(3)] for i in range(3)]

  def correlate(kernel):
    out = None
    for i in range(3):
      for j in range(3):
        if kernel[i, j] != 0.0:
          term = float(kernel[i, j]) * shifted[i][j]
          out = term if out is None else out + term
    return out

  return correlate(SOBEL_X), correlate(SOBEL_Y)


def sobel(x: Array) -> Tuple[Array, Array]:
  """Official ``Gradient``: |Gx| and |Gy| returned separately (no magnitude).

  Args:
    x: (..., H, W, C) images (the losses pass Y maps, C = 1).

  Returns:
    (|Gx|, |Gy|), each (..., H, W, C), >= 0 (at most 4 for inputs in [0, 1]).
  """
  gx, gy = sobel_xy(x)
  return _abs(gx), _abs(gy)


def gradient_magnitude(x: Array, eps: float = 0.0) -> Array:
  """Euclidean Sobel magnitude sqrt(Gx^2 + Gy^2) used by the paper loss.

  sqrt is not differentiable at 0 (infinite slope gives NaN gradients in flat
  regions). With ``eps == 0`` the value is exact and the gradient at a zero
  magnitude is set to 0 (a valid subgradient; elsewhere it is the exact
  (Gx, Gy) / |G|). With ``eps > 0`` it returns sqrt(Gx^2 + Gy^2 + eps),
  smooth everywhere but biased upwards by eps / (sqrt(s + eps) + sqrt(s)),
  i.e. sqrt(eps) in flat regions and about eps / (2|G|) elsewhere.

  Args:
    x: (..., H, W, C) images.
    eps: non-negative smoothing constant (Python float).

  Returns:
    (..., H, W, C) magnitudes, >= 0.
  """
  gx, gy = sobel_xy(x)
  s = gx * gx + gy * gy
  if eps > 0.0:
    return jnp.sqrt(s + eps)
  positive = s > 0.0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)


def gaussian_window(size: int = SSIM_WINDOW_SIZE,
                    sigma: float = SSIM_SIGMA) -> np.ndarray:
  """2-D Gaussian SSIM window built in float32 exactly like the official code.

  1-D weights exp(-(x - size//2)^2 / (2 sigma^2)) are rounded to float32 and
  normalised in float32, then the outer product is taken in float32 (so the
  weights sum to 1 + O(1e-9), bit-identical to torch's window).

  Returns:
    (size, size) float32 numpy array.
  """
  g = np.array([math.exp(-(x - size // 2) ** 2 / float(2 * sigma ** 2))
                for x in range(size)], dtype=np.float32)
  g = g / g.sum(dtype=np.float32)
  return np.outer(g, g).astype(np.float32)


def ssim(img1: Array, img2: Array, window_size: int = SSIM_WINDOW_SIZE,
         sigma: float = SSIM_SIGMA,
         data_range: float = SSIM_DATA_RANGE) -> Array:
  """Mean SSIM with a Gaussian window, valid convolution, per channel.

  As the official ``ssim`` (REFERENCE.md §6.3): local statistics from a
  depthwise valid convolution with `gaussian_window`, sigma^2 = E[x^2] - mu^2,
  C1 = (0.01 L)^2, C2 = (0.03 L)^2, mean of the SSIM map over all frames,
  channels and valid pixels. The convolution runs at HIGHEST precision
  (TF32 would ruin the E[x^2] - mu^2 cancellation on GPUs).

  Args:
    img1: (..., H, W, C) reference (ground truth) in [0, 1]; H, W >= window.
    img2: (..., H, W, C) image compared with it, same shape.
    window_size: Gaussian window size (13 in the released loss).
    sigma: Gaussian standard deviation.
    data_range: L (1 for images in [0, 1]).

  Returns:
    Scalar mean SSIM (1 for identical images).
  """
  if img1.shape != img2.shape:
    raise ValueError(f'Shape mismatch: {img1.shape} vs {img2.shape}.')
  h, w, c = img1.shape[-3:]
  if h < window_size or w < window_size:
    raise ValueError(f'Images {h}x{w} smaller than the {window_size}px window.')
  x = img1.reshape((-1, h, w, c))
  y = img2.reshape((-1, h, w, c))
  stats = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)
  window = jnp.asarray(gaussian_window(window_size, sigma), dtype=x.dtype)
  kernel = jnp.broadcast_to(window[:, :, None, None],
                            (window_size, window_size, 1, 5 * c))
  filtered = jax.lax.conv_general_dilated(
      stats, kernel, window_strides=(1, 1), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=5 * c, precision=jax.lax.Precision.HIGHEST)
  mu1, mu2, e11, e22, e12 = jnp.split(filtered, 5, axis=-1)
  mu1_sq = mu1 * mu1
  mu2_sq = mu2 * mu2
  mu1_mu2 = mu1 * mu2
  sigma1_sq = e11 - mu1_sq
  sigma2_sq = e22 - mu2_sq
  sigma12 = e12 - mu1_mu2
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  v1 = 2.0 * sigma12 + c2
  v2 = sigma1_sq + sigma2_sq + c2
  ssim_map = ((2.0 * mu1_mu2 + c1) * v1) / ((mu1_sq + mu2_sq + c1) * v2)
  return jnp.mean(ssim_map)


def temporal_consistency(a: Array, g: Array) -> Array:
  """Official ``TemporalConsistency_loss`` TC(A, G) without its weight.

  mean |(A[:, 1:] - A[:, :-1]) - (G[:, 1:] - G[:, :-1])| over
  (B, T-1, H, W, C).

  Args:
    a: (B, T, H, W, C) predicted video.
    g: (B, T, H, W, C) reference video.

  Returns:
    Scalar, >= 0.
  """
  return jnp.mean(_abs(_temporal_diff(a) - _temporal_diff(g)))


def _temporal_diff(x: Array) -> Array:
  """Forward frame differences x[:, t+1] - x[:, t], (B, T-1, ...)."""
  return x[:, 1:] - x[:, :-1]


def _l1(a: Array, b: Array) -> Array:
  """Mean absolute error over all elements (``F.l1_loss``)."""
  return jnp.mean(_abs(a - b))


def _unpack(outputs: Mapping[str, Array], batch: Mapping[str, Array]):
  """Returns (fusion, ir_out, vi_out, ir_gt 3-channel, vi_gt) as floats."""
  fusion = _float(outputs['fusion'])
  ir_out = _float(outputs['ir'])
  vi_out = _float(outputs['vi'])
  ir_gt = _to_rgb(_float(batch['ir_gt']))
  vi_gt = _float(batch['vi_gt'])
  for name, x in (('fusion', fusion), ('ir', ir_out), ('vi', vi_out),
                  ('vi_gt', vi_gt)):
    if x.ndim != 5 or x.shape[-1] != 3 or x.shape != fusion.shape:
      raise ValueError(f'{name} must be (B, T, H, W, 3) like fusion '
                       f'{fusion.shape}, got {x.shape}.')
  if ir_gt.shape != fusion.shape:
    raise ValueError(f'ir_gt must be (B, T, H, W, 1), got {ir_gt.shape}.')
  if fusion.shape[1] < 2:
    raise ValueError(f'The temporal terms need T >= 2, got {fusion.shape}.')
  return fusion, ir_out, vi_out, ir_gt, vi_gt


def released_loss_parts(outputs: Mapping[str, Array],
                        batch: Mapping[str, Array],
                        ssim_window_size: int = SSIM_WINDOW_SIZE,
                        ssim_sigma: float = SSIM_SIGMA) -> Dict[str, Array]:
  """Un-weighted building blocks of the released loss (fixture ``part_*``).

  Args:
    outputs: {'fusion', 'ir', 'vi'}: (B, T, H, W, 3) model outputs in (0, 1).
    batch: {'ir_gt': (B, T, H, W, 1 or 3), 'vi_gt': (B, T, H, W, 3)} in [0, 1].
    ssim_window_size: SSIM Gaussian window size.
    ssim_sigma: SSIM Gaussian sigma.

  Returns:
    Dict of scalars keyed like the fixture's ``loss/part_*`` (prefix 'part_').
  """
  fusion, ir_out, vi_out, ir_gt, vi_gt = _unpack(outputs, batch)
  ycc_f = rgb_to_ycbcr(fusion)
  ycc_vi = rgb_to_ycbcr(vi_gt)
  y_f, y_vi = ycc_f[..., 0:1], ycc_vi[..., 0:1]
  y_ir = rgb_to_ycbcr(ir_gt)[..., 0:1]

  gx_f, gy_f = sobel(y_f)
  gx_vi, gy_vi = sobel(y_vi)
  gx_ir, gy_ir = sobel(y_ir)

  parts = {
      'part_ssim_vi_rgb':
          1.0 - ssim(vi_gt, fusion, ssim_window_size, ssim_sigma),
      'part_ssim_ir_y':
          1.0 - ssim(y_ir, y_f, ssim_window_size, ssim_sigma),
      'part_int_max_l1': _l1(jnp.maximum(y_vi, y_ir), y_f),
      'part_consist_vi_l1': _l1(y_vi, y_f),
      'part_consist_ir_l1': _l1(y_ir, y_f),
      'part_color_cb_l1': _l1(ycc_f[..., 1], ycc_vi[..., 1]),
      'part_color_cr_l1': _l1(ycc_f[..., 2], ycc_vi[..., 2]),
      'part_grad_x_l1': _l1(gx_f, jnp.maximum(gx_vi, gx_ir)),
      'part_grad_y_l1': _l1(gy_f, jnp.maximum(gy_vi, gy_ir)),
  }
  for key, rec, ref, y_ref in (('ir', ir_out, ir_gt, y_ir),
                               ('vi', vi_out, vi_gt, y_vi)):
    gx_rec, gy_rec = sobel(rgb_to_ycbcr(rec)[..., 0:1])
    gx_ref, gy_ref = sobel(y_ref)
    parts[f'part_{key}_fid_int_l1'] = _l1(rec, ref)
    parts[f'part_{key}_fid_grad_x_l1'] = _l1(gx_rec, gx_ref)
    parts[f'part_{key}_fid_grad_y_l1'] = _l1(gy_rec, gy_ref)
  parts['part_tc_irout_irgt'] = temporal_consistency(ir_out, ir_gt)
  parts['part_tc_viout_vigt'] = temporal_consistency(vi_out, vi_gt)
  parts['part_tc_fusion_irgt'] = temporal_consistency(fusion, ir_gt)
  parts['part_tc_fusion_vigt'] = temporal_consistency(fusion, vi_gt)
  return parts


def released_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array],
                  loss_config: Any) -> Tuple[Array, Dict[str, Array]]:
  """Released training loss (REFERENCE.md §6.7), see `compute_loss`.

  Returns:
    (l_total, terms): the official logged keys (`RELEASED_LOGGED_KEYS`), plus
    'l_fid_total', 'l_cons_total' (sub-totals the code does not log) and
    'l_total'.
  """
  w = loss_config.weights
  p = released_loss_parts(outputs, batch, loss_config.ssim_window_size,
                          loss_config.ssim_sigma)
  t = {}
  t['loss_intensity_max'] = w.intensity_max * p['part_int_max_l1']
  t['loss_color'] = w.color * (p['part_color_cb_l1'] + p['part_color_cr_l1'])
  t['loss_grad'] = w.grad * (p['part_grad_x_l1'] + p['part_grad_y_l1'])
  t['loss_intensity_consist'] = w.intensity_consist * (
      p['part_consist_vi_l1']
      + w.intensity_consist_ir * p['part_consist_ir_l1'])
  t['loss_ssim'] = w.ssim * (p['part_ssim_vi_rgb']
                             + w.ssim_ir * p['part_ssim_ir_y'])
  t['loss_fusion'] = (t['loss_ssim'] + t['loss_intensity_max']
                      + t['loss_intensity_consist'] + t['loss_color']
                      + t['loss_grad'])
  for key in ('ir', 'vi'):
    t[f'{key}_loss_intensity'] = (w.fidelity_intensity
                                  * p[f'part_{key}_fid_int_l1'])
    t[f'{key}_loss_grad'] = w.fidelity_grad * (
        p[f'part_{key}_fid_grad_x_l1'] + p[f'part_{key}_fid_grad_y_l1'])
    t[f'{key}_loss_fid'] = (t[f'{key}_loss_intensity']
                            + t[f'{key}_loss_grad'])
  t['l_cons_ir'] = w.temporal * p['part_tc_irout_irgt']
  t['l_cons_vi'] = w.temporal * p['part_tc_viout_vigt']
  t['l_cons_fusion'] = w.temporal * (p['part_tc_fusion_irgt']
                                     + p['part_tc_fusion_vigt'])
  t['l_fid_total'] = t['ir_loss_fid'] + t['vi_loss_fid']
  t['l_cons_total'] = t['l_cons_ir'] + t['l_cons_vi'] + t['l_cons_fusion']
  t['l_total'] = t['loss_fusion'] + t['l_fid_total'] + t['l_cons_total']
  return t['l_total'], t


def paper_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array],
               loss_config: Any) -> Tuple[Array, Dict[str, Array]]:
  """Paper loss, Eq. 7-13 (fixture manifest ``paper_variant``).

  No clamp, no SSIM, no intensity-consistency term; Y and CbCr use the code's
  coefficients; the IR reference of Eq. 7/8 is IR channel 0; the Sobel
  "nabla" is the Euclidean magnitude (`gradient_magnitude`) and the max in
  Eq. 8 is taken between magnitude maps; L_sf compares RGB intensities and Y
  gradient magnitudes; L_var uses RGB temporal differences.

  Normalisation (``loss_config.paper_normalisation``): 'literal' = per clip
  sum over frames and channels of the L1 norm divided by H*W, averaged over the
  batch (= C * T times the element mean, T - 1 frames for L_var); 'mean' =
  element mean.

  Returns:
    (l_total, terms): un-weighted 'L_int', 'L_grad', 'L_color', 'L_sf_<x>_int',
    'L_sf_<x>_grad', 'L_sf', 'L_var_fu_<x>', 'L_var_<x>', 'L_var' for
    x in {vi, ir}, and the weighted 'l_total'.
  """
  w = loss_config.weights
  normalisation = loss_config.paper_normalisation
  eps = float(loss_config.grad_magnitude_eps)
  if normalisation not in PAPER_NORMALISATIONS:
    raise ValueError(f'Unknown paper_normalisation {normalisation!r}; '
                     f'expected one of {PAPER_NORMALISATIONS}.')
  fusion, ir_out, vi_out, ir_gt, vi_gt = _unpack(outputs, batch)

  def norm(abs_map):
    """Reduces a (B, T', H, W, C) |.| map to a scalar."""
    if normalisation == 'mean':
      return jnp.mean(abs_map)
    batch_size, height, width = (abs_map.shape[0], abs_map.shape[-3],
                                 abs_map.shape[-2])
    return jnp.sum(abs_map) / (batch_size * height * width)

  ycc_f = rgb_to_ycbcr(fusion, clamp=False)
  ycc_vi = rgb_to_ycbcr(vi_gt, clamp=False)
  y_f, y_vi = ycc_f[..., 0:1], ycc_vi[..., 0:1]
  i_ir = ir_gt[..., 0:1]

  def mag(x):
    return gradient_magnitude(x, eps)

  t = {}
  t['L_int'] = norm(_abs(y_f - jnp.maximum(y_vi, i_ir)))
  t['L_grad'] = norm(_abs(mag(y_f) - jnp.maximum(mag(y_vi), mag(i_ir))))
  t['L_color'] = norm(_abs(ycc_f[..., 1:] - ycc_vi[..., 1:]))
  for key, rec, ref in (('vi', vi_out, vi_gt), ('ir', ir_out, ir_gt)):
    y_rec = rgb_to_ycbcr(rec, clamp=False)[..., 0:1]
    y_ref = rgb_to_ycbcr(ref, clamp=False)[..., 0:1]
    t[f'L_sf_{key}_int'] = norm(_abs(rec - ref))
    t[f'L_sf_{key}_grad'] = norm(_abs(mag(y_rec) - mag(y_ref)))
  t['L_sf'] = (t['L_sf_vi_int'] + t['L_sf_vi_grad'] + t['L_sf_ir_int']
               + t['L_sf_ir_grad'])
  d_f = _temporal_diff(fusion)
  for key, rec, ref in (('vi', vi_out, vi_gt), ('ir', ir_out, ir_gt)):
    d_ref = _temporal_diff(ref)
    t[f'L_var_fu_{key}'] = norm(_abs(d_f - d_ref))
    t[f'L_var_{key}'] = norm(_abs(_temporal_diff(rec) - d_ref))
  t['L_var'] = (t['L_var_fu_vi'] + t['L_var_vi'] + t['L_var_fu_ir']
                + t['L_var_ir'])
  t['l_total'] = (w.intensity * t['L_int'] + w.grad * t['L_grad']
                  + w.color * t['L_color'] + w.fidelity * t['L_sf']
                  + w.temporal * t['L_var'])
  return t['l_total'], t


def compute_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array],
                 loss_config: Any) -> Tuple[Array, Dict[str, Array]]:
  """Training loss selected by ``loss_config.name``.

  Args:
    outputs: {'fusion', 'ir', 'vi'}: (B, T, H, W, 3) model outputs in (0, 1).
    batch: {'ir_gt': (B, T, H, W, 1) (or 3 identical channels),
      'vi_gt': (B, T, H, W, 3)}, clean ground truth in [0, 1]. Other keys are
      ignored. T >= 2 (temporal terms); H, W >= 13 for the released SSIM.
    loss_config: ConfigDict (or attribute object) as `default_loss_config`.

  Returns:
    (total, terms): scalar total loss (float32 for float32 inputs) and a dict
    of scalar terms, always including 'l_total'.
  """
  name = loss_config.name
  if name == 'released':
    return released_loss(outputs, batch, loss_config)
  if name == 'paper':
    return paper_loss(outputs, batch, loss_config)
  raise ValueError(f'Unknown loss name {name!r}; expected one of {LOSS_NAMES}.')
