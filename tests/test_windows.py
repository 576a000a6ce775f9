"""Temporal windows, pad/crop, tiles and the streaming engine (pure numpy: no network here)."""

import itertools

import numpy as np
import pytest

from vfusion_jax import windows


@pytest.mark.parametrize('num_frames, window, overlap, starts', [
    (20, 7, 0, [0, 7, 13]),  # REFERENCE.md 8.4 example.
    (200, 7, 0, list(range(0, 196, 7)) + [193]),  # 28 clips of 7 + the last 7 frames.
    (21, 7, 0, [0, 7, 14]),  # Divisible: no extra window.
    (5, 7, 0, [0]),  # Shorter than a window: one window.
    (7, 7, 3, [0]),
    (20, 7, 2, [0, 5, 10, 13]),
    (1, 7, 0, [0]),
    (20, 8, 0, [0, 8, 12]),  # Training chunks of the dataset builders: the same windows.
    (16, 8, 0, [0, 8]),
    (7, 1, 0, list(range(7))),
])
def test_window_starts(num_frames, window, overlap, starts):
  assert windows.window_starts(num_frames, window, overlap) == starts


@pytest.mark.parametrize('num_frames, window, overlap', [(0, 7, 0), (5, 0, 0), (5, 3, 3), (5, 3, -1)])
def test_window_starts_rejects_bad_arguments(num_frames, window, overlap):
  with pytest.raises(ValueError):
    windows.window_starts(num_frames, window, overlap)


def _coverage(plan, num_frames):
  weights = np.zeros((num_frames, len(plan)))
  for k, w in enumerate(plan):
    weights[w.start:w.stop, k] = w.weights
  return weights


@pytest.mark.parametrize('rule', windows.RULES)
def test_weights_partition_every_frame(rule):
  for num_frames, window in itertools.product(range(1, 26), range(2, 9)):
    for overlap in range(window):
      plan = windows.temporal_windows(num_frames, window, overlap, rule)
      weights = _coverage(plan, num_frames)
      np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
      assert all(w.length == min(window, num_frames) for w in plan)
      assert plan[0].start == 0 and plan[-1].stop == num_frames
      for k in range(len(plan) - 1):  # Frames before the next window's start get nothing later.
        assert not weights[:plan[k + 1].start, k + 1:].any()
      if rule != 'blend':
        assert set(np.unique(weights)) <= {0.0, 1.0}


def test_official_rule_later_window_wins():
  plan = windows.temporal_windows(20, 7, 0, 'official')
  assert [(w.start, w.stop) for w in plan] == [(0, 7), (7, 14), (13, 20)]
  assert plan[1].weights == (1.0,) * 6 + (0.0,)  # Frame 13 is overwritten by the last clip.
  assert plan[2].weights == (1.0,) * 7


def test_center_rule_keeps_context_on_both_sides():
  plan = windows.temporal_windows(20, 7, 4, 'center')  # starts 0, 3, 6, 9, 12, 13
  owner = _coverage(plan, 20).argmax(axis=1)
  for frame in range(20):
    w = plan[owner[frame]]
    best = max(min(frame - p.start + 1, p.stop - frame) for p in plan if p.start <= frame < p.stop)
    assert min(frame - w.start + 1, w.stop - frame) == best


def test_blend_rule_cross_fades_linearly():
  plan = windows.temporal_windows(13, 7, 3, 'blend')  # [0, 7) and [4, 11), [6, 13)
  assert [(w.start, w.stop) for w in plan] == [(0, 7), (4, 11), (6, 13)]
  weights = _coverage(plan, 13)
  np.testing.assert_allclose(weights[0], [1, 0, 0])
  np.testing.assert_allclose(weights[4], [3 / 4, 1 / 4, 0])  # tent weights 3 and 1
  np.testing.assert_allclose(weights[12], [0, 0, 1])


@pytest.mark.parametrize('kwargs, message', [
    (dict(window=1), 'window must be >= 2'),
    (dict(window=4, overlap=4), 'overlap'),
    (dict(rule='vote'), 'rule must be one of'),
    (dict(tile_size=30), 'multiple of 4'),
    (dict(tile_size=32, tile_overlap=32), 'tile_overlap'),
])
def test_window_config_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    windows.WindowConfig(**kwargs)


def test_no_frames_is_an_error():
  with pytest.raises(ValueError, match='at least 1 frame'):
    windows.temporal_windows(0)


def test_spatial_multiple_matches_the_network():
  from vfusion_jax.models import network  # pylint: disable=g-import-not-at-top
  assert windows.SPATIAL_MULTIPLE == network.SPATIAL_MULTIPLE


@pytest.mark.parametrize('height, width', [(32, 48), (30, 45), (5, 7)])
def test_pad_and_crop(height, width):
  x = np.random.default_rng(0).random((2, height, width, 3)).astype(np.float32)
  padded, size = windows.pad_to_multiple(x)
  assert size == (height, width)
  assert padded.shape[1] % 4 == 0 and padded.shape[2] % 4 == 0
  assert padded.shape[1] - height < 4 and padded.shape[2] - width < 4
  np.testing.assert_array_equal(windows.crop(padded, size), x)
  if height < padded.shape[1]:  # Reflect (d c b | a b c d | c b a), not edge.
    np.testing.assert_array_equal(padded[:, height, :width], x[:, height - 2])


def test_pad_too_small_frame():
  with pytest.raises(ValueError, match='too small'):
    windows.pad_to_multiple(np.zeros((1, 2, 8, 3), np.float32))


