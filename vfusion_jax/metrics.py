"""Fusion and temporal evaluation metrics, as defined in shared/spec/METRICS.md.

Spatial metrics (EN, MI, SF, SD, VIF, SSIM, Qabf) follow the MATLAB toolbox
``Linfeng-Tang/Evaluation-for-Image-Fusion`` (``analysis_Reference.m``) that
the VideoFusion tables are computed with, including its quirks. The temporal
metric ``flowd_fb`` is the project's deterministic substitute for TemCoCo's
flowD (METRICS.md §10.2); ``tdiff`` is the plain temporal difference.

Everything runs on the host in NumPy/SciPy with float64 arithmetic: the
metrics are not differentiable losses, and float32 changes VIF and SSIM by
more than the tolerances of METRICS.md §9.

Conventions shared by every public function:

* Frames are ``uint8`` arrays, ``(H, W)`` grey or ``(H, W, 3)`` RGB (a
  trailing channel axis of size 1 counts as grey). RGB is turned into grey
  with MATLAB ``rgb2gray`` (:func:`rgb_to_gray`).
* Fusion metrics take ``(fused, ir, vi)``; the three frames must share
  ``(H, W)`` but may differ in channel count.
* EN and MI use the uint8 grey levels; SF, SD, VIF, SSIM and Qabf use float64
  copies with values in 0..255.
* Float frames become uint8 here, in one place: :func:`to_uint8` (clip and
  round) and :func:`quantize_fused` (the release's min-max stretch, then
  :func:`to_uint8`).
* The temporal metrics take whole sequences; :func:`flowd_fb_term` and
  :func:`tdiff_term` are their per-pair terms, for evaluation that streams.
* ``biswe_fb`` and ``ms2r_fb`` are the Farneback substitutes of VF-Bench's
  BiSWE and MS2R (shared/spec/METRICS_VFBENCH.md Part B); their per-centre
  terms :func:`biswe_fb_term` and :func:`ms2r_fb_term` take flows from
  :class:`TripletFlowStream` (and masks from :func:`source_masks`).
"""

import dataclasses

import numpy as np
from scipy import ndimage

# MATLAB rgb2gray weights (METRICS.md §1): not 0.299/0.587/0.114.
GRAY_COEFFS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
NUM_LEVELS = 256
MAX_LEVEL = NUM_LEVELS - 1
# Hab.m indexes with uint8(v) + 1, which saturates: levels 254 and 255 share
# one joint-histogram bin on each axis.
MI_MERGED_LEVEL = 254

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # ceil(3 * sigma): an 11 x 11 window.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_DYNAMIC_RANGE = 255.0  # Project definition of SSIM.
SSIM_TOOLBOX_DYNAMIC_RANGE = 1.0  # What the toolbox effectively uses.

VIF_NUM_SCALES = 4
VIF_NOISE_VAR = 2.0  # sigma_n^2, for data in 0..255.
VIF_EPS = 1e-10
VIF_SIGMA_DIVISOR = 5.0  # Window of size n uses sigma = n / 5.

QABF_TG, QABF_KG, QABF_DG = 0.9994, -15.0, 0.5
QABF_TA, QABF_KA, QABF_DA = 0.9879, -22.0, 0.8
# MATLAB conv2 kernels of analysis_Qabf.m (true convolution, zero padding).
SOBEL_X = np.array([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]])
SOBEL_Y = np.array([[1., 2., 1.], [0., 0., 0.], [-1., -2., -1.]])

# cv2.calcOpticalFlowFarneback arguments of METRICS.md §10.2.
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3,
                        poly_n=5, poly_sigma=1.2, flags=0)

# METRICS_VFBENCH.md B.5: forward-backward threshold (px, strict <) and the
# epsilon of the masked means.
VFBENCH_FB_THRESHOLD = 1.0
VFBENCH_EPS = 1e-10

METRIC_KEYS = ('EN', 'MI', 'MI_nomerge', 'SF', 'SD', 'VIF', 'SSIM',
               'SSIM_toolboxL1', 'Qabf')

_MIN_SIDE = 2
_NON_FLOAT_KINDS = 'biuc'  # bool, signed, unsigned, complex.


# ----------------------------------------------------------------------------
# Input handling.


def rgb_to_gray(img):
  """MATLAB ``rgb2gray`` for uint8 frames (METRICS.md §1).

  Args:
    img: uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` RGB.

  Returns:
    uint8 ``(H, W)``: ``round_half_away(0.2989 R + 0.5870 G + 0.1140 B)``
    computed in float64 (grey input is returned unchanged). A frame with three
    equal channels maps to that channel exactly.
  """
  return _gray(img, 'img', min_side=1)


def _gray(img, name, min_side=_MIN_SIDE):
  """Validates one frame and returns its uint8 (H, W) grey version."""
  img = np.asarray(img)
  if img.dtype != np.uint8:
    raise ValueError(f'{name} must be uint8, got dtype {img.dtype}.')
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim == 2:
    gray = img
  elif img.ndim == 3 and img.shape[-1] == 3:
    rgb = img.astype(np.float64)
    weighted = (GRAY_COEFFS[0] * rgb[..., 0] + GRAY_COEFFS[1] * rgb[..., 1]
                + GRAY_COEFFS[2] * rgb[..., 2])
    gray = np.floor(weighted + 0.5).clip(0, MAX_LEVEL).astype(np.uint8)
  else:
    raise ValueError(
        f'{name} must have shape (H, W) or (H, W, 3), got {img.shape}.')
  if min(gray.shape) < min_side:
    raise ValueError(f'{name} must be at least {min_side}x{min_side}, got {gray.shape}.')
  return gray


