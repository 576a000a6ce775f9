"""Tests for vfusion_jax.data.video_io: probing, streaming reads, atomic writes, PNG frame folders."""

import pathlib

import numpy as np
import pytest

from vfusion_jax import io
from vfusion_jax.data import video_io

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'
# name -> (frames, fps) of the real M3SVD test videos (shared/data/README.md).
REAL_VIDEOS = {'0111_1716': (151, 30.0), '1230_1202': (205, 22.0)}
REAL_SIZE = (480, 640)
SAMPLE_FRAMES_PER_VIDEO = 20

SYNTH_FRAMES, SYNTH_HEIGHT, SYNTH_WIDTH, SYNTH_FPS = 10, 48, 64, 22
# Mean absolute error (of 255) allowed after a lossy encode/decode of the smooth synthetic video.
# Measured: 1.7 at the default crf 18 (0.5 at crf 0, all from RGB <-> YUV 4:2:0); a frame off by one
# would be > 10 (the blue channel steps by 20 per frame).
MAX_MEAN_ABS_ERROR = 2.5


def _shared(*parts):
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f'{path} is absent: the real M3SVD data is not beside this checkout')
  return path


def _synthetic_frames(num_frames=SYNTH_FRAMES):
  """Smooth moving gradients, uint8 (T, H, W, 3): easy for a codec, different in every frame."""
  y, x = np.mgrid[0:SYNTH_HEIGHT, 0:SYNTH_WIDTH].astype(np.float32)
  frames = []
  for t in range(num_frames):
    r = 128 + 100 * np.sin((x + 3 * t) / 10)
    g = 128 + 100 * np.cos((y - 2 * t) / 8)
    b = np.full_like(x, 20 * t)
    frames.append(np.stack([r, g, b], -1))
  return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


def _write(path, frames, **kwargs):
  with video_io.VideoWriter(path, SYNTH_FPS, **kwargs) as writer:
    for frame in frames:
      writer.write(frame)
  return writer


@pytest.fixture(scope='module')
def synthetic_video(tmp_path_factory):
  frames = _synthetic_frames()
  path = tmp_path_factory.mktemp('video') / 'synthetic.mp4'
  _write(path, frames)
  return path, frames


@pytest.mark.parametrize('modality', ['infrared', 'visible'])
def test_probe_real_videos(modality):
  for name, (num_frames, fps) in REAL_VIDEOS.items():
    info = video_io.probe_video(_shared('m3svd_videos', modality, f'{name}.mp4'))
    assert info == video_io.VideoInfo(num_frames=num_frames, fps=fps, height=REAL_SIZE[0], width=REAL_SIZE[1])


def test_probe_exact_count_matches_header():
  path = _shared('m3svd_videos', 'infrared', '0111_1716.mp4')
  assert video_io.probe_video(path, exact=True).num_frames == REAL_VIDEOS['0111_1716'][0]


def test_iter_real_video_start_count():
  path = _shared('m3svd_videos', 'infrared', '0111_1716.mp4')
  head = list(video_io.iter_video_frames(path, count=4))
  assert len(head) == 4 and head[0].shape == (*REAL_SIZE, 3) and head[0].dtype == np.uint8
  middle = video_io.read_video(path, start=2, count=2)
  np.testing.assert_array_equal(middle, np.stack(head[2:4]))
  tail = video_io.read_video(path, start=REAL_VIDEOS['0111_1716'][0] - 2, count=10)
  assert tail.shape == (2, *REAL_SIZE, 3)
  assert video_io.read_video(path, start=1000).shape == (0, *REAL_SIZE, 3)


def test_write_read_round_trip(synthetic_video):
  path, frames = synthetic_video
  assert video_io.probe_video(path) == video_io.VideoInfo(SYNTH_FRAMES, float(SYNTH_FPS), SYNTH_HEIGHT, SYNTH_WIDTH)
  decoded = video_io.read_video(path)
  assert decoded.shape == frames.shape and decoded.dtype == np.uint8
  error = np.abs(decoded.astype(np.float32) - frames.astype(np.float32)).mean()
  assert error < MAX_MEAN_ABS_ERROR
  assert list(path.parent.iterdir()) == [path]  # No temporary file left behind.


@pytest.mark.parametrize('start,count', [(0, 3), (4, 3), (7, None), (8, 100), (10, 2), (3, 0)])
def test_iter_start_count_matches_full_decode(synthetic_video, start, count):
  path, _ = synthetic_video
  full = video_io.read_video(path)
  part = list(video_io.iter_video_frames(path, start=start, count=count))
  expected = full[start:] if count is None else full[start:start + count]
  assert len(part) == len(expected)
  for got, want in zip(part, expected):
    np.testing.assert_array_equal(got, want)


