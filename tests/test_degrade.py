"""Tests of vfusion_jax.data.degrade: kernels, blur, IR stripe noise, and the calibration estimators."""

import dataclasses
import pathlib

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage

from vfusion_jax.data import degrade

SAMPLE = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'm3svd_sample'
# The sample's training videos, from which the default ranges were calibrated (0111_1716 is held out).
TRAIN_VIDEOS = ('0114_1609', '0115_1834')
SAMPLE_FRAMES = 4
DRAWS_PER_VIDEO = 8
# Half a grey level: statistics this close to a range end count as inside (they are at the noise floor).
STAT_ATOL = 0.5 / 255
# The infrared coverage test works on this central window of the 480x640 frames, to stay fast.
IR_WINDOW = (slice(120, 360), slice(160, 480))
# Bias-field positivity: many draws on a small virtual frame (the same code path as 480x640), a few at 480x640.
FIELD_DRAW_SIZE = (48, 64)
FIELD_DRAWS = 200
FIELD_DRAWS_FULL = 10
FIELD_ATOL = 1e-6  # float32 rounding of the field.
COVERED_STATS = ('column_std', 'row_std', 'temporal_row_std', 'pixel_std', 'offset_mean', 'offset_min',
                 'offset_max', 'tone_slope')


def _smooth_texture(rng, shape, sigma=2.0):
  """A textured clean image/clip in about [0.1, 0.7]: smoothed noise plus a gradient."""
  x = ndimage.gaussian_filter(rng.random(shape), sigma=[0] * (len(shape) - 3) + [sigma, sigma, 0])
  x = (x - x.min()) / (x.max() - x.min())
  ramp = np.linspace(0.0, 0.2, shape[-2])[None, :, None]
  return (0.1 + 0.5 * x + ramp).astype(np.float32)


def _fixed(value):
  return (value, value)


def _load_sample(kind, video, num_frames=SAMPLE_FRAMES):
  folder = SAMPLE / kind / video
  if not folder.is_dir():
    pytest.skip(f'{folder} is absent: the real M3SVD sample (../shared/data) is not beside this checkout')
  files = sorted(folder.glob('*.png'))[:num_frames]
  return np.stack([np.asarray(Image.open(f).convert('RGB')) for f in files]).astype(np.float32) / 255.0


def test_gaussian_kernel_is_normalised_basicsr_formula():
  sigma = 1.3
  k = degrade.gaussian_kernel(15, sigma)
  assert k.shape == (15, 15)
  np.testing.assert_allclose(k.sum(), 1.0, atol=1e-12)
  expected = np.array([[np.exp(-(x * x + y * y) / (2 * sigma * sigma)) for x in range(-7, 8)]
                       for y in range(-7, 8)])
  np.testing.assert_allclose(k, expected / expected.sum(), rtol=1e-12)
  with pytest.raises(ValueError):
    degrade.gaussian_kernel(14, sigma)


def test_blur_clip_matches_direct_2d_reflect101_convolution():
  rng = np.random.default_rng(0)
  clip = rng.random((2, 20, 23, 3)).astype(np.float32)
  sigma = 1.7
  kernel = degrade.gaussian_kernel(15, sigma)
  padded = np.pad(clip, ((0, 0), (7, 7), (7, 7), (0, 0)), mode='reflect')  # numpy 'reflect' is reflect-101.
  expected = np.zeros(clip.shape)
  for dy in range(15):
    for dx in range(15):
      expected += kernel[dy, dx] * padded[:, dy:dy + 20, dx:dx + 23]
  out = degrade.blur_clip(clip, sigma)
  assert out.dtype == np.float32 and out.shape == clip.shape
  np.testing.assert_allclose(out, expected, atol=2e-6)


def test_degrade_clip_shapes_ranges_and_determinism():
  rng = np.random.default_rng(1)
  ir = _smooth_texture(rng, (4, 32, 40, 1))
  vi = _smooth_texture(rng, (4, 32, 40, 3))
  ir_a, vi_a = degrade.degrade_clip(ir, vi, np.random.default_rng(7))
  ir_b, vi_b = degrade.degrade_clip(ir, vi, np.random.default_rng(7))
  ir_c, _ = degrade.degrade_clip(ir, vi, np.random.default_rng(8))
  assert ir_a.shape == ir.shape and vi_a.shape == vi.shape
  assert ir_a.dtype == np.float32 and vi_a.dtype == np.float32
  for x in (ir_a, vi_a):
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-3)  # 8-bit levels.
  np.testing.assert_array_equal(ir_a, ir_b)
  np.testing.assert_array_equal(vi_a, vi_b)
  assert not np.array_equal(ir_a, ir_c)
  with pytest.raises(ValueError):
    degrade.degrade_clip(ir[..., 0], vi, np.random.default_rng(0))
  with pytest.raises(ValueError):
    degrade.degrade_clip(ir, vi[:3], np.random.default_rng(0))