def _grays(**frames):
  """Grey versions of named frames; all must share (H, W)."""
  grays = [_gray(img, name) for name, img in frames.items()]
  shapes = {g.shape for g in grays}
  if len(shapes) > 1:
    desc = ', '.join(f'{n} {g.shape}' for n, g in zip(frames, grays))
    raise ValueError(f'Frames must share (H, W); got {desc}.')
  return grays


def quantize_fused(x):
  """Per-frame min-max stretch to uint8, as the official test code saves.

  Mirrors BasicSR ``tensor2img(x, min_max=(x.min(), x.max()))``:
  ``round_half_even(255 * (x - min) / (max - min))`` with min and max over
  the whole frame (all channels at once). The arithmetic runs in the input's
  float precision (float32 for float32 network output, as in the official
  PyTorch code, so the saved PNG is reproduced bit for bit).

  Args:
    x: float array of any layout, e.g. ``(3, H, W)`` or ``(H, W, 3)``,
      nominally in [0, 1].

  Returns:
    uint8 array of the same shape. A constant frame maps to all zeros (the
    official code would divide by zero).

  Raises:
    ValueError: for integer, bool or complex input, or non-finite values.
  """
  x = np.asarray(x)
  if x.dtype.kind in _NON_FLOAT_KINDS:
    raise ValueError(f'x must be a float array, got dtype {x.dtype}.')
  if x.dtype != np.float64:
    x = x.astype(np.float32)  # float16 / bfloat16 are widened as torch .float() does.
  lo, hi = x.min(), x.max()
  if not (np.isfinite(lo) and np.isfinite(hi)):
    raise ValueError('x contains NaN or infinite values.')
  if hi == lo:
    return np.zeros(x.shape, np.uint8)
  return to_uint8((x - lo) / (hi - lo))


def to_uint8(x):
  """Float frames in [0, 1] -> uint8 ``round_half_even(255 * clip(x, 0, 1))``.

  The project's one float-to-8-bit conversion: restored frames (REFERENCE.md
  9.2), fused frames without the min-max stretch, previews, synthetic and
  degraded clips, and the last step of :func:`quantize_fused`. Like
  :func:`quantize_fused` it computes in float64 for float64 input and in
  float32 for any other float (as torch ``.float()``).

  Args:
    x: float array of any shape, nominally in [0, 1]; uint8 input is returned
      unchanged.

  Returns:
    uint8 array of the same shape.

  Raises:
    ValueError: for integer (other than uint8), bool or complex input.
  """
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x
  if x.dtype.kind in _NON_FLOAT_KINDS:
    raise ValueError(f'x must be uint8 or a float array, got dtype {x.dtype}.')
  if x.dtype != np.float64:
    x = x.astype(np.float32)
  one = x.dtype.type(1.0)
  return np.round(np.clip(x, 0, one) * x.dtype.type(MAX_LEVEL)).astype(np.uint8)


def fused_to_uint8(fused, minmax=True):
  """Fused float frame (any layout, e.g. ``(H, W, 3)``) -> uint8 as infer and eval save it.

  ``minmax=True`` is the release's :func:`quantize_fused` (per-frame min-max
  stretch, METRICS.md 1); ``minmax=False`` is :func:`to_uint8` (clip, no
  stretch).
  """
  return quantize_fused(fused) if minmax else to_uint8(fused)


# ----------------------------------------------------------------------------
# EN and MI (uint8 grey levels, bits).


def _entropy_of_counts(counts):
  p = counts[counts > 0] / counts.sum()
  return float(-np.sum(p * np.log2(p)))


def _en(g):
  return _entropy_of_counts(np.bincount(g.ravel(), minlength=NUM_LEVELS))


def _joint_entropy(x, y, merge):
  if merge:
    x = np.minimum(x, MI_MERGED_LEVEL)
    y = np.minimum(y, MI_MERGED_LEVEL)
  index = x.astype(np.intp).ravel() * NUM_LEVELS + y.ravel()
  return _entropy_of_counts(np.bincount(index, minlength=NUM_LEVELS ** 2))


def _mutual_information(x, y, merge):
  return _en(x) + _en(y) - _joint_entropy(x, y, merge)


def _mi(f, a, b, merge):
  return _mutual_information(f, a, merge) + _mutual_information(f, b, merge)


def en(img):
  """Entropy EN in bits (METRICS.md §2; MATLAB ``entropy``).

  Args:
    img: uint8 frame, ``(H, W)`` or ``(H, W, 3)``.

  Returns:
    ``-sum p_k log2 p_k`` over the 256 grey levels, in [0, 8].
  """
  return _en(_gray(img, 'img'))


def mutual_information(x, y, joint_254_255_merge=True):
  """I(X;Y) = H(X) + H(Y) - H(X,Y) in bits, as ``MI_evaluation.m``/``Hab.m``.

  Args:
    x: uint8 frame, ``(H, W)`` or ``(H, W, 3)``.
    y: uint8 frame with the same ``(H, W)``.
    joint_254_255_merge: reproduce the toolbox quirk that puts levels 254 and
      255 in one joint-histogram bin (the marginals keep them apart).

  Returns:
    Mutual information, in [0, 8] without the merge; the merge can only
    raise it.
  """
  gx, gy = _grays(x=x, y=y)
  return _mutual_information(gx, gy, joint_254_255_merge)