@pytest.mark.parametrize('height, width, tile, overlap', [
    (64, 96, 32, 8), (100, 36, 32, 4), (480, 640, 256, 32), (32, 48, 64, 8), (32, 48, 0, 8), (96, 96, 40, 12)])
def test_tiles_cover_the_frame(height, width, tile, overlap):
  tiles = windows.spatial_tiles(height, width, tile, overlap)
  total = np.zeros((height, width))
  for t in tiles:
    assert t.weight.shape == (t.bottom - t.top, t.right - t.left)
    assert (t.weight > 0).all()
    if tile:
      assert t.bottom - t.top <= tile and t.right - t.left <= tile
    assert (t.bottom - t.top) % 4 == 0 and (t.right - t.left) % 4 == 0
    total[t.top:t.bottom, t.left:t.right] += t.weight
  assert (total > 0).all()
  if not tile or (height <= tile and width <= tile):
    assert len(tiles) == 1
  rows = sorted({(t.top, t.bottom) for t in tiles})
  for (_, b0), (t1, _) in zip(rows, rows[1:]):
    assert b0 - t1 >= overlap


def _local_model(calls=None):
  """A per-pixel, per-frame stand-in for the network that checks the ApplyFn contract."""

  def apply_fn(ir, vi):
    assert ir.ndim == 4 and ir.shape[0] >= 2 and ir.shape[1] % 4 == 0 and ir.shape[2] % 4 == 0
    assert ir.dtype == np.float32 and vi.dtype == np.float32
    if calls is not None:
      calls.append(ir.shape)
    ir3 = np.broadcast_to(ir, vi.shape)
    return {'fusion': 0.25 * ir3 + 0.75 * vi, 'ir': np.sqrt(ir3), 'vi': vi * vi}

  return apply_fn


def _local_expected(ir, vi):
  ir3 = np.broadcast_to(ir, vi.shape)
  return {'fusion': 0.25 * ir3 + 0.75 * vi, 'ir': np.sqrt(ir3), 'vi': vi * vi}


@pytest.mark.parametrize('tile_size', [0, 16, 24])
def test_apply_clip_tiles_are_exact_for_a_local_model(tile_size):
  rng = np.random.default_rng(1)
  ir = rng.random((3, 37, 50, 1)).astype(np.float32)
  vi = rng.random((3, 37, 50, 3)).astype(np.float32)
  calls = []
  out = windows.apply_clip(ir, vi, _local_model(calls), tile_size, 8)
  expected = _local_expected(ir, vi)
  for key in windows.OUTPUT_KEYS:
    assert out[key].shape == (3, 37, 50, 3)
    np.testing.assert_allclose(out[key], expected[key], rtol=1e-6, atol=1e-6)
  assert len(calls) == (1 if not tile_size else len(windows.spatial_tiles(40, 52, tile_size, 8)))


def test_apply_clip_single_frame_runs_two_copies():
  calls = []
  ir = np.full((1, 8, 8, 3), 0.5, np.float32)
  out = windows.apply_clip(ir, ir, _local_model(calls))
  assert calls == [(2, 8, 8, 3)] and out['fusion'].shape == (1, 8, 8, 3)


def _window_model(ir, vi):
  """Output depends on the window: every frame gets its own value + the window's first frame's IR mean."""
  offset = float(ir[0].mean())
  return {'fusion': vi + offset, 'ir': np.broadcast_to(ir, vi.shape) + offset, 'vi': vi - offset}


@pytest.mark.parametrize('rule', windows.RULES)
@pytest.mark.parametrize('num_frames, window, overlap', [(11, 4, 0), (11, 4, 2), (3, 4, 1), (12, 5, 3)])
def test_stream_windows_combines_windows_by_rule(rule, num_frames, window, overlap):
  rng = np.random.default_rng(2)
  ir = rng.random((num_frames, 8, 12, 1)).astype(np.float32)
  vi = rng.random((num_frames, 8, 12, 3)).astype(np.float32)
  config = windows.WindowConfig(window, overlap, rule)
  outputs = dict(windows.stream_windows(zip(ir, vi), num_frames, _window_model, config))
  assert sorted(outputs) == list(range(num_frames))
  plan = windows.temporal_windows(num_frames, window, overlap, rule)
  for frame in range(num_frames):
    expected = sum(w.weights[frame - w.start] * (vi[frame] + float(ir[w.start].mean()))
                   for w in plan if w.start <= frame < w.stop)
    np.testing.assert_allclose(outputs[frame]['fusion'], expected, rtol=1e-5, atol=1e-6)


def test_stream_windows_memory_is_bounded_and_outputs_are_prompt():
  num_frames, window = 50, 5
  read = []

  def frames():
    for t in range(num_frames):
      read.append(t)
      yield np.full((4, 4, 1), t / num_frames, np.float32), np.zeros((4, 4, 3), np.float32)

  config = windows.WindowConfig(window, 2, 'blend')
  for index, out in windows.stream_windows(frames(), num_frames, _local_model(), config):
    assert len(read) - index <= window  # Never more than one window read ahead of the output.
    np.testing.assert_allclose(out['ir'], np.sqrt(index / num_frames), rtol=1e-6)
  assert len(read) == num_frames


def test_stream_windows_reads_only_num_frames_and_fails_on_short_input():
  frames = [(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))] * 6
  assert len(list(windows.stream_windows(iter(frames), 4, _local_model(), windows.WindowConfig(3)))) == 4
  with pytest.raises(ValueError, match='ended after 6 frames; expected 8'):
    list(windows.stream_windows(iter(frames), 8, _local_model(), windows.WindowConfig(3)))
