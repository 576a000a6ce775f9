"""The fusion baselines of ``evaluate``: pixel max / mean of the inputs, and classical restoration + max.

``pixel_max`` and ``pixel_mean`` fuse the inputs as they are. ``restored_max``, the control that learned fusion
must beat in the degraded setting, restores each degraded input with a few fixed filters and fuses them with
``pixel_max``:

* infrared: subtract the training videos' mean offset (``IR_OFFSET``), remove column stripes
  (``destripe_columns``), then a 3x3 median (``median3x3``);
* visible: a per-channel affine colour correction fitted on the training videos (``VI_GAIN``, ``VI_OFFSET``),
  then an unsharp mask (``unsharp_mask``).

Every constant was measured on the two training videos of ``../shared/data/m3svd_sample`` (0114_1609 and
0115_1834, 20 frames each), never on the held-out 0111_1716; docs/evaluation.md gives the commands. Frames are
float arrays in grey levels / 255, channels-last ``(H, W, C)``; filters act on each channel alone, with mirrored
borders (``d c b a | a b c d``, scipy's 'reflect').
"""

import numpy as np
from scipy import ndimage

UINT8_MAX = 255.0  # uint8 grey levels <-> [0, 1].
# Mean of infrared_noise - infrared_Enhance over every pixel of the 40 training frames: 37.82 grey levels
# (per-frame means 32.3 to 41.2; the held-out 0111_1716 has 29.5, unused).
IR_OFFSET = 37.8 / UINT8_MAX
# Width in pixels of the moving average that keeps the slow part of the column-mean profile; what it removes
# (the column-to-column part) is the stripe pattern. Best training PSNR of widths 5 to 61.
DESTRIPE_WIDTH = 15
MEDIAN_SIZE = 3  # IR median window (pixels per side).
# Least-squares fit visible_Enhance = gain * visible_Blur + offset per RGB channel over every pixel of the 40
# training frames (grey levels; the held-out video gives gains 1.096 / 1.065 / 1.074 and offsets -13.6 / -9.8 /
# -11.7).
VI_GAIN = (1.0963, 1.0688, 1.0617)
VI_OFFSET = (-14.58 / UINT8_MAX, -10.83 / UINT8_MAX, -10.31 / UINT8_MAX)
# Unsharp mask x + amount (x - G_sigma * x) of the colour-corrected visible frame: the best training PSNR of a
# coarse search over sigma 1 to 3 px and amount 0.5 to 3.5.
UNSHARP_SIGMA = 1.25  # Gaussian sigma in pixels (scipy's kernel: radius int(4 sigma + 0.5)).
UNSHARP_AMOUNT = 3.0
FILTER_MODE = 'reflect'  # scipy.ndimage border mode: mirrored, edge pixel repeated.


def _float(frame: np.ndarray) -> np.ndarray:
  """uint8 (H, W, C) -> float64 in [0, 1]; float input is taken as already in [0, 1]."""
  frame = np.asarray(frame)
  return frame / UINT8_MAX if frame.dtype == np.uint8 else frame.astype(np.float64)


def destripe_columns(x: np.ndarray, width: int = DESTRIPE_WIDTH) -> np.ndarray:
  """Removes a per-column offset from float (H, W, C) frames; returns float64 (H, W, C), not clipped.

  The column-mean profile m (W, C) minus its ``width``-pixel moving average is the stripe pattern; it is
  subtracted from every row.
  """
  profile = x.mean(axis=0)
  smooth = ndimage.uniform_filter1d(profile, size=width, axis=0, mode=FILTER_MODE)
  return x - (profile - smooth)[None]


def median3x3(x: np.ndarray) -> np.ndarray:
  """``MEDIAN_SIZE`` x ``MEDIAN_SIZE`` median of each channel of (H, W, C) frames, mirrored borders."""
  return ndimage.median_filter(x, size=(MEDIAN_SIZE, MEDIAN_SIZE, 1), mode=FILTER_MODE)


def unsharp_mask(x: np.ndarray, sigma: float = UNSHARP_SIGMA, amount: float = UNSHARP_AMOUNT) -> np.ndarray:
  """``x + amount (x - G_sigma * x)`` per channel of float (H, W, C) frames; float64, not clipped."""
  x = np.asarray(x, np.float64)
  blurred = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode=FILTER_MODE)
  return x + amount * (x - blurred)


def colour_correct(x: np.ndarray, gain=VI_GAIN, offset=VI_OFFSET) -> np.ndarray:
  """Per-channel ``gain * x + offset`` of float (H, W, 3) frames in [0, 1]; float64, not clipped."""
  return np.asarray(x, np.float64) * np.asarray(gain) + np.asarray(offset)


def restore_ir(ir: np.ndarray) -> np.ndarray:
  """Degraded IR, uint8 (H, W, 1|3) -> offset removed, destriped, median-filtered float32 in [0, 1]."""
  x = destripe_columns(_float(ir) - IR_OFFSET)
  return np.clip(median3x3(x), 0.0, 1.0).astype(np.float32)


def restore_vi(vi: np.ndarray) -> np.ndarray:
  """Degraded visible, uint8 (H, W, 3) -> colour-corrected, unsharp-masked float32 in [0, 1]."""
  return np.clip(unsharp_mask(colour_correct(_float(vi))), 0.0, 1.0).astype(np.float32)


def pixel_max(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
  """Pixel-wise max of IR (H, W, 1|3) and visible (H, W, 3), uint8 or float in [0, 1] -> float32 (H, W, 3).

  Grey IR is widened to RGB (its one channel against each visible channel).
  """
  ir, vi = _float(ir).astype(np.float32), _float(vi).astype(np.float32)
  return np.maximum(np.broadcast_to(ir, vi.shape), vi)


def pixel_mean(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
  """Pixel-wise mean of IR (H, W, 1|3) and visible (H, W, 3), uint8 or float in [0, 1] -> float32 (H, W, 3)."""
  ir, vi = _float(ir).astype(np.float32), _float(vi).astype(np.float32)
  return (np.broadcast_to(ir, vi.shape) + vi) / np.float32(2)


def restored_max(ir: np.ndarray, vi: np.ndarray) -> np.ndarray:
  """``pixel_max(restore_ir(ir), restore_vi(vi))``: float32 (H, W, 3) in [0, 1].

  Quantise it as the network's fused output (``metrics.fused_to_uint8``).
  """
  return pixel_max(restore_ir(ir), restore_vi(vi))


def constants() -> dict:
  """The restoration constants, for the evaluation's metrics.json (grey levels where the value is a level)."""
  return {'ir_offset': IR_OFFSET * UINT8_MAX, 'destripe_width': DESTRIPE_WIDTH, 'median_size': MEDIAN_SIZE,
          'vi_gain': list(VI_GAIN), 'vi_offset': [o * UINT8_MAX for o in VI_OFFSET],
          'unsharp_sigma': UNSHARP_SIGMA, 'unsharp_amount': UNSHARP_AMOUNT,
          'fitted_on': ['0114_1609', '0115_1834']}