def mi(fused, ir, vi, joint_254_255_merge=True):
  """Fusion MI = I(F;A) + I(F;B) in bits (METRICS.md §3; a sum, in [0, 16]).

  Args:
    fused: uint8 fused frame, ``(H, W)`` or ``(H, W, 3)``.
    ir: uint8 infrared frame with the same ``(H, W)``.
    vi: uint8 visible frame with the same ``(H, W)``.
    joint_254_255_merge: toolbox quirk, see :func:`mutual_information`.
      ``True`` gives ``MI``, ``False`` gives ``MI_nomerge``.
  """
  f, a, b = _grays(fused=fused, ir=ir, vi=vi)
  return _mi(f, a, b, joint_254_255_merge)


# ----------------------------------------------------------------------------
# SF and SD (float 0..255).


def _sf(f):
  row = np.mean(np.diff(f, axis=0) ** 2)
  col = np.mean(np.diff(f, axis=1) ** 2)
  return float(np.sqrt(row + col))


def _sd(f):
  return float(np.sqrt(np.mean((f - f.mean()) ** 2)))


def sf(img):
  """Spatial frequency SF (METRICS.md §4; ``SF_evaluation.m``).

  Args:
    img: uint8 frame, ``(H, W)`` or ``(H, W, 3)``, at least 2x2.

  Returns:
    ``sqrt(mean(row diffs^2) + mean(col diffs^2))`` on 0..255 values, each
    mean over the number of differences; in [0, 255 * sqrt(2)].
  """
  return _sf(_gray(img, 'img').astype(np.float64))


def sd(img):
  """Standard deviation SD (population, ddof=0) on 0..255 values; in [0, 127.5].

  Args:
    img: uint8 frame, ``(H, W)`` or ``(H, W, 3)``.
  """
  return _sd(_gray(img, 'img').astype(np.float64))


# ----------------------------------------------------------------------------
# SSIM (float 0..255, MATLAB ssim).


def _gaussian_1d(size, sigma):
  """Normalised 1-D Gaussian; its outer product is ``fspecial('gaussian')``.

  fspecial zeroes entries below eps * max; for every window used here the
  smallest 2-D entry is far above that, so the separable form is exact.
  """
  r = (size - 1) / 2.0
  x = np.arange(size) - r
  w = np.exp(-x * x / (2.0 * sigma * sigma))
  return w / w.sum()


_SSIM_WINDOW = _gaussian_1d(2 * SSIM_RADIUS + 1, SSIM_SIGMA)


def _blur_same(x):
  """11x11 Gaussian filter, replicate padding, 'same' size (imgaussfilt)."""
  y = ndimage.correlate1d(x, _SSIM_WINDOW, axis=0, mode='nearest')
  return ndimage.correlate1d(y, _SSIM_WINDOW, axis=1, mode='nearest')


class _SsimStats:
  """Local means and variances of one frame, reused across SSIM pairs."""

  def __init__(self, x):
    self.x = x
    self.mu = _blur_same(x)
    self.mu_sq = self.mu * self.mu
    self.var = _blur_same(x * x) - self.mu_sq


def _ssim_maps(sx, sy, dynamic_ranges):
  mu_xy = sx.mu * sy.mu
  cov = _blur_same(sx.x * sy.x) - mu_xy
  maps = []
  for dynamic_range in dynamic_ranges:
    c1 = (SSIM_K1 * dynamic_range) ** 2
    c2 = (SSIM_K2 * dynamic_range) ** 2
    num = (2.0 * mu_xy + c1) * (2.0 * cov + c2)
    den = (sx.mu_sq + sy.mu_sq + c1) * (sx.var + sy.var + c2)
    maps.append(num / den)
  return maps


def ssim_map(x, y, dynamic_range=SSIM_DYNAMIC_RANGE):
  """MATLAB ``ssim`` map of two frames (METRICS.md §6).

  Gaussian window sigma 1.5 (11x11), replicate padding, 'same' size,
  ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``C3 = C2 / 2``.

  Args:
    x: uint8 frame, ``(H, W)`` or ``(H, W, 3)`` (grey is used).
    y: uint8 frame with the same ``(H, W)``.
    dynamic_range: L; 255 is the project definition, 1 the literal toolbox.

  Returns:
    float64 ``(H, W)`` map with values in [-1, 1].
  """
  gx, gy = _grays(x=x, y=y)
  sx = _SsimStats(gx.astype(np.float64))
  sy = _SsimStats(gy.astype(np.float64))
  return _ssim_maps(sx, sy, (dynamic_range,))[0]


def ssim_pair(x, y, dynamic_range=SSIM_DYNAMIC_RANGE):
  """Mean of :func:`ssim_map` over all H x W pixels; 1 exactly for x == y."""
  return float(np.mean(ssim_map(x, y, dynamic_range)))


def ssim(fused, ir, vi, dynamic_range=SSIM_DYNAMIC_RANGE):
  """Fusion SSIM = (ssim(F, A) + ssim(F, B)) / 2 (an average, in [-1, 1]).

  Args:
    fused: uint8 fused frame, ``(H, W)`` or ``(H, W, 3)``.
    ir: uint8 infrared frame with the same ``(H, W)``.
    vi: uint8 visible frame with the same ``(H, W)``.
    dynamic_range: L = 255 gives ``SSIM``; L = 1 gives ``SSIM_toolboxL1``.
  """
  f, a, b = (g.astype(np.float64) for g in _grays(fused=fused, ir=ir, vi=vi))
  return _ssim_fusion(_SsimStats(f), _SsimStats(a), _SsimStats(b),
                      (dynamic_range,))[0]


