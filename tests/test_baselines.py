"""Classical restoration baselines against independent numpy computations."""

import numpy as np
import pytest

from conftest import shared_data
from vfusion_jax import baselines, metrics
from vfusion_jax.data import video_io

HEIGHT, WIDTH = 12, 20


def _mirror(x, radius, axes):
  """Pads (H, W, C) by ``radius`` on ``axes`` with scipy's 'reflect' borders (d c b a | a b c d)."""
  pad = [(radius, radius) if a in axes else (0, 0) for a in range(x.ndim)]
  return np.pad(x, pad, mode='symmetric')


def _moving_average(profile, width):
  """Moving average of (W, C) along W, mirrored borders, by explicit sums."""
  radius = width // 2
  padded = _mirror(profile, radius, (0,))
  return np.stack([padded[i:i + width].mean(axis=0) for i in range(profile.shape[0])])


def _gaussian_blur(x, sigma):
  """Separable Gaussian of (H, W, C), scipy's kernel (radius int(4 sigma + 0.5)), by explicit sums."""
  radius = int(4 * sigma + 0.5)
  taps = np.arange(-radius, radius + 1)
  kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
  kernel /= kernel.sum()
  for axis in (0, 1):
    padded = _mirror(x, radius, (axis,))
    n = x.shape[axis]
    x = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
  return x


def test_destriping_matches_the_column_profile_high_pass():
  rng = np.random.default_rng(0)
  x = rng.random((HEIGHT, WIDTH, 2))
  profile = x.mean(axis=0)
  expected = x - (profile - _moving_average(profile, baselines.DESTRIPE_WIDTH))[None]
  np.testing.assert_allclose(baselines.destripe_columns(x), expected, atol=1e-12)


def test_destriping_removes_an_added_column_pattern():
  """Alternating column offsets +-a on a smooth scene: all but a / width of them is removed."""
  rows, cols = np.meshgrid(np.linspace(0.2, 0.4, HEIGHT), np.linspace(0.3, 0.5, WIDTH), indexing='ij')
  scene = (0.5 * rows + 0.5 * cols)[..., None]
  amplitude, width = 0.1, 5
  stripes = amplitude * np.where(np.arange(WIDTH) % 2, 1.0, -1.0)[None, :, None]
  residual = baselines.destripe_columns(scene + stripes, width) - baselines.destripe_columns(scene, width)
  assert np.abs(residual).max() <= amplitude / width + 1e-12  # width times smaller than the added pattern.


def test_median_matches_an_explicit_3x3_median():
  rng = np.random.default_rng(1)
  x = rng.random((7, 9, 3))
  padded = _mirror(x, 1, (0, 1))
  expected = np.empty_like(x)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      expected[i, j] = np.median(padded[i:i + 3, j:j + 3].reshape(9, -1), axis=0)
  np.testing.assert_array_equal(baselines.median3x3(x), expected)


def test_unsharp_mask_keeps_a_constant_and_matches_an_explicit_blur():
  constant = np.full((HEIGHT, WIDTH, 3), 0.3)
  np.testing.assert_allclose(baselines.unsharp_mask(constant), constant, atol=1e-12)
  x = np.random.default_rng(2).random((HEIGHT, WIDTH, 3))
  sigma, amount = 1.25, 3.0
  expected = x + amount * (x - _gaussian_blur(x, sigma))
  np.testing.assert_allclose(baselines.unsharp_mask(x, sigma, amount), expected, atol=1e-12)


def test_colour_correction_is_per_channel_affine():
  x = np.random.default_rng(3).random((4, 5, 3))
  corrected = baselines.colour_correct(x)
  for c in range(3):
    np.testing.assert_allclose(corrected[..., c], baselines.VI_GAIN[c] * x[..., c] + baselines.VI_OFFSET[c],
                               atol=1e-12)


def test_restore_ir_and_vi_chain_the_filters_and_clip():
  rng = np.random.default_rng(4)
  ir = rng.integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8)
  vi = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  restored_ir = baselines.restore_ir(ir)
  x = ir / 255.0 - 37.8 / 255.0
  x = baselines.median3x3(baselines.destripe_columns(x))
  np.testing.assert_allclose(restored_ir, np.clip(x, 0, 1), atol=1e-6)
  assert restored_ir.dtype == np.float32 and restored_ir.shape == ir.shape
  restored_vi = baselines.restore_vi(vi)
  y = vi / 255.0 * np.array(baselines.VI_GAIN) + np.array(baselines.VI_OFFSET)
  np.testing.assert_allclose(restored_vi, np.clip(baselines.unsharp_mask(y), 0, 1), atol=1e-6)
  assert restored_vi.min() >= 0 and restored_vi.max() <= 1


def test_restored_max_is_the_pixel_max_with_grey_ir_widened():
  rng = np.random.default_rng(5)
  ir = rng.integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8)
  vi = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  fused = baselines.restored_max(ir, vi)
  expected = np.maximum(np.repeat(baselines.restore_ir(ir), 3, axis=-1), baselines.restore_vi(vi))
  np.testing.assert_array_equal(fused, expected)
  assert fused.dtype == np.float32 and fused.shape == vi.shape


@pytest.mark.parametrize('channels', [1, 3])
def test_pixel_max_and_mean_unstretched_give_back_the_uint8_max_and_mean(channels):
  rng = np.random.default_rng(6)
  ir = rng.integers(0, 256, (HEIGHT, WIDTH, channels), dtype=np.uint8)
  vi = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  ir3 = np.broadcast_to(ir, vi.shape).astype(np.int64)
  np.testing.assert_array_equal(metrics.to_uint8(baselines.pixel_max(ir, vi)), np.maximum(ir3, vi))
  mean = metrics.to_uint8(baselines.pixel_mean(ir, vi)).astype(np.int64)
  assert np.abs(mean - (ir3 + vi) / 2).max() <= 0.5


def test_ir_offset_is_the_training_videos_mean():
  """IR_OFFSET: the mean of infrared_noise - infrared_Enhance over the 40 frames of the training videos."""
  root = shared_data('m3svd_sample')
  differences = []
  for video in baselines.constants()['fitted_on']:
    for path in sorted((root / 'infrared_noise' / video).glob('*.png')):
      noisy = video_io.load_png(path).astype(np.float64)
      clean = video_io.load_png(root / 'infrared_Enhance' / video / path.name).astype(np.float64)
      differences.append(np.mean(noisy - clean))
  assert len(differences) == 40
  assert baselines.IR_OFFSET * 255 == pytest.approx(np.mean(differences), abs=0.05)