def test_parameters_are_drawn_once_per_clip():
  """With the per-frame components off, every frame gets the same IR pattern and the same blur."""
  cfg = dataclasses.replace(degrade.DegradationConfig(), ir_pixel_std_range=_fixed(0.0),
                            ir_temporal_row_std_range=_fixed(0.0), quantize=False)
  rng = np.random.default_rng(2)
  frame_ir = np.full((1, 24, 28, 1), 0.4, np.float32)
  frame_vi = _smooth_texture(rng, (1, 24, 28, 3))
  ir_lq, vi_lq = degrade.degrade_clip(np.repeat(frame_ir, 5, 0), np.repeat(frame_vi, 5, 0), rng, cfg)
  np.testing.assert_allclose(ir_lq, np.repeat(ir_lq[:1], 5, 0), atol=1e-6)
  np.testing.assert_allclose(vi_lq, np.repeat(vi_lq[:1], 5, 0), atol=1e-6)
  assert np.std(ir_lq[0, 12, :, 0]) > 0.005  # the column stripes are there.


def test_frame_t_does_not_depend_on_the_frames_that_follow():
  """Degrading the first frames of a clip gives the first frames of degrading the whole clip."""
  rng = np.random.default_rng(9)
  ir = _smooth_texture(rng, (12, 24, 32, 1))
  vi = _smooth_texture(rng, (12, 24, 32, 3))
  cfg = dataclasses.replace(degrade.DegradationConfig(), ir_temporal_row_std_range=_fixed(0.02))
  short = degrade.degrade_clip(ir[:4], vi[:4], np.random.default_rng(3), cfg)
  full = degrade.degrade_clip(ir, vi, np.random.default_rng(3), cfg)
  for a, b in zip(short, full):
    np.testing.assert_array_equal(a, b[:4])
  # The per-frame noise does differ between frames.
  noise = degrade.sample_ir_noise(np.random.default_rng(3), cfg, 2, 24, 32)
  assert not np.array_equal(noise.pixel[0], noise.pixel[1])
  assert not np.array_equal(noise.temporal_row[0], noise.temporal_row[1])


@pytest.mark.parametrize('size', [FIELD_DRAW_SIZE, degrade.DEFAULT_FIELD_FRAME_SIZE])
def test_bias_field_is_positive_for_every_draw(size):
  """The field stays >= FIELD_MIN_FRACTION * mean over the whole frame, also at the worst range ends."""
  draws = FIELD_DRAWS if size == FIELD_DRAW_SIZE else FIELD_DRAWS_FULL
  default = dataclasses.replace(degrade.DegradationConfig(), field_frame_size=size)
  lo_mean = (default.ir_offset_mean_range[0],) * 2
  hi_amplitude = (default.ir_offset_amplitude_range[1],) * 2
  worst = dataclasses.replace(default, ir_offset_mean_range=lo_mean, ir_offset_amplitude_range=hi_amplitude)
  rng = np.random.default_rng(10)
  capped = 0
  for cfg in (default, worst):
    for _ in range(draws):
      noise = degrade.sample_ir_noise(rng, cfg, 1, *size)
      mean = noise.params['offset_mean']
      assert noise.offset.min() >= degrade.FIELD_MIN_FRACTION * mean - FIELD_ATOL, noise.params
      assert noise.params['offset_amplitude'] <= noise.params['offset_amplitude_drawn']
      capped += noise.params['offset_amplitude'] < noise.params['offset_amplitude_drawn']
  assert 0 < capped < 2 * draws


@pytest.mark.parametrize('sigma', [0.9, 1.5, 2.1])
def test_estimate_blur_sigma_recovers_known_sigma(sigma):
  rng = np.random.default_rng(3)
  clean = _smooth_texture(rng, (2, 64, 64, 3), sigma=1.0)
  gain, offset = np.array([0.95, 0.98, 1.0]), np.array([0.04, 0.02, 0.03])
  blurred = degrade.blur_clip(clean, sigma) * gain + offset
  est, est_gain, est_offset = degrade.estimate_blur_sigma(clean, blurred, return_affine=True)
  assert abs(est - sigma) < 0.1
  np.testing.assert_allclose(est_gain, gain, atol=0.02)
  np.testing.assert_allclose(est_offset, offset, atol=0.02)