def _ssim_fusion(sf_, sa, sb, dynamic_ranges):
  maps_a = _ssim_maps(sf_, sa, dynamic_ranges)
  maps_b = _ssim_maps(sf_, sb, dynamic_ranges)
  return [0.5 * float(np.mean(ma)) + 0.5 * float(np.mean(mb))
          for ma, mb in zip(maps_a, maps_b)]


# ----------------------------------------------------------------------------
# VIF (float 0..255, LIVE vifp_mscale).


def _vif_windows():
  windows = []
  for scale in range(1, VIF_NUM_SCALES + 1):
    size = 2 ** (VIF_NUM_SCALES + 1 - scale) + 1  # 17, 9, 5, 3.
    windows.append(_gaussian_1d(size, size / VIF_SIGMA_DIVISOR))
  return windows


_VIF_WINDOWS = _vif_windows()


def _filter_valid(x, w):
  """MATLAB ``filter2(w2d, x, 'valid')`` for a separable symmetric window."""
  r = len(w) // 2
  y = ndimage.correlate1d(x, w, axis=0, mode='constant')[r:x.shape[0] - r]
  y = ndimage.correlate1d(y, w, axis=1, mode='constant')
  return y[:, r:x.shape[1] - r]


def _vif_sums(refs, dist):
  """Numerators and denominators of VIFp(ref -> dist) for several refs.

  The distorted frame is shared, so its filtered statistics are computed once
  per scale.

  Args:
    refs: list of float64 (H, W) reference frames.
    dist: float64 (H, W) distorted (fused) frame.

  Returns:
    (num, den) float64 arrays of length len(refs).
  """
  num = np.zeros(len(refs))
  den = np.zeros(len(refs))
  for scale, w in enumerate(_VIF_WINDOWS):
    if scale > 0:
      if min(dist.shape) < len(w):
        break
      refs = [_filter_valid(r, w)[::2, ::2] for r in refs]
      dist = _filter_valid(dist, w)[::2, ::2]
    if min(dist.shape) < len(w):
      break
    mu2 = _filter_valid(dist, w)
    sigma2_sq = np.maximum(_filter_valid(dist * dist, w) - mu2 * mu2, 0.0)
    for i, ref in enumerate(refs):
      mu1 = _filter_valid(ref, w)
      sigma1_sq = np.maximum(_filter_valid(ref * ref, w) - mu1 * mu1, 0.0)
      sigma12 = _filter_valid(ref * dist, w) - mu1 * mu2
      g = sigma12 / (sigma1_sq + VIF_EPS)
      sv_sq = sigma2_sq - g * sigma12
      flat_ref = sigma1_sq < VIF_EPS
      g[flat_ref] = 0.0
      sv_sq[flat_ref] = sigma2_sq[flat_ref]
      sigma1_sq[flat_ref] = 0.0
      flat_dist = sigma2_sq < VIF_EPS
      g[flat_dist] = 0.0
      sv_sq[flat_dist] = 0.0
      negative = g < 0
      sv_sq[negative] = sigma2_sq[negative]
      g[negative] = 0.0
      sv_sq = np.maximum(sv_sq, VIF_EPS)
      num[i] += np.sum(np.log10(1.0 + g * g * sigma1_sq
                                / (sv_sq + VIF_NOISE_VAR)))
      den[i] += np.sum(np.log10(1.0 + sigma1_sq / VIF_NOISE_VAR))
  return num, den


def _ratio(num, den):
  """num / den, NaN where den == 0 (as MATLAB's 0/0)."""
  with np.errstate(divide='ignore', invalid='ignore'):
    return num / den


def vifp(ref, dist):
  """Multi-scale pixel-domain VIF of ``dist`` against ``ref`` (vifp_mscale).

  Four scales with windows 17/9/5/3 (sigma = n/5), sigma_n^2 = 2, on 0..255
  values. Scales whose valid region is empty add nothing (as MATLAB's
  empty ``filter2`` output).

  Args:
    ref: uint8 reference frame, ``(H, W)`` or ``(H, W, 3)``, at least 17x17.
    dist: uint8 distorted frame with the same ``(H, W)``.

  Returns:
    VIFp >= 0 (about 1 for dist == ref; above 1 for contrast enhancement).
    NaN when the reference has no structure at any scale (0/0).
  """
  r, d = (g.astype(np.float64) for g in _grays(ref=ref, dist=dist))
  num, den = _vif_sums([r], d)
  return float(_ratio(num, den)[0])


def vif(fused, ir, vi):
  """Fusion VIF = VIFp(A -> F) + VIFp(B -> F) (METRICS.md §7; a sum).

  Args:
    fused: uint8 fused frame, ``(H, W)`` or ``(H, W, 3)``, at least 17x17.
    ir: uint8 infrared frame with the same ``(H, W)``.
    vi: uint8 visible frame with the same ``(H, W)``.
  """
  f, a, b = (g.astype(np.float64) for g in _grays(fused=fused, ir=ir, vi=vi))
  return _vif(f, a, b)


def _vif(f, a, b):
  num, den = _vif_sums([a, b], f)
  return float(np.sum(_ratio(num, den)))


# ----------------------------------------------------------------------------
# Qabf (float 0..255, analysis_Qabf.m).


def _sobel(x):
  """Gradient magnitude and toolbox orientation (atan, pi/2 where Sx == 0)."""
  sx = ndimage.convolve(x, SOBEL_X, mode='constant', cval=0.0)
  sy = ndimage.convolve(x, SOBEL_Y, mode='constant', cval=0.0)
  g = np.sqrt(sx * sx + sy * sy)
  vertical = sx == 0
  alpha = np.where(vertical, np.pi / 2, np.arctan(sy / np.where(vertical, 1.0, sx)))
  return g, alpha


