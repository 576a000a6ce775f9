"""Degradations of clean infrared/visible clips, and the estimators used to calibrate them.

The released VideoFusion reads pre-degraded M3SVD frames from disk (REFERENCE.md 8.5); this module makes
such pairs on the fly from clean clips, so that any clean source (M3SVD GT, the synthetic videos) can train.

Visible: a 15x15 isotropic Gaussian blur (BasicSR kernel, reflect-101 borders, one sigma per clip), then a
per-channel gain/offset, because the real `visible_Blur` frames are also slightly brighter and flatter than
`visible_Enhance` (best fit 0.93-0.99 * blur(gt) + 0.02-0.05 per channel).

Infrared: the stripe model of MDIVDNet (Cai et al., TIP 2024) as described in REFERENCE.md 8.5, adapted to
what the real `infrared_noise` - `infrared_Enhance` pairs show:

  lq = clip(tone(gt) + offset(y, x) + column(x) + row(y) + temporal_row(t, y) + pixel(t, y, x), 0, 1)

* column/row: fixed-pattern stripes, one Gaussian value per column/row, shared by all frames (row stripes:
  absent in M3SVD, off by default);
* temporal_row: one Gaussian value per (frame, row) (MDIVDNet's "line" noise; absent in M3SVD, off by default);
* pixel: i.i.d. Gaussian per pixel and frame;
* offset: a smooth positive bias field, MDIVDNet's normalised log-distance map raised to a power, placed in a
  virtual 480x640 frame from which the clip is a crop, so a small crop sees part of the field as on real data;
  its amplitude is capped so that the field stays above `FIELD_MIN_FRACTION` of its mean everywhere;
* tone: highlight compression tone(v) = v - slope * max(v - knee, 0). The real LQ IR is flatter than its GT
  above a knee (GT looks contrast-stretched), which a spatial field alone cannot explain.

All arrays are float32 in [0, 1], channels-last; a clip is (T, H, W, C). Every function is pure numpy/scipy,
picklable and deterministic given a `numpy.random.Generator`, so it runs in grain worker processes. The clip's
generator draws only per-clip quantities (parameters, fixed patterns, and the seed of the per-frame noise); the
per-frame noise of frame t comes from a generator of its own, so frame t of a degraded clip depends on the
generator's seed, the frame size and t, not on how many frames follow.
"""

import dataclasses
from typing import Optional, Union

import numpy as np
from scipy import ndimage, optimize

Range = tuple[float, float]

KERNEL_SIZE = 15
# Reflect-101 (OpenCV BORDER_REFLECT_101, numpy 'reflect'): d c b | a b c d | c b a.
BORDER_MODE = 'mirror'
UINT8_MAX = 255.0
# Size of the virtual sensor frame in which the bias field lives (M3SVD frames are 640x480).
DEFAULT_FIELD_FRAME_SIZE = (480, 640)
# Log-distance field: log(1 + r / (scale * diagonal)); a small scale makes the field rise quickly near its centre.
LOG_DISTANCE_SCALE = 0.05
# Field centres are drawn in [-margin, 1 + margin] of the virtual frame, so some lie outside it.
FIELD_CENTRE_MARGIN = 0.25
# The frame mean of the field shape is taken on a grid with this stride (pixels).
FIELD_MEAN_STRIDE = 8
# The bias field stays at or above this fraction of its mean over the whole virtual frame (real M3SVD training
# videos: 0.15 and 0.55); larger drawn amplitudes are capped to keep it there.
FIELD_MIN_FRACTION = 0.1
# 32-bit words of entropy drawn from a clip's generator to seed its per-frame generators.
FRAME_SEED_WORDS = 4

