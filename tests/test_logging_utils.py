"""Tests for vfusion_jax.logging_utils: metric files, TensorBoard events, progress line, image grids."""

import io as io_lib
import json

import jax.numpy as jnp
import numpy as np
import pytest

from vfusion_jax import logging_utils

event_accumulator = pytest.importorskip(
    'tensorboard.backend.event_processing.event_accumulator',
    reason='the tensorboard package (event reader) is not installed')
from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top,g-bad-import-order

# Keep every event (defaults drop images beyond 4 per tag and sample scalars).
_KEEP_ALL = {event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0}


def _load_events(workdir):
  accumulator = event_accumulator.EventAccumulator(str(workdir), size_guidance=_KEEP_ALL)
  accumulator.Reload()
  return accumulator


def test_scalars_images_hparams_reach_tensorboard_and_jsonl(tmp_path):
  with logging_utils.MetricWriter(tmp_path) as writer:
    writer.write_hparams({'lr': 1e-4, 'batch_size': 8, 'model': 'videofusion', 'crop': (96, 96)})
    writer.write_scalars(1, {'loss': np.float32(0.5), 'lr': jnp.asarray(1e-4)})
    writer.write_scalars(2, {'loss': 0.25, 'grad_norm': jnp.float32(3.0)})
    writer.write_images(2, {'strip': np.zeros((6, 10, 3), np.uint8),
                            'batch': np.full((2, 4, 5, 1), 0.5, np.float32)})
    writer.write_texts(2, {'note': 'hello'})

  events = _load_events(tmp_path)
  tags = events.Tags()
  assert {'loss', 'lr', 'grad_norm'} <= set(tags['scalars'])
  loss = events.Scalars('loss')
  assert [e.step for e in loss] == [1, 2]
  np.testing.assert_allclose([e.value for e in loss], [0.5, 0.25])
  np.testing.assert_allclose(events.Scalars('lr')[0].value, 1e-4, rtol=1e-6)
  strip = events.Images('strip')[0]
  assert (strip.step, strip.height, strip.width) == (2, 6, 10)
  batch_images = [events.Images(f'batch/{i}')[0] for i in range(2)]
  assert all((im.height, im.width) == (4, 5) for im in batch_images)
  session_start = plugin_data_pb2.HParamsPluginData.FromString(
      events.PluginTagToContent('hparams')['_hparams_/session_start_info']).session_start_info
  assert session_start.hparams['lr'].number_value == pytest.approx(1e-4)
  assert session_start.hparams['model'].string_value == 'videofusion'

  records = logging_utils.read_metrics(tmp_path)
  assert records[0]['step'] == 1 and records[1]['step'] == 2
  assert records[0]['loss'] == pytest.approx(0.5)
  assert records[1]['grad_norm'] == pytest.approx(3.0)
  assert json.loads((tmp_path / logging_utils.HPARAMS_FILENAME).read_text())['crop'] == '(96, 96)'


def test_jsonl_appends_on_resume_and_repairs_cut_line(tmp_path):
  with logging_utils.MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write_scalars(10, {'loss': 1.0, 'count': np.int64(3)})
  with open(tmp_path / logging_utils.METRICS_FILENAME, 'a') as f:
    f.write('{"step": 11, "lo')  # A crash in the middle of a line.
  with logging_utils.MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write_scalars(5, {'loss': 2.0})  # A resumed run may repeat steps.
  records = logging_utils.read_metrics(tmp_path / logging_utils.METRICS_FILENAME)
  assert records == [{'step': 10, 'loss': 1.0, 'count': 3}, {'step': 5, 'loss': 2.0}]
  assert not list(tmp_path.glob('events.out.tfevents.*'))


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  with logging_utils.MetricWriter(workdir, enabled=False) as writer:
    writer.write_scalars(1, {'loss': 1.0})
    writer.write_images(1, {'x': np.zeros((2, 2, 3), np.uint8)})
    writer.write_hparams({'lr': 1.0})
    writer.write_texts(1, {'t': 'x'})
    writer.flush()
  assert not workdir.exists()