def _edge_preservation(gx, ax, gf, af):
  """Q^{XF} per pixel, with the toolbox quirk G = gF where gX == gF."""
  safe_gx = np.where(gx == 0, 1.0, gx)
  safe_gf = np.where(gf == 0, 1.0, gf)
  strength = np.where(gx > gf, gf / safe_gx,
                      np.where(gx == gf, gf, gx / safe_gf))
  orientation = 1.0 - np.abs(ax - af) / (np.pi / 2)
  q_g = QABF_TG / (1.0 + np.exp(QABF_KG * (strength - QABF_DG)))
  q_a = QABF_TA / (1.0 + np.exp(QABF_KA * (orientation - QABF_DA)))
  return q_g * q_a


def _qabf(f, a, b):
  gf, af = _sobel(f)
  ga, aa = _sobel(a)
  gb, ab = _sobel(b)
  q_af = _edge_preservation(ga, aa, gf, af)
  q_bf = _edge_preservation(gb, ab, gf, af)
  num = np.sum(q_af * ga + q_bf * gb)
  den = np.sum(ga + gb)
  return float(_ratio(num, den))


def qabf(fused, ir, vi):
  """Gradient-based fusion quality Q^{AB/F} (Xydeas & Petrovic; METRICS.md §8).

  Args:
    fused: uint8 fused frame, ``(H, W)`` or ``(H, W, 3)``.
    ir: uint8 infrared frame with the same ``(H, W)``.
    vi: uint8 visible frame with the same ``(H, W)``.

  Returns:
    Value in [0, 1) (about 0.975 for fused == ir == vi, because of the
    toolbox quirk); NaN when both sources are constant.
  """
  f, a, b = (g.astype(np.float64) for g in _grays(fused=fused, ir=ir, vi=vi))
  return _qabf(f, a, b)


# ----------------------------------------------------------------------------
# All spatial metrics of one frame.


def fusion_metrics(fused, ir, vi):
  """All spatial fusion metrics of one frame (METRICS.md §2-8).

  Args:
    fused: uint8 fused frame, ``(H, W)`` or ``(H, W, 3)`` (already quantised,
      see :func:`quantize_fused`).
    ir: uint8 infrared reference with the same ``(H, W)``.
    vi: uint8 visible reference with the same ``(H, W)``.

  Returns:
    dict with float values for the keys of :data:`METRIC_KEYS`:
    ``EN`` [0, 8], ``MI`` and ``MI_nomerge`` [0, 16], ``SF``, ``SD``
    [0, 127.5], ``VIF`` (sum of two VIFp, >= 0), ``SSIM`` (L = 255) and
    ``SSIM_toolboxL1`` (L = 1) in [-1, 1], ``Qabf`` [0, 1).
  """
  g_f, g_a, g_b = _grays(fused=fused, ir=ir, vi=vi)
  f, a, b = (g.astype(np.float64) for g in (g_f, g_a, g_b))
  ssim_l255, ssim_l1 = _ssim_fusion(
      _SsimStats(f), _SsimStats(a), _SsimStats(b),
      (SSIM_DYNAMIC_RANGE, SSIM_TOOLBOX_DYNAMIC_RANGE))
  return {
      'EN': _en(g_f),
      'MI': _mi(g_f, g_a, g_b, merge=True),
      'MI_nomerge': _mi(g_f, g_a, g_b, merge=False),
      'SF': _sf(f),
      'SD': _sd(f),
      'VIF': _vif(f, a, b),
      'SSIM': ssim_l255,
      'SSIM_toolboxL1': ssim_l1,
      'Qabf': _qabf(f, a, b),
  }


# ----------------------------------------------------------------------------
# Temporal metrics (METRICS.md §10.2, §10.4).