# Estimators.
# A pixel is "clipped" when its noisy value is within half a grey level of 0 or 1.
CLIP_EPS = 0.5 / UINT8_MAX
# Degree of the 2-D polynomial that models the smooth offset field.
FIELD_POLY_DEGREE = 4
# Candidate knees of the tone hinge.
TONE_KNEES = tuple(np.round(np.arange(0.05, 0.80, 0.05), 2))
# At most this many pixels enter the field/tone least squares, drawn with a fixed seed.
MAX_FIT_PIXELS = 60_000
FIT_SAMPLE_SEED = 0
# A knee is only considered if at least this fraction of the fitted pixels lies above it.
MIN_KNEE_SUPPORT = 0.02
# Stripe profiles are high-passed with a moving average of this width, so that what is left of a smooth
# field is not counted as stripes; the variance this removes from white stripes is corrected for.
STRIPE_HIGHPASS_WIDTH = 21
# Median absolute deviation -> standard deviation for Gaussian data.
MAD_TO_STD = 1.4826
# Blur search: coarse grid, then a bounded refinement around its best point.
BLUR_SIGMA_GRID = tuple(np.round(np.arange(0.2, 4.01, 0.3), 2))
BLUR_SIGMA_TOL = 1e-3
BLUR_MAX_FRAMES = 2
# At most this many residual values enter the median that gives the per-pixel noise std.
MAX_MEDIAN_VALUES = 1_000_000


@dataclasses.dataclass(frozen=True)
class DegradationConfig:
  """Ranges of the per-clip degradation parameters; each is drawn uniformly from [lo, hi] once per clip.

  Defaults come from the real M3SVD training videos 0114_1609 and 0115_1834 only (the held-out 0111_1716 is
  not used): `python -m vfusion_jax.data.calibrate --held_out=0111_1716` measures them with
  `estimate_blur_sigma` and `estimate_stripe_stats`, and each measured range is widened as its
  `calibrate.suggest_range` says (x1.5 either side, docs/calibration.md). Not measured: the blur sigma keeps
  the paper's range, the field power MDIVDNet's. Values are in [0, 1] intensity units; a range (v, v) fixes a
  parameter, (0, 0) switches a component off. "real" below is the measured training range.

  Attributes:
    blur_sigma_range: Gaussian blur sigma in pixels (paper: U[0.9, 2.1]; real best fit 1.40-1.93).
    vi_gain_range: per-channel gain applied after the blur (real 0.93-0.99).
    vi_offset_range: per-channel offset applied after the blur (real 0.022-0.052).
    ir_column_std_range: std of the fixed column stripes (real 0.031-0.032; MDIVDNet [0, 0.059]).
    ir_row_std_range: std of the fixed row stripes (real: none, <= 0.0005 after removing the smooth field,
      whose vertical variation is what a raw row-mean std of 0.015-0.033 measures; MDIVDNet [0, 0.059]).
    ir_temporal_row_std_range: std of per-frame row stripes (real: none; MDIVDNet [0.02, 0.14]).
    ir_pixel_std_range: std of the per-pixel noise (real 0.043-0.051; MDIVDNet [0.02, 0.14]).
    ir_offset_mean_range: mean of the bias field over the virtual frame (real +0.146..+0.162).
    ir_offset_amplitude_range: max - min of the bias field over the virtual frame (real 0.099-0.181); a draw
      that would take the field below `FIELD_MIN_FRACTION` of its mean somewhere is capped to the largest
      amplitude that does not, so the field is positive for every draw.
    ir_offset_power_range: exponent of the normalised log-distance map (MDIVDNet uses 4).
    ir_tone_knee_range: intensity above which the IR highlights are compressed (real 0.15-0.25).
    ir_tone_slope_range: highlight compression slope, 0 = none (real 0.20-0.26).
    field_frame_size: (H, W) of the virtual frame holding the bias field; clips smaller than it are a
      random crop of it, larger clips use their own size.
    quantize: round the outputs to 8-bit grey levels, as the real LQ frames are 8-bit PNGs.
  """
  blur_sigma_range: Range = (0.9, 2.1)
  vi_gain_range: Range = (0.895, 0.995)
  vi_offset_range: Range = (0.014, 0.078)
  ir_column_std_range: Range = (0.02, 0.049)
  ir_row_std_range: Range = (0.0, 0.0)
  ir_temporal_row_std_range: Range = (0.0, 0.0)
  ir_pixel_std_range: Range = (0.028, 0.077)
  ir_offset_mean_range: Range = (0.097, 0.244)
  ir_offset_amplitude_range: Range = (0.065, 0.272)
  ir_offset_power_range: Range = (1.0, 4.0)
  ir_tone_knee_range: Range = (0.1, 0.375)
  ir_tone_slope_range: Range = (0.133, 0.398)
  field_frame_size: tuple[int, int] = DEFAULT_FIELD_FRAME_SIZE
  quantize: bool = True

  def __post_init__(self):
    for field in dataclasses.fields(self):
      if field.name.endswith('_range'):
        lo, hi = getattr(self, field.name)
        if not lo <= hi:
          raise ValueError(f'{field.name} must satisfy lo <= hi, got {(lo, hi)}')