def test_estimate_stripe_stats_recovers_known_components():
  cfg = degrade.DegradationConfig(ir_column_std_range=_fixed(0.04), ir_row_std_range=_fixed(0.02),
                                  ir_temporal_row_std_range=_fixed(0.015), ir_pixel_std_range=_fixed(0.04),
                                  ir_offset_mean_range=_fixed(0.12), ir_offset_amplitude_range=_fixed(0.1),
                                  ir_tone_knee_range=_fixed(0.4), ir_tone_slope_range=_fixed(0.2))
  rng = np.random.default_rng(4)
  clean = _smooth_texture(rng, (8, 128, 160, 1))
  noise = degrade.sample_ir_noise(rng, cfg, 8, 128, 160)
  noisy = degrade.apply_ir_noise(clean, noise, quantize=True)
  stats = degrade.estimate_stripe_stats(clean, noisy)
  realised = dict(column_std=noise.column.std(), row_std=noise.row.std(),
                  temporal_row_std=noise.temporal_row.std(), pixel_std=noise.pixel.std())
  for key, value in realised.items():
    assert stats[key] == pytest.approx(value, rel=0.1), key
  assert stats['offset_mean'] == pytest.approx(noise.offset.mean(), abs=0.01)
  assert stats['tone_slope'] == pytest.approx(0.2, abs=0.05)


def test_estimate_stripe_stats_sees_no_stripes_in_pixel_noise():
  rng = np.random.default_rng(5)
  clean = _smooth_texture(rng, (6, 96, 96, 1))
  noisy = np.clip(clean + 0.1 + 0.03 * rng.standard_normal(clean.shape), 0, 1)
  stats = degrade.estimate_stripe_stats(clean, noisy)
  assert stats['column_std'] < 0.003 and stats['row_std'] < 0.003 and stats['temporal_row_std'] < 0.003
  assert stats['pixel_std'] == pytest.approx(0.03, rel=0.05)
  assert stats['offset_mean'] == pytest.approx(0.1, abs=0.005)
  assert stats['tone_slope'] == pytest.approx(0.0, abs=0.03)


def test_default_ranges_cover_real_infrared_statistics():
  """Real training (infrared_Enhance, infrared_noise) statistics lie within those of default-range degradations.

  Both are measured on the same central window of the same clean frames; the degradations are drawn as for
  a crop of a 480x640 frame, as in training.
  """
  cfg = degrade.DegradationConfig()
  rng = np.random.default_rng(6)
  real, drawn = {}, []
  for video in TRAIN_VIDEOS:
    clean = _load_sample('infrared_Enhance', video)[:, IR_WINDOW[0], IR_WINDOW[1], :1]
    noisy = _load_sample('infrared_noise', video)[:, IR_WINDOW[0], IR_WINDOW[1], :1]
    real[video] = degrade.estimate_stripe_stats(clean, noisy)
    for _ in range(DRAWS_PER_VIDEO):
      noise = degrade.sample_ir_noise(rng, cfg, *clean.shape[:3])
      drawn.append(degrade.estimate_stripe_stats(clean, degrade.apply_ir_noise(clean, noise, cfg.quantize)))
  for key in COVERED_STATS:
    values = [d[key] for d in drawn]
    lo, hi = min(values), max(values)
    for video, stats in real.items():
      assert lo - STAT_ATOL <= stats[key] <= hi + STAT_ATOL, (video, key, stats[key], lo, hi)


@pytest.mark.parametrize('video', TRAIN_VIDEOS)
def test_default_ranges_cover_real_visible_blur(video):
  """The real training (visible_Enhance, visible_Blur) best fit lies inside the default ranges."""
  clean = _load_sample('visible_Enhance', video, 1)
  blurred = _load_sample('visible_Blur', video, 1)
  sigma, gain, offset = degrade.estimate_blur_sigma(clean, blurred, return_affine=True)
  cfg = degrade.DegradationConfig()
  assert cfg.blur_sigma_range[0] <= sigma <= cfg.blur_sigma_range[1]
  assert np.all((cfg.vi_gain_range[0] <= gain) & (gain <= cfg.vi_gain_range[1])), gain
  assert np.all((cfg.vi_offset_range[0] <= offset) & (offset <= cfg.vi_offset_range[1])), offset