def _sequence(frames, name):
  """Validates a (T, H, W[, 3]) uint8 sequence with T >= 2."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise ValueError(f'{name} must be uint8, got dtype {frames.dtype}.')
  if frames.ndim == 4 and frames.shape[-1] == 1:
    frames = frames[..., 0]
  if not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)):
    raise ValueError(
        f'{name} must have shape (T, H, W) or (T, H, W, 3), got {frames.shape}.')
  if frames.shape[0] < 2:
    raise ValueError(f'{name} needs at least 2 frames, got {frames.shape[0]}.')
  if min(frames.shape[1:3]) < _MIN_SIDE:
    raise ValueError(f'{name} frames must be at least {_MIN_SIDE}x{_MIN_SIDE}, '
                     f'got {frames.shape[1:3]}.')
  return frames


def _pixel_distance(x, y):
  """|x - y| for grey (H, W); L2 over channels for (H, W, C); float64."""
  diff = np.asarray(x, np.float64) - np.asarray(y, np.float64)
  if diff.ndim == 3:
    return np.sqrt(np.sum(diff * diff, axis=-1))
  return np.abs(diff)


def farneback_backward_flow(curr, prev):
  """Backward flow u with ``curr(x) ~ prev(x + u(x))`` (METRICS.md §10.2).

  ``cv2.calcOpticalFlowFarneback(prev=curr, next=prev, ...)`` with
  :data:`FARNEBACK_PARAMS`, on MATLAB-grey frames. This is ``FB(curr, prev)``
  of METRICS_VFBENCH.md B.2, which BiSWE_fb and MS2R_fb call in both
  directions.

  Args:
    curr: uint8 frame V_t, ``(H, W)`` or ``(H, W, 3)``.
    prev: uint8 frame V_{t-1} with the same ``(H, W)``.

  Returns:
    float64 ``(H, W, 2)``: ``[..., 0]`` the x (column) shift, ``[..., 1]`` the
    y (row) shift, in pixels.
  """
  try:
    import cv2  # pylint: disable=g-import-not-at-top  # Only flowD needs OpenCV.
  except ImportError as e:
    raise ImportError('flowd_fb needs OpenCV: pip install opencv-python-headless') from e
  c, p = _grays(curr=curr, prev=prev)
  flow = cv2.calcOpticalFlowFarneback(c, p, None, **FARNEBACK_PARAMS)
  return flow.astype(np.float64)


def warp_bilinear(frame, flow):
  """Samples ``frame`` at ``(y + flow[..., 1], x + flow[..., 0])``.

  Exact bilinear weights; sample coordinates are clamped to
  ``[0, H-1] x [0, W-1]`` (edge-replicate padding).

  Args:
    frame: ``(H, W)`` or ``(H, W, C)`` array (any real dtype).
    flow: ``(H, W, 2)`` float flow in pixels (x shift, y shift).

  Returns:
    float64 array of the shape of ``frame``.
  """
  frame = np.asarray(frame, np.float64)
  flow = np.asarray(flow, np.float64)
  h, w = frame.shape[:2]
  if flow.shape != (h, w, 2):
    raise ValueError(f'flow must have shape {(h, w, 2)}, got {flow.shape}.')
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64),
                           np.arange(w, dtype=np.float64), indexing='ij')
  sy = np.clip(rows + flow[..., 1], 0.0, h - 1.0)
  sx = np.clip(cols + flow[..., 0], 0.0, w - 1.0)
  y0 = np.minimum(np.floor(sy), max(h - 2, 0)).astype(np.intp)
  x0 = np.minimum(np.floor(sx), max(w - 2, 0)).astype(np.intp)
  y1 = np.minimum(y0 + 1, h - 1)
  x1 = np.minimum(x0 + 1, w - 1)
  wy = sy - y0
  wx = sx - x0
  if frame.ndim == 3:
    wy, wx = wy[..., None], wx[..., None]
  top = frame[y0, x0] * (1.0 - wx) + frame[y0, x1] * wx
  bottom = frame[y1, x0] * (1.0 - wx) + frame[y1, x1] * wx
  return top * (1.0 - wy) + bottom * wy


def flowd_fb(fused_frames, guide_frames):
  """Flow-warped temporal distance flowD_fb (METRICS.md §10.2; lower is better).

  For each t >= 1: Farneback backward flow on the guide frames, warp
  F_{t-1} onto F_t, and take the mean per-pixel distance (|.| for grey fused
  frames, L2 over channels for RGB); then average over the T - 1 pairs. Not
  comparable with the paper's SEA-RAFT flowD.

  Args:
    fused_frames: uint8 ``(T, H, W)`` or ``(T, H, W, 3)``, T >= 2.
    guide_frames: uint8 ``(T, H, W)`` or ``(T, H, W, 3)``: the clean visible
      frames (turned into MATLAB grey).

  Returns:
    Mean distance in 0..255 units (0..255*sqrt(3) for RGB).
  """
  fused = _sequence(fused_frames, 'fused_frames')
  guide = _sequence(guide_frames, 'guide_frames')
  if fused.shape[:3] != guide.shape[:3]:
    raise ValueError('fused_frames and guide_frames must share (T, H, W); got '
                     f'{fused.shape[:3]} and {guide.shape[:3]}.')
  guide = [rgb_to_gray(v) for v in guide]
  dists = [flowd_fb_term(fused[t], fused[t - 1], farneback_backward_flow(guide[t], guide[t - 1]))
           for t in range(1, len(fused))]
  return float(np.mean(dists))


def tdiff(fused_frames):
  """Plain temporal difference ``mean_t mean_x |F_t - F_{t-1}|`` (no flow).

  Uses the same per-pixel distance as :func:`flowd_fb` (L2 over channels for
  RGB), so the two agree when the flow is zero.

  Args:
    fused_frames: uint8 ``(T, H, W)`` or ``(T, H, W, 3)``, T >= 2.

  Returns:
    Mean distance in 0..255 units (0..255*sqrt(3) for RGB).
  """
  fused = _sequence(fused_frames, 'fused_frames')
  dists = [tdiff_term(fused[t], fused[t - 1]) for t in range(1, len(fused))]
  return float(np.mean(dists))


def _frame_pair(curr, prev):
  """Validates two uint8 frames of one shape, (H, W) or (H, W, C)."""
  curr, prev = np.asarray(curr), np.asarray(prev)
  if curr.dtype != np.uint8 or prev.dtype != np.uint8:
    raise ValueError(f'frames must be uint8, got {curr.dtype} and {prev.dtype}.')
  if curr.shape != prev.shape or curr.ndim not in (2, 3):
    raise ValueError('frames must share one shape (H, W) or (H, W, C), got '
                     f'{curr.shape} and {prev.shape}.')
  return curr, prev


def flowd_fb_term(curr, prev, flow):
  """One term d_t of :func:`flowd_fb`, for streaming evaluation.

  Args:
    curr: uint8 fused frame F_t, ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
    prev: uint8 fused frame F_{t-1} of the same shape.
    flow: float ``(H, W, 2)`` :func:`farneback_backward_flow` of the guide
      frames (V_t, V_{t-1}).

  Returns:
    ``mean_x |F_t - warp(F_{t-1})|`` (L2 over channels for RGB), in 0..255
    units (0..255*sqrt(3) for RGB).
  """
  curr, prev = _frame_pair(curr, prev)
  return float(np.mean(_pixel_distance(curr, warp_bilinear(prev, flow))))


def tdiff_term(curr, prev):
  """One term ``mean_x |F_t - F_{t-1}|`` of :func:`tdiff` (L2 over channels for RGB).

  Args:
    curr: uint8 fused frame F_t, ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
    prev: uint8 fused frame F_{t-1} of the same shape.
  """
  curr, prev = _frame_pair(curr, prev)
  return float(np.mean(_pixel_distance(curr, prev)))


def intensity_curve(frames):
  """Per-frame mean MATLAB-grey level (METRICS.md §10.4), for flicker plots.

  Args:
    frames: uint8 ``(T, H, W)`` or ``(T, H, W, 3)``.

  Returns:
    float64 ``(T,)`` with values in [0, 255].
  """
  frames = np.asarray(frames)
  if frames.ndim not in (3, 4):
    raise ValueError(
        f'frames must have shape (T, H, W) or (T, H, W, 3), got {frames.shape}.')
  return np.array([np.mean(rgb_to_gray(f)) for f in frames], np.float64)


# ----------------------------------------------------------------------------
# BiSWE_fb and MS2R_fb (METRICS_VFBENCH.md Part B): VF-Bench's BiSWE and MS2R
# with Farneback flow instead of SEA-RAFT. Not comparable with the paper's
# numbers; never report them under the bare names.


@dataclasses.dataclass(frozen=True)
class TripletFlows:
  """Farneback flows of one video around the centre c of a triplet (p, c, n) (METRICS_VFBENCH.md B.4).

  Each field is a float64 ``(H, W, 2)`` flow ``FB(a, b)`` =
  :func:`farneback_backward_flow` ``(a, b)``, with ``a(x) ~ b(x + FB(a, b)(x))``.

  Attributes:
    to_prev: ``FB(V_c, V_p)``.
    from_prev: ``FB(V_p, V_c)``.
    to_next: ``FB(V_c, V_n)``.
    from_next: ``FB(V_n, V_c)``.
  """
  to_prev: np.ndarray
  from_prev: np.ndarray
  to_next: np.ndarray
  from_next: np.ndarray


class TripletFlowStream:
  """The :class:`TripletFlows` of every centre of one video, from frames pushed in order (B.7).

  Flows between neighbours are computed once each: ``2 (T - 1) + 2`` Farneback
  calls for T frames, the two extra ones being the self-flows ``FB(V_0, V_0)``
  and ``FB(V_{T-1}, V_{T-1})`` of the clamped end triplets (computed, not
  zero: Farneback's self-flow is not exactly zero near borders).
  """

  def __init__(self):
    self._last = None  # MATLAB grey of the last frame pushed.
    self._to_prev = None  # FB(V_c, V_p) of the next centre to report.
    self._from_prev = None  # FB(V_p, V_c) of the next centre to report.
    # FB(V_t, V_{t-1}) of the last frame pushed (None after the first): flowD_fb's guide flow when the guide
    # is this stream, so a caller need not compute it again.
    self.last_backward = None

  def push(self, frame):
    """Adds frame t (uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``).

    Returns:
      The :class:`TripletFlows` of centre t - 1, or None for t = 0.
    """
    grey = rgb_to_gray(frame)
    if self._last is None:
      self._to_prev = self._from_prev = farneback_backward_flow(grey, grey)
      self._last = grey
      return None
    forward = farneback_backward_flow(self._last, grey)
    backward = farneback_backward_flow(grey, self._last)
    flows = TripletFlows(self._to_prev, self._from_prev, forward, backward)
    self._to_prev, self._from_prev, self._last = backward, forward, grey
    self.last_backward = backward
    return flows

  def finish(self):
    """The :class:`TripletFlows` of the last centre, whose next frame is itself."""
    if self._last is None:
      raise ValueError('no frame was pushed')
    last = farneback_backward_flow(self._last, self._last)
    return TripletFlows(self._to_prev, self._from_prev, last, last)


def sequence_triplet_flows(frames):
  """:class:`TripletFlows` of every centre t = 0..T-1 of a uint8 ``(T, H, W[, 3])`` video."""
  stream = TripletFlowStream()
  flows = [stream.push(frame) for frame in frames][1:]
  return flows + [stream.finish()]


def fb_consistency_mask(forward, backward):
  """Forward-backward check of VF-Bench (METRICS_VFBENCH.md A.4 step 1, B.5 step 1).

  Args:
    forward: float ``(H, W, 2)`` flow a from the centre to a neighbour.
    backward: float ``(H, W, 2)`` flow b from that neighbour to the centre.

  Returns:
    float64 ``(H, W)``: 1.0 where ``|a + warp(b, a)|_2 < 1`` px (strict), else 0.0.
  """
  cycle = np.asarray(forward, np.float64) + warp_bilinear(backward, forward)
  return (np.sqrt(np.sum(cycle * cycle, axis=-1)) < VFBENCH_FB_THRESHOLD).astype(np.float64)


def _triplet(prev, curr, next_):
  """Validates three uint8 frames of one shape; returns them as float64 (H, W, C)."""
  frames = [np.asarray(f) for f in (prev, curr, next_)]
  if any(f.dtype != np.uint8 for f in frames):
    raise ValueError(f'frames must be uint8, got {[f.dtype for f in frames]}.')
  if len({f.shape for f in frames}) > 1 or frames[0].ndim not in (2, 3):
    raise ValueError('frames must share one shape (H, W) or (H, W, C), got '
                     f'{[f.shape for f in frames]}.')
  return [f.astype(np.float64).reshape(f.shape[:2] + (-1,)) for f in frames]


def _masked_error(curr, warped, mask):
  """e_s of B.5 step 4: masked mean of the channel-mean |G_c - warped|."""
  error = np.mean(np.abs(curr - warped), axis=-1)
  return float(np.sum(mask * error) / (np.sum(mask) + VFBENCH_EPS))


def source_masks(source_flows):
  """The masks M_p, M_n of one centre (METRICS_VFBENCH.md B.5 step 1), shared by every fused video.

  Args:
    source_flows: one :class:`TripletFlows` at the centre per source video
      (infrared, visible).

  Returns:
    ``(mask_p, mask_n)``, float64 ``(H, W)`` of 0.0/1.0: 1 where every source
    passes :func:`fb_consistency_mask` on that side.
  """
  mask_p = np.prod([fb_consistency_mask(s.to_prev, s.from_prev) for s in source_flows], axis=0)
  mask_n = np.prod([fb_consistency_mask(s.to_next, s.from_next) for s in source_flows], axis=0)
  return mask_p, mask_n


def biswe_fb_term(prev, curr, next_, fused_flows, masks):
  """BiSWE_fb of one centre t (METRICS_VFBENCH.md B.5), for streaming evaluation.

  Args:
    prev: uint8 fused frame G_p, ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
    curr: uint8 fused frame G_c of the same shape.
    next_: uint8 fused frame G_n of the same shape.
    fused_flows: :class:`TripletFlows` of the fused video at c.
    masks: :func:`source_masks` of the sources at c.

  Returns:
    ``(biswe, valid_frac)``: ``e_p + e_n`` in grey levels, in [0, 510], lower
    is better (an empty mask gives e_s = 0, as in VF-Bench); and the
    diagnostic ``(mean M_p + mean M_n) / 2`` in [0, 1].
  """
  g_p, g_c, g_n = _triplet(prev, curr, next_)
  mask_p, mask_n = masks
  e_p = _masked_error(g_c, warp_bilinear(g_p, fused_flows.to_prev), mask_p)
  e_n = _masked_error(g_c, warp_bilinear(g_n, fused_flows.to_next), mask_n)
  return e_p + e_n, 0.5 * (float(np.mean(mask_p)) + float(np.mean(mask_n)))


def ms2r_fb_term(fused_flows, source_flows):
  """MS2R_fb of one centre t (METRICS_VFBENCH.md B.6), for streaming evaluation.

  Args:
    fused_flows: :class:`TripletFlows` of the fused video at c.
    source_flows: one :class:`TripletFlows` at c per source video (infrared,
      visible).

  Returns:
    Mean over the sources k of ``mean |d_G - d_Sk|`` over all 2 H W flow
    components, with ``d_V = FB(V_c, V_n) - FB(V_p, V_c)`` (no warping, no
    mask); px/frame^2, >= 0, lower is better.
  """
  d_fused = fused_flows.to_next - fused_flows.from_prev
  return float(np.mean([np.mean(np.abs(d_fused - (s.to_next - s.from_prev))) for s in source_flows]))


def _vfbench_terms(fused_frames, ir_frames, vi_frames):
  """(biswe, valid_frac, ms2r) of every centre of a video (B.4-B.7)."""
  fused = _sequence(fused_frames, 'fused_frames')
  sources = [_sequence(ir_frames, 'ir_frames'), _sequence(vi_frames, 'vi_frames')]
  for name, frames in zip(('ir_frames', 'vi_frames'), sources):
    if frames.shape[:3] != fused.shape[:3]:
      raise ValueError(f'fused_frames and {name} must share (T, H, W); got {fused.shape[:3]} and '
                       f'{frames.shape[:3]}.')
  fused_flows = sequence_triplet_flows(fused)
  source_flows = list(zip(*(sequence_triplet_flows(s) for s in sources)))
  last = len(fused) - 1
  for t in range(len(fused)):
    prev, next_ = fused[max(t - 1, 0)], fused[min(t + 1, last)]
    biswe, valid = biswe_fb_term(prev, fused[t], next_, fused_flows[t], source_masks(source_flows[t]))
    yield biswe, valid, ms2r_fb_term(fused_flows[t], source_flows[t])


def biswe_fb(fused_frames, ir_frames, vi_frames):
  """BiSWE_fb of a video (METRICS_VFBENCH.md B.5): mean over the T centres of :func:`biswe_fb_term`.

  Args:
    fused_frames: uint8 ``(T, H, W)`` or ``(T, H, W, 3)``, T >= 2: the fused
      video as saved; the error is taken in its own channels.
    ir_frames: uint8 ``(T, H, W[, 1 or 3])`` infrared source (flows only).
    vi_frames: uint8 ``(T, H, W[, 3])`` visible source (flows only).

  Returns:
    Grey levels in [0, 510]; lower is better. Swapping the sources changes nothing.
  """
  return float(np.mean([terms[0] for terms in _vfbench_terms(fused_frames, ir_frames, vi_frames)]))


def ms2r_fb(fused_frames, ir_frames, vi_frames):
  """MS2R_fb of a video (METRICS_VFBENCH.md B.6): mean over the T centres of :func:`ms2r_fb_term`.

  Args: as :func:`biswe_fb`.

  Returns:
    px/frame^2, >= 0 (0 exactly when the fused video equals both sources);
    lower is better. Swapping the sources changes nothing.
  """
  return float(np.mean([terms[2] for terms in _vfbench_terms(fused_frames, ir_frames, vi_frames)]))