@dataclasses.dataclass(frozen=True)
class IrNoise:
  """The IR degradation drawn for one clip of T frames of H x W pixels (float32 arrays).

  Attributes:
    column: (W,) fixed column stripes.
    row: (H,) fixed row stripes.
    temporal_row: (T, H) per-frame row stripes.
    pixel: (T, H, W) per-pixel noise.
    offset: (H, W) smooth bias field.
    tone_knee: knee of the highlight compression.
    tone_slope: slope of the highlight compression.
    params: the drawn scalar parameters (stds, field mean/amplitude/power/centre; offset_amplitude is the one
      applied, offset_amplitude_drawn the draw before the cap), for logging and tests.
  """
  column: np.ndarray
  row: np.ndarray
  temporal_row: np.ndarray
  pixel: np.ndarray
  offset: np.ndarray
  tone_knee: float
  tone_slope: float
  params: dict


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
  lo, hi = bounds
  return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _quantize(x: np.ndarray) -> np.ndarray:
  return (np.round(x * UINT8_MAX) / UINT8_MAX).astype(np.float32)


def _to_float(x: np.ndarray, dtype=np.float64) -> np.ndarray:
  """uint8 grey levels or floats in [0, 1] -> floats in [0, 1]."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(dtype) / dtype(UINT8_MAX)
  return x.astype(dtype, copy=False)


def gaussian_kernel(size: int = KERNEL_SIZE, sigma: float = 1.5) -> np.ndarray:
  """BasicSR's isotropic Gaussian kernel: exp(-(x^2 + y^2) / (2 sigma^2)) on the integer grid, sum 1.

  Args:
    size: odd kernel width; the grid is -(size // 2) .. size // 2.
    sigma: standard deviation in pixels (> 0).

  Returns:
    (size, size) float64 kernel.
  """
  if size % 2 != 1 or sigma <= 0:
    raise ValueError(f'need an odd size and sigma > 0, got size={size}, sigma={sigma}')
  k = _gaussian_kernel_1d(size, sigma)
  return np.outer(k, k)


def _gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
  grid = np.arange(size, dtype=np.float64) - size // 2
  k = np.exp(-grid**2 / (2.0 * sigma**2))
  return k / k.sum()


def blur_clip(vi_clip: np.ndarray, sigma: float, kernel_size: int = KERNEL_SIZE) -> np.ndarray:
  """Blurs every frame with the same Gaussian kernel (reflect-101 borders, like cv2.filter2D).

  The normalised isotropic kernel is the outer product of its normalised 1-D profile, so it is applied as two
  1-D passes; the result equals the full 2-D filtering.

  Args:
    vi_clip: (..., H, W, C) float array, e.g. a (T, H, W, C) clip or an (H, W, C) frame.
    sigma: blur sigma in pixels.
    kernel_size: odd kernel width (15 in the paper).

  Returns:
    float32 array of the input's shape.
  """
  x = np.asarray(vi_clip, dtype=np.float32)
  if x.ndim < 3:
    raise ValueError(f'expected (..., H, W, C), got shape {x.shape}')
  if sigma <= 0 or kernel_size % 2 != 1:
    raise ValueError(f'need an odd kernel_size and sigma > 0, got {kernel_size}, {sigma}')
  k = _gaussian_kernel_1d(kernel_size, sigma).astype(np.float32)
  x = ndimage.correlate1d(x, k, axis=-3, mode=BORDER_MODE)
  return ndimage.correlate1d(x, k, axis=-2, mode=BORDER_MODE)


def _log_distance_shape(ys: np.ndarray, xs: np.ndarray, centre: tuple[float, float], power: float,
                        frame_size: tuple[int, int]) -> np.ndarray:
  """The normalised log-distance map on the grid ys x xs (virtual-frame pixel coordinates), in [0, 1]."""
  frame_h, frame_w = frame_size
  cy, cx = centre
  scale = LOG_DISTANCE_SCALE * np.hypot(frame_h, frame_w)
  r = np.hypot(ys[:, None] - cy, xs[None, :] - cx)
  # Exact extremes of r over the frame: distance from the centre to the frame rectangle and to its far corner.
  r_min = np.hypot(max(0.0, -cy, cy - (frame_h - 1)), max(0.0, -cx, cx - (frame_w - 1)))
  r_max = np.hypot(max(cy, frame_h - 1 - cy), max(cx, frame_w - 1 - cx))
  g_min, g_max = np.log1p(r_min / scale), np.log1p(r_max / scale)
  g = (np.log1p(r / scale) - g_min) / max(g_max - g_min, np.finfo(np.float64).eps)
  return np.clip(g, 0.0, 1.0)**power


def log_distance_field(height: int, width: int, centre: tuple[float, float], power: float, *,
                       frame_size: Optional[tuple[int, int]] = None, origin: tuple[int, int] = (0, 0),
                       invert: bool = False) -> np.ndarray:
  """MDIVDNet-style bias-field shape: the normalised log distance to `centre`, raised to `power`.

  The map is normalised to [0, 1] over a virtual frame of `frame_size`; the result is the (height, width)
  window of it at `origin`, so crops of one frame are consistent.

  Args:
    height: window height.
    width: window width.
    centre: (y, x) centre in virtual-frame pixels (may lie outside the frame).
    power: exponent applied to the normalised log distance (> 0).
    frame_size: (H, W) of the virtual frame; defaults to (height, width).
    origin: (top, left) of the window in the virtual frame.
    invert: return 1 - map (a bright spot at the centre instead of a dark one).

  Returns:
    (height, width) float32 array in [0, 1].
  """
  frame_size = frame_size or (height, width)
  top, left = origin
  ys = np.arange(top, top + height, dtype=np.float64)
  xs = np.arange(left, left + width, dtype=np.float64)
  shape = _log_distance_shape(ys, xs, centre, power, frame_size)
  return (1.0 - shape if invert else shape).astype(np.float32)


def sample_ir_noise(rng: np.random.Generator, cfg: DegradationConfig, num_frames: int, height: int,
                    width: int) -> IrNoise:
  """Draws one clip's IR degradation.

  ``rng`` draws, in a fixed order, the scalar parameters, the field geometry, the fixed column and row stripes
  and the seed of the per-frame generators; how much of ``rng`` this uses depends on (height, width) only. The
  temporal row stripes and pixel noise of frame t come from per-frame generator t, so they do not depend on
  ``num_frames``.
  """
  column_std = _uniform(rng, cfg.ir_column_std_range)
  row_std = _uniform(rng, cfg.ir_row_std_range)
  temporal_row_std = _uniform(rng, cfg.ir_temporal_row_std_range)
  pixel_std = _uniform(rng, cfg.ir_pixel_std_range)
  offset_mean = _uniform(rng, cfg.ir_offset_mean_range)
  drawn_amplitude = _uniform(rng, cfg.ir_offset_amplitude_range)
  power = _uniform(rng, cfg.ir_offset_power_range)
  tone_knee = _uniform(rng, cfg.ir_tone_knee_range)
  tone_slope = _uniform(rng, cfg.ir_tone_slope_range)

  frame_h, frame_w = max(height, cfg.field_frame_size[0]), max(width, cfg.field_frame_size[1])
  centre = tuple(float(rng.uniform(-FIELD_CENTRE_MARGIN, 1.0 + FIELD_CENTRE_MARGIN)) * (n - 1)
                 for n in (frame_h, frame_w))
  invert = bool(rng.integers(2))
  origin = (int(rng.integers(frame_h - height + 1)), int(rng.integers(frame_w - width + 1)))
  shape = log_distance_field(height, width, centre, power, frame_size=(frame_h, frame_w), origin=origin,
                             invert=invert)
  frame_shape_mean = _log_distance_shape(np.arange(0, frame_h, FIELD_MEAN_STRIDE, dtype=np.float64),
                                         np.arange(0, frame_w, FIELD_MEAN_STRIDE, dtype=np.float64),
                                         centre, power, (frame_h, frame_w)).mean()
  if invert:
    frame_shape_mean = 1.0 - frame_shape_mean
  # shape >= 0, so the field is >= offset_mean - amplitude * frame_shape_mean everywhere in the virtual frame.
  offset_amplitude = drawn_amplitude
  if frame_shape_mean > 0:
    offset_amplitude = min(drawn_amplitude, (1.0 - FIELD_MIN_FRACTION) * offset_mean / frame_shape_mean)
  offset = offset_mean + offset_amplitude * (shape - np.float32(frame_shape_mean))

  column = column_std * rng.standard_normal(width, dtype=np.float32)
  row = row_std * rng.standard_normal(height, dtype=np.float32)
  frame_seeds = np.random.SeedSequence(rng.integers(np.iinfo(np.uint32).max, size=FRAME_SEED_WORDS,
                                                    dtype=np.uint32, endpoint=True))
  temporal_row = np.empty((num_frames, height), np.float32)
  pixel = np.empty((num_frames, height, width), np.float32)
  for t, seed in enumerate(frame_seeds.spawn(num_frames)):
    frame_rng = np.random.default_rng(seed)
    temporal_row[t] = temporal_row_std * frame_rng.standard_normal(height, dtype=np.float32)
    pixel[t] = pixel_std * frame_rng.standard_normal((height, width), dtype=np.float32)
  params = dict(column_std=column_std, row_std=row_std, temporal_row_std=temporal_row_std, pixel_std=pixel_std,
                offset_mean=offset_mean, offset_amplitude=offset_amplitude,
                offset_amplitude_drawn=drawn_amplitude, offset_power=power, offset_centre=centre,
                offset_invert=invert, offset_origin=origin)
  return IrNoise(column=column, row=row, temporal_row=temporal_row, pixel=pixel,
                 offset=offset.astype(np.float32), tone_knee=tone_knee, tone_slope=tone_slope, params=params)


def apply_ir_noise(ir_clip: np.ndarray, noise: IrNoise, quantize: bool = True) -> np.ndarray:
  """Applies a drawn `IrNoise` to a clean (T, H, W, 1) IR clip; returns the float32 noisy clip in [0, 1]."""
  x = np.asarray(ir_clip, dtype=np.float32)[..., 0]
  x = x - np.float32(noise.tone_slope) * np.maximum(x - np.float32(noise.tone_knee), 0.0)
  x = (x + noise.offset[None] + noise.column[None, None, :] + noise.row[None, :, None]
       + noise.temporal_row[:, :, None] + noise.pixel)
  x = np.clip(x, 0.0, 1.0)[..., None]
  return _quantize(x) if quantize else x.astype(np.float32)


def degrade_visible(vi_clip: np.ndarray, sigma: float, gain: np.ndarray, offset: np.ndarray,
                    quantize: bool = True) -> np.ndarray:
  """Blurs a (T, H, W, 3) clip with one sigma, then applies a per-channel gain/offset; float32 in [0, 1]."""
  x = blur_clip(vi_clip, sigma)
  x = np.clip(x * np.asarray(gain, np.float32) + np.asarray(offset, np.float32), 0.0, 1.0)
  return _quantize(x) if quantize else x


def degrade_clip(ir_clip: np.ndarray, vi_clip: np.ndarray, rng: np.random.Generator,
                 cfg: Optional[DegradationConfig] = None) -> tuple[np.ndarray, np.ndarray]:
  """Degrades a registered clean clip pair; parameters are drawn once per clip (IR first, then visible).

  Frame t of the result depends on ``rng``'s state, the frame size, t and clean frame t only: degrading the first
  k frames of a clip gives the first k frames of degrading the whole clip (see `sample_ir_noise`).

  Args:
    ir_clip: (T, H, W, 1) clean infrared, float in [0, 1] or uint8.
    vi_clip: (T, H, W, 3) clean visible, float in [0, 1] or uint8.
    rng: the generator all randomness comes from.
    cfg: parameter ranges; defaults to `DegradationConfig()`.

  Returns:
    (ir_lq (T, H, W, 1), vi_lq (T, H, W, 3)), float32 in [0, 1].
  """
  cfg = cfg or DegradationConfig()
  ir_clip = _to_float(ir_clip, np.float32)
  vi_clip = _to_float(vi_clip, np.float32)
  if ir_clip.ndim != 4 or ir_clip.shape[-1] != 1:
    raise ValueError(f'ir_clip must be (T, H, W, 1), got {ir_clip.shape}')
  if vi_clip.ndim != 4 or vi_clip.shape[-1] != 3 or vi_clip.shape[:3] != ir_clip.shape[:3]:
    raise ValueError(f'vi_clip must be (T, H, W, 3) matching ir_clip {ir_clip.shape}, got {vi_clip.shape}')
  num_frames, height, width = ir_clip.shape[:3]
  noise = sample_ir_noise(rng, cfg, num_frames, height, width)
  ir_lq = apply_ir_noise(ir_clip, noise, cfg.quantize)
  sigma = _uniform(rng, cfg.blur_sigma_range)
  gain = np.array([_uniform(rng, cfg.vi_gain_range) for _ in range(3)], np.float32)
  offset = np.array([_uniform(rng, cfg.vi_offset_range) for _ in range(3)], np.float32)
  vi_lq = degrade_visible(vi_clip, sigma, gain, offset, cfg.quantize)
  return ir_lq, vi_lq


def _affine_fit_sse(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """Least-squares y ~ a x + b over all elements; returns (sse, a, b)."""
  x = x.ravel().astype(np.float64)
  y = y.ravel().astype(np.float64)
  xm, ym = x.mean(), y.mean()
  xc, yc = x - xm, y - ym
  sxx, sxy, syy = (float(np.einsum('n,n->', u, v)) for u, v in ((xc, xc), (xc, yc), (yc, yc)))
  a = sxy / sxx if sxx > 0 else 0.0
  return max(syy - a * sxy, 0.0), a, ym - a * xm


def estimate_blur_sigma(clean: np.ndarray, blurred: np.ndarray, *, return_affine: bool = False,
                        max_frames: int = BLUR_MAX_FRAMES,
                        kernel_size: int = KERNEL_SIZE) -> Union[float, tuple[float, np.ndarray, np.ndarray]]:
  """Best-fit Gaussian blur sigma between a clean and a blurred clip.

  Minimises, over sigma, the squared error of blurred ~ gain_c * blur(clean, sigma) + offset_c with a
  least-squares gain/offset per channel (the real pairs need it), away from the borders. A coarse grid
  search is refined by a bounded scalar search.

  Args:
    clean: (T, H, W, C) or (H, W, C) clean frames, float in [0, 1] or uint8.
    blurred: the same frames blurred, same shape.
    return_affine: also return the per-channel gains and offsets.
    max_frames: frames used (evenly spaced), to bound the cost on long clips.
    kernel_size: kernel width assumed.

  Returns:
    sigma, or (sigma, gain (C,), offset (C,)) if return_affine.
  """
  clean = _to_float(clean, np.float32)
  blurred = _to_float(blurred, np.float32)
  if clean.shape != blurred.shape or clean.ndim not in (3, 4):
    raise ValueError(f'need equal (T, H, W, C) or (H, W, C) shapes, got {clean.shape}, {blurred.shape}')
  if clean.ndim == 3:
    clean, blurred = clean[None], blurred[None]
  frames = np.unique(np.linspace(0, clean.shape[0] - 1, min(max_frames, clean.shape[0])).round().astype(int))
  clean, blurred = clean[frames], blurred[frames]
  border = kernel_size // 2
  if min(clean.shape[1:3]) <= 2 * border:
    raise ValueError(f'frames of {clean.shape[1:3]} are too small for a {kernel_size}-pixel kernel')
  inner = (slice(None), slice(border, -border), slice(border, -border))
  target = blurred[inner]

  def fit(sigma: float) -> tuple[float, list, list]:
    model = blur_clip(clean, sigma, kernel_size)[inner]
    fits = [_affine_fit_sse(model[..., c], target[..., c]) for c in range(clean.shape[-1])]
    return sum(f[0] for f in fits), [f[1] for f in fits], [f[2] for f in fits]

  grid = np.asarray(BLUR_SIGMA_GRID)
  errors = [fit(s)[0] for s in grid]
  best = int(np.argmin(errors))
  lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
  result = optimize.minimize_scalar(lambda s: fit(s)[0], bounds=(lo, hi), method='bounded',
                                    options=dict(xatol=BLUR_SIGMA_TOL))
  sigma = float(result.x) if result.fun <= errors[best] else float(grid[best])
  if not return_affine:
    return sigma
  _, gain, offset = fit(sigma)
  return sigma, np.asarray(gain), np.asarray(offset)


def _as_gray_clip(x: np.ndarray) -> np.ndarray:
  """(T, H, W), (T, H, W, C) float or uint8 -> (T, H, W) float64 (channels averaged; IR channels are equal)."""
  x = _to_float(x)
  if x.ndim == 4:
    x = x.mean(-1)
  if x.ndim != 3:
    raise ValueError(f'expected a (T, H, W[, C]) clip, got shape {x.shape}')
  return x


def _poly_basis(height: int, width: int, degree: int) -> np.ndarray:
  """(H, W, K) monomials x^i y^j, i + j <= degree, on coordinates scaled to [-1, 1]."""
  y = np.linspace(-1.0, 1.0, height)[:, None]
  x = np.linspace(-1.0, 1.0, width)[None, :]
  terms = [np.broadcast_to(x**i * y**j, (height, width)) for i in range(degree + 1) for j in range(degree + 1 - i)]
  return np.stack(terms, -1)


def _masked_mean(x: np.ndarray, mask: np.ndarray, axis: Union[int, tuple[int, ...]]) -> np.ndarray:
  """Mean of x over `axis` where mask is true; 0 where nothing is."""
  total = np.where(mask, x, 0.0).sum(axis)
  return total / np.maximum(mask.sum(axis), 1)


def _highpass(profile: np.ndarray, axis: int = -1) -> np.ndarray:
  return profile - ndimage.uniform_filter1d(profile, STRIPE_HIGHPASS_WIDTH, axis=axis, mode='reflect')


def estimate_stripe_stats(clean_ir: np.ndarray, noisy_ir: np.ndarray) -> dict:
  """Measures the IR degradation of a registered clean/noisy clip under this module's IR model.

  Steps: on d = noisy - clean, a joint least-squares fit of a degree-4 polynomial field plus a tone hinge
  (knee by grid search); the column/row means of the rest over all frames, high-passed, are the fixed
  stripes; per frame, the row means of what is left (minus their temporal mean) are the temporal row stripes,
  and the remaining, temporally centred residual gives the per-pixel std (median absolute deviation, robust to
  scene motion). Clipped noisy pixels are ignored; variances are corrected for the noise that leaks into
  the averages and for the high-pass.

  Args:
    clean_ir: (T, H, W) or (T, H, W, C) clean infrared, float in [0, 1] or uint8; T >= 2.
    noisy_ir: the registered noisy clip, same shape.

  Returns:
    dict of floats: column_std, row_std, temporal_row_std, pixel_std, offset_mean, offset_min, offset_max
    (of the fitted field), tone_knee (nan when no hinge fits), tone_slope (compression > 0) and
    clipped_fraction.
  """
  clean = _as_gray_clip(clean_ir)
  noisy = _as_gray_clip(noisy_ir)
  if clean.shape != noisy.shape:
    raise ValueError(f'shapes differ: {clean.shape} vs {noisy.shape}')
  num_frames, height, width = clean.shape
  if num_frames < 2:
    raise ValueError('need at least 2 frames to separate fixed and temporal components')
  diff = noisy - clean
  valid = (noisy > CLIP_EPS) & (noisy < 1.0 - CLIP_EPS)
  valid_idx = np.flatnonzero(valid)
  if valid_idx.size < MAX_FIT_PIXELS // 100:
    raise ValueError('too few unclipped pixels to fit the offset field')

  # Field + tone hinge: joint least squares on a fixed pseudo-random subsample of the unclipped pixels of all
  # frames (per-frame values, since the hinge is not linear in the scene).
  basis = _poly_basis(height, width, FIELD_POLY_DEGREE)
  fit_idx = np.sort(valid_idx[np.random.default_rng(FIT_SAMPLE_SEED).integers(0, valid_idx.size,
                                                                                MAX_FIT_PIXELS)])
  basis_fit = basis.reshape(-1, basis.shape[-1])[fit_idx % (height * width)]
  target = diff.ravel()[fit_idx]
  clean_fit = clean.ravel()[fit_idx]
  # Normal equations: the polynomial block is shared by all knees, each knee adds one row and column.
  # Products go through einsum, not BLAS, whose threads crawl when data workers share few cores.
  gram = np.einsum('ni,nj->ij', basis_fit, basis_fit)
  basis_target = np.einsum('ni,n->i', basis_fit, target)
  target_energy = float(np.einsum('n,n->', target, target))
  poly_coef = np.linalg.solve(gram, basis_target)
  best_sse = target_energy - float(np.einsum('i,i->', poly_coef, basis_target))
  knee, hinge = float('nan'), 0.0
  for candidate in TONE_KNEES:
    hinge_col = np.maximum(clean_fit - candidate, 0.0)
    if np.mean(hinge_col > 0) < MIN_KNEE_SUPPORT:
      continue
    cross = np.einsum('ni,n->i', basis_fit, hinge_col)
    hinge_energy = np.einsum('n,n->', hinge_col, hinge_col)
    system = np.block([[gram, cross[:, None]], [cross[None, :], np.array([[hinge_energy]])]])
    rhs = np.append(basis_target, np.einsum('n,n->', hinge_col, target))
    coef = np.linalg.solve(system, rhs)
    sse = target_energy - float(np.einsum('i,i->', coef, rhs))
    if sse < best_sse:
      best_sse, knee, hinge, poly_coef = sse, float(candidate), float(coef[-1]), coef[:-1]
  field = np.einsum('hwk,k->hw', basis, poly_coef)
  tone = hinge * np.maximum(clean - knee, 0.0) if hinge else 0.0

  # Fixed stripes: high-passed column and row means of the residual over all frames.
  resid = diff - field - tone
  column = _masked_mean(resid, valid, (0, 1))
  column_hp = _highpass(column - column.mean())
  row = _masked_mean(resid - column_hp, valid, (0, 2))
  row_hp = _highpass(row - row.mean())

  # Per-frame residual: temporal row stripes and per-pixel noise.
  frame_resid = resid - column_hp[None, None] - row_hp[None, :, None]
  row_means = _masked_mean(frame_resid, valid, 2)
  pixel = frame_resid - row_means[:, :, None]
  pixel = pixel - _masked_mean(pixel, valid, 0)[None]
  pixel = pixel[valid & (valid.sum(0) >= 2)[None]]
  pixel = pixel[::max(1, pixel.size // MAX_MEDIAN_VALUES)]
  temporal_correction = num_frames / (num_frames - 1)
  pixel_var = (MAD_TO_STD * np.median(np.abs(pixel)))**2 * temporal_correction
  highpass_correction = 1.0 / (1.0 - 1.0 / STRIPE_HIGHPASS_WIDTH)
  temporal_rows = _highpass(row_means - row_means.mean(0), axis=1)
  temporal_row_var = np.var(temporal_rows) * temporal_correction * highpass_correction - pixel_var / width
  column_var = np.var(column_hp) * highpass_correction - pixel_var / (num_frames * height)
  row_var = (np.var(row_hp) * highpass_correction - pixel_var / (num_frames * width)
             - max(temporal_row_var, 0.0) / num_frames)
  std = lambda var: float(np.sqrt(max(var, 0.0)))
  return dict(column_std=std(column_var), row_std=std(row_var), temporal_row_std=std(temporal_row_var),
              pixel_std=std(pixel_var), offset_mean=float(field.mean()), offset_min=float(field.min()),
              offset_max=float(field.max()), tone_knee=knee, tone_slope=float(-hinge),
              clipped_fraction=float(1.0 - valid.mean()))