def test_closed_writer_and_bad_scalars_raise(tmp_path):
  writer = logging_utils.MetricWriter(tmp_path, tensorboard=False)
  with pytest.raises(ValueError, match='one element'):
    writer.write_scalars(0, {'vec': np.zeros(3)})
  writer.close()
  writer.close()
  with pytest.raises(RuntimeError, match='closed'):
    writer.write_scalars(0, {'loss': 1.0})


def test_progress_line_rates_and_eta():
  times = iter([0.0, 10.0, 20.0])
  lines = []
  progress = logging_utils.ProgressLine(1000, batch_size=4, print_fn=lines.append, clock=lambda: next(times))
  first = progress(100, {'train/loss': 0.123456})
  second = progress(300, {'loss': 1.5})
  assert lines == [first, second]
  assert first.startswith('step  100/1000') and 'loss 0.1235' in first
  assert '10.00 steps/s' in first and '40.0 ex/s' in first and 'ETA 0:01:30' in first
  # Second interval: 200 steps in 10 s; the ETA uses the mean rate since the first call (20 steps/s).
  assert '20.00 steps/s' in second and '80.0 ex/s' in second and 'ETA 0:00:35' in second
  assert logging_utils.format_duration(3 * 3600 + 62) == '3:01:02'
  assert logging_utils.format_duration(float('nan')) == '?'


class _Stream(io_lib.StringIO):

  def __init__(self, tty):
    super().__init__()
    self._tty = tty

  def isatty(self):
    return self._tty


def test_frame_progress_shows_the_steady_rate_and_prints_every_interval():
  """infer and eval: the rate since the first frame; off a terminal a line per interval (and the last one)."""
  times = iter([0.0, 10.0, 15.0, 20.0, 30.0, 40.0])
  stream = _Stream(tty=False)
  progress = logging_utils.ProgressLine.frames(100, stream=stream, clock=lambda: next(times))
  first = progress(10)  # From construction: 10 frames in 10 s (compilation included).
  assert first.startswith('frame  10/100') and '1.00 frames/s' in first and 'elapsed 0:00:10' in first
  progress(20)  # 5 s after the last line: not printed.
  third = progress(30)  # 20 frames in 10 s since the first call.
  assert '2.00 frames/s' in third and 'ETA 0:00:35' in third
  assert progress.mean_rate == 2.0 and progress.last_rates['frames_per_sec'] == 2.0
  fourth = progress(50)
  last = progress(100)
  assert stream.getvalue().splitlines() == [first, third, fourth, last]


def test_frame_progress_redraws_in_place_on_a_terminal():
  times = iter([0.0, 1.0, 2.0])
  stream = _Stream(tty=True)
  progress = logging_utils.ProgressLine.frames(2, stream=stream, clock=lambda: next(times))
  first, last = progress(1), progress(2)
  assert stream.getvalue() == f'\r{first}\r{last}\n'


def test_progress_line_can_be_silent():
  stream = _Stream(tty=False)
  progress = logging_utils.ProgressLine.frames(3, stream=stream, enabled=False)
  assert 'frame 3/3' in progress(3) and not stream.getvalue()


def test_image_strip_layout_pixelwise():
  grey = np.full((2, 3, 1), 1.0, np.float32)
  red = np.zeros((2, 3, 3), np.float32)
  red[..., 0] = 1.0
  black = np.zeros((2, 3), np.float32)
  strip = logging_utils.image_strip([[grey, red], [black]], separator=2, separator_value=128)

  assert strip.dtype == np.uint8 and strip.shape == (2 * 2 + 2, 2 * 3 + 2, 3)
  np.testing.assert_array_equal(strip[0:2, 0:3], 255)
  np.testing.assert_array_equal(strip[0:2, 5:8], [[[255, 0, 0]] * 3] * 2)
  np.testing.assert_array_equal(strip[4:6, 0:3], 0)
  np.testing.assert_array_equal(strip[2:4], 128)  # Horizontal separator.
  np.testing.assert_array_equal(strip[:, 3:5], 128)  # Vertical separator.
  np.testing.assert_array_equal(strip[4:6, 5:8], 128)  # Missing panel of the short row.

  with pytest.raises(ValueError, match='same shape'):
    logging_utils.image_strip([[grey, np.zeros((3, 3, 3))]])
