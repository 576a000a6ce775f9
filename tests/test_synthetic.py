"""Tests of vfusion_jax.data.synthetic: determinism, layout, registration, coherence and illumination."""

import pickle
import time

import numpy as np
import pytest
from scipy import ndimage

from vfusion_jax import metrics
from vfusion_jax.data import synthetic

SEEDS = (0, 1, 2)
# Registration check: normalised cross-correlation of IR/visible edges over shifts up to this many pixels.
MAX_SHIFT = 3
# Budget for rendering a 64-frame 128x128 video (it takes well under 0.2 s on one core).
RENDER_BUDGET_S = 1.0


def _luma(vi):
  return vi @ np.array([0.299, 0.587, 0.114], np.float32)


def _edges(image):
  return np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1))


def _ncc(a, b):
  a = a - a.mean()
  b = b - b.mean()
  return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_shapes_dtypes_ranges_and_determinism():
  a = synthetic.synthetic_video_pair(0, num_frames=5, height=48, width=64)
  b = synthetic.synthetic_video_pair(np.random.default_rng(0), num_frames=5, height=48, width=64)
  c = synthetic.synthetic_video_pair(1, num_frames=5, height=48, width=64)
  assert a['ir_gt'].shape == (5, 48, 64, 1) and a['vi_gt'].shape == (5, 48, 64, 3)
  assert a['mask'].shape == (5, 48, 64, 1) and isinstance(a['night'], bool)
  for key in ('ir_gt', 'vi_gt', 'mask'):
    assert a[key].dtype == np.float32
    assert 0.0 <= a[key].min() and a[key].max() <= 1.0
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['ir_gt'], c['ir_gt'])


def test_frame_ranges_render_the_same_video():
  full = synthetic.synthetic_video_pair(3, num_frames=12, height=40, width=40, night=True)
  part = synthetic.synthetic_video_pair(3, num_frames=12, height=40, width=40, night=True, frames=range(4, 8))
  np.testing.assert_array_equal(part['ir_gt'], full['ir_gt'][4:8])
  np.testing.assert_array_equal(part['vi_gt'], full['vi_gt'][4:8])
  with pytest.raises(ValueError):
    synthetic.synthetic_video_pair(3, num_frames=12, frames=[12])


@pytest.mark.parametrize('seed', SEEDS)
def test_infrared_and_visible_are_registered(seed):
  """Objects change both modalities exactly where the mask says, and IR/visible edges align at zero shift."""
  pair = synthetic.synthetic_video_pair(seed, num_frames=4, height=96, width=96, night=False, num_objects=4)
  empty = synthetic.synthetic_video_pair(seed, num_frames=4, height=96, width=96, night=False, num_objects=0)
  ir, vi, mask = pair['ir_gt'][..., 0], pair['vi_gt'], pair['mask'][..., 0]
  inside, outside = mask > 0.99, mask == 0
  assert inside.sum() > 20
  ir_change = np.abs(ir - empty['ir_gt'][..., 0])
  vi_change = np.abs(vi - empty['vi_gt']).max(-1)
  assert ir_change[outside].max() == 0 and vi_change[outside].max() == 0
  assert ir_change[inside].mean() > 0.2 and vi_change[inside].mean() > 0.0
  assert ir[inside].mean() > ir[outside].mean() + 0.2  # warm objects.
  ir_edges, vi_edges = _edges(ir[0]), _edges(_luma(vi[0]))
  m = MAX_SHIFT
  scores = {(dy, dx): _ncc(ir_edges[m:-m, m:-m], np.roll(vi_edges, (dy, dx), (0, 1))[m:-m, m:-m])
            for dy in range(-m, m + 1) for dx in range(-m, m + 1)}
  assert max(scores, key=scores.get) == (0, 0)
  assert scores[(0, 0)] > np.median(list(scores.values())) + 0.05


@pytest.mark.parametrize('night', [False, True])
def test_frames_are_temporally_coherent(night):
  for seed in SEEDS:
    pair = synthetic.synthetic_video_pair(seed, num_frames=10, height=64, width=64, night=night)
    for key in ('ir_gt', 'vi_gt'):
      x = pair[key].reshape(10, -1)
      corr = [np.corrcoef(x[t], x[t + 1])[0, 1] for t in range(9)]
      assert min(corr) > 0.8, (seed, key, min(corr))


def test_night_is_dark_and_infrared_stays_informative():
  for seed in SEEDS:
    day = synthetic.synthetic_video_pair(seed, num_frames=3, height=64, width=64, night=False)
    night = synthetic.synthetic_video_pair(seed, num_frames=3, height=64, width=64, night=True)
    assert night['night'] and not day['night']
    np.testing.assert_array_equal(day['mask'], night['mask'])  # same scene, other light.
    assert night['vi_gt'].mean() < 0.5 * day['vi_gt'].mean()
    assert night['vi_gt'].std() < day['vi_gt'].std()
    warm = night['mask'] > 0.99
    if warm.any():
      assert night['ir_gt'][warm].mean() > night['ir_gt'][night['mask'] == 0].mean() + 0.2


def test_rendering_is_fast():
  synthetic.synthetic_video_pair(0, num_frames=8)
  start = time.perf_counter()
  synthetic.synthetic_video_pair(1, num_frames=64, height=128, width=128)
  assert time.perf_counter() - start < RENDER_BUDGET_S


def test_source_examples():
  source = synthetic.SyntheticVideoSource(num_videos=3, frames_per_video=10, frames_per_example=4, height=32,
                                          width=48, seed=5)
  assert len(source) == 3 * 2
  example = source[3]
  assert set(example) == {'video', 'frame_index', 'num_video_frames', 'ir_gt', 'vi_gt'}
  assert example['video'] == 'synthetic_00001' and example['frame_index'] == 4
  assert example['num_video_frames'] == 8  # the frames its 2 whole chunks cover (10 // 4 * 4)
  assert example['ir_gt'].shape == (4, 32, 48, 1) and example['ir_gt'].dtype == np.uint8
  assert example['vi_gt'].shape == (4, 32, 48, 3) and example['vi_gt'].dtype == np.uint8
  # Random access is deterministic, survives pickling, and chunks are consecutive frames of one video.
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[3]['vi_gt'], example['vi_gt'])
  np.testing.assert_array_equal(source[-1]['ir_gt'], source[5]['ir_gt'])
  video = synthetic.synthetic_video_pair(np.random.SeedSequence([5, 1]), num_frames=10, height=32, width=48)
  np.testing.assert_array_equal(source[2]['ir_gt'], metrics.to_uint8(video['ir_gt'][:4]))
  np.testing.assert_array_equal(example['vi_gt'], metrics.to_uint8(video['vi_gt'][4:8]))
  with pytest.raises(IndexError):
    source[len(source)]