def test_mpeg4_codec_and_fractional_fps(tmp_path):
  path = tmp_path / 'ntsc.mp4'
  frames = _synthetic_frames(3)
  with video_io.VideoWriter(path, 30000 / 1001, codec='mpeg4') as writer:
    for frame in frames:
      writer.write(frame[..., :1])  # Grey input is expanded to RGB.
  info = video_io.probe_video(path)
  assert info.num_frames == 3 and info.fps == pytest.approx(29.97, abs=1e-3)
  assert video_io.read_video(path).shape == (3, SYNTH_HEIGHT, SYNTH_WIDTH, 3)


def test_writer_refuses_overwrite(synthetic_video, tmp_path):
  path = tmp_path / 'exists.mp4'
  path.write_bytes(b'keep me')
  with pytest.raises(FileExistsError, match='exists.mp4'):
    video_io.VideoWriter(path, SYNTH_FPS)
  assert path.read_bytes() == b'keep me'
  _write(path, _synthetic_frames(2), overwrite=True)
  assert video_io.probe_video(path).num_frames == 2


def test_writer_failure_leaves_no_file(tmp_path):
  path = tmp_path / 'failed.mp4'
  with pytest.raises(RuntimeError, match='boom'):
    with video_io.VideoWriter(path, SYNTH_FPS) as writer:
      writer.write(_synthetic_frames(1)[0])
      raise RuntimeError('boom')
  assert not list(tmp_path.iterdir())

  with pytest.raises(ValueError, match='differs'):
    with video_io.VideoWriter(path, SYNTH_FPS) as writer:
      writer.write(np.zeros((8, 8, 3), np.uint8))
      writer.write(np.zeros((8, 10, 3), np.uint8))
  with pytest.raises(ValueError, match='No frames'):
    with video_io.VideoWriter(path, SYNTH_FPS):
      pass
  with pytest.raises(ValueError, match='even'):
    _write(path, [np.zeros((7, 8, 3), np.uint8)])
  assert not list(tmp_path.iterdir())


def test_read_errors_name_the_path(tmp_path):
  missing = tmp_path / 'missing.mp4'
  with pytest.raises(FileNotFoundError, match='missing.mp4'):
    video_io.probe_video(missing)
  with pytest.raises(FileNotFoundError, match='missing.mp4'):
    video_io.iter_video_frames(missing)
  garbage = tmp_path / 'garbage.mp4'
  garbage.write_bytes(b'not a video at all' * 10)
  with pytest.raises(ValueError, match='garbage.mp4'):
    video_io.read_video(garbage)
  with pytest.raises(ValueError, match='start'):
    video_io.iter_video_frames(garbage, start=-1)
  with pytest.raises(FileNotFoundError, match='missing.png'):
    video_io.load_png(tmp_path / 'missing.png')
  with pytest.raises(ValueError, match='garbage.png'):
    (tmp_path / 'garbage.png').write_bytes(b'xx')
    video_io.load_png(tmp_path / 'garbage.png')


def test_frame_folder_natural_order_and_png_io(tmp_path):
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  for name in ['10.png', '2.png', '1.png']:
    io.save_png(tmp_path / name, image)
  (tmp_path / 'notes.txt').touch()
  assert [p.name for p in video_io.read_frame_folder(tmp_path)] == ['1.png', '2.png', '10.png']
  np.testing.assert_array_equal(video_io.load_png(tmp_path / '2.png'), image)

  padded = tmp_path / 'padded'
  padded.mkdir()
  for i in [10, 9, 0, 100]:
    io.save_png(padded / f'{i:06d}.png', image[..., 0])  # Grey PNGs.
  assert [p.name for p in video_io.read_frame_folder(padded)] == [
      '000000.png', '000009.png', '000010.png', '000100.png']
  grey = video_io.load_png(padded / '000009.png')
  assert grey.shape == (2, 3, 3)
  np.testing.assert_array_equal(grey, np.repeat(image[..., :1], 3, axis=-1))

  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='No PNG'):
    video_io.read_frame_folder(empty)
  with pytest.raises(FileNotFoundError, match='nowhere'):
    video_io.read_frame_folder(tmp_path / 'nowhere')


def test_real_frame_folder():
  folder = _shared('m3svd_sample', 'infrared_Enhance', '0111_1716')
  paths = video_io.read_frame_folder(folder)
  assert [p.name for p in paths] == [f'{i:04d}.png' for i in range(SAMPLE_FRAMES_PER_VIDEO)]
  frame = video_io.load_png(paths[0])
  assert frame.shape == (*REAL_SIZE, 3) and frame.dtype == np.uint8
