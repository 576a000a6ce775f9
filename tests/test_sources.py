"""Tests of vfusion_jax.data.sources: every layout, every malformed-input case, and the real M3SVD sample.

The folder writers below are also used by test_m3svd_builder.py, test_pipeline.py and test_calibrate.py.
"""

import pathlib
import shutil

import numpy as np
from PIL import Image
import pytest

from conftest import shared_data
from vfusion_jax.data import sources
from vfusion_jax.data import video_io

TINY_SIZE = (16, 24)  # (H, W), even for 4:2:0 video.
TINY_FPS = 10
RELEASE = {'ir_gt': 'infrared_Enhance', 'vi_gt': 'visible_Enhance', 'ir_lq': 'infrared_noise',
           'vi_lq': 'visible_Blur'}
PLAIN = {'ir_gt': 'ir', 'vi_gt': 'vi'}
VIDEO = {'ir_gt': 'infrared', 'vi_gt': 'visible'}
SAMPLE_VIDEOS = ('0111_1716', '0114_1609', '0115_1834')
SAMPLE_FRAMES = 20
MP4_FRAMES = {'0111_1716': 151, '1230_1202': 205}


def random_video(rng, num_frames, size=TINY_SIZE):
  """Clean/degraded uint8 frames of one tiny video: ir (T, H, W, 1), vi (T, H, W, 3)."""
  shape = (num_frames, *size)
  return {'ir_gt': rng.integers(0, 256, (*shape, 1), np.uint8), 'vi_gt': rng.integers(0, 256, (*shape, 3), np.uint8),
          'ir_lq': rng.integers(0, 256, (*shape, 1), np.uint8), 'vi_lq': rng.integers(0, 256, (*shape, 3), np.uint8)}


def write_png(path, frame, ir_as_rgb=True):
  """Writes a uint8 (H, W, 1|3) frame; infrared as 3 equal channels (as M3SVD) or as grey."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if frame.shape[-1] == 1:
    frame = np.repeat(frame, 3, -1) if ir_as_rgb else frame[..., 0]
  Image.fromarray(frame).save(path)


def write_frame_folders(root, videos, folders=None, first_number=0, digits=4, ir_as_rgb=True):
  """Writes {video: {stream: frames}} as <root>/<folder>/<video>/NNNN.png for the streams in ``folders``."""
  folders = folders or RELEASE
  for name, streams in videos.items():
    for key, folder in folders.items():
      if key in streams:
        for i, frame in enumerate(streams[key]):
          write_png(pathlib.Path(root) / folder / name / f'{first_number + i:0{digits}d}.png', frame, ir_as_rgb)


def write_mp4s(root, videos, folders=None):
  """Writes {video: {stream: frames}} as <root>/<folder>/<video>.mp4; returns the decoded frames (the truth)."""
  folders = folders or VIDEO
  decoded = {}
  for name, streams in videos.items():
    decoded[name] = {}
    for key, folder in folders.items():
      path = pathlib.Path(root) / folder / f'{name}.mp4'
      path.parent.mkdir(parents=True, exist_ok=True)
      with video_io.VideoWriter(path, fps=TINY_FPS) as writer:
        for frame in streams[key]:
          writer.write(frame)
      rgb = video_io.read_video(path)
      decoded[name][key] = sources.to_gray(rgb, 'luma') if sources.CHANNELS[key] == 1 else rgb
  return decoded


def tiny_release(root, rng, counts=None, folders=None, **kwargs):
  """A tiny release-layout dataset; returns its frames."""
  videos = {name: random_video(rng, count) for name, count in (counts or {'v01': 5, 'v02': 3}).items()}
  write_frame_folders(root, videos, folders, **kwargs)
  return videos


# Layouts.


@pytest.mark.parametrize('folders,ir_as_rgb', [(RELEASE, True), (PLAIN, False)], ids=['release', 'plain'])
def test_frame_folder_layouts_read_back_exactly(tmp_path, folders, ir_as_rgb):
  videos = tiny_release(tmp_path, np.random.default_rng(0), folders=folders, ir_as_rgb=ir_as_rgb)
  result = sources.scan(tmp_path)
  assert [v.name for v in result.videos] == ['v01', 'v02'] and not result.skipped
  for video in result.videos:
    assert video.split is None and set(video.streams) == set(folders)
    assert video.frame_names == tuple(f'{i:04d}.png' for i in range(video.num_frames))
    frames = video.read()
    for key in folders:
      np.testing.assert_array_equal(frames[key], videos[video.name][key])
      assert frames[key].dtype == np.uint8 and frames[key].shape[-1] == sources.CHANNELS[key]


def test_mp4_layout_reads_decoded_frames(tmp_path):
  videos = {'clip': random_video(np.random.default_rng(1), 4)}
  truth = write_mp4s(tmp_path, videos)
  (video,) = sources.scan(tmp_path).videos
  assert video.num_frames == 4 and video.frame_names[0] == '0000.png' and set(video.streams) == {'ir_gt', 'vi_gt'}
  frames = video.read(1, 2)
  for key in ('ir_gt', 'vi_gt'):
    np.testing.assert_array_equal(frames[key], truth['clip'][key][1:3])


def test_release_folders_may_hold_mp4_files_and_mixed_streams(tmp_path):
  videos = {'m': random_video(np.random.default_rng(2), 3)}
  truth = write_mp4s(tmp_path, videos, {'ir_gt': 'infrared_Enhance', 'vi_gt': 'visible_Enhance'})
  write_frame_folders(tmp_path, videos, {'ir_lq': 'infrared_noise', 'vi_lq': 'visible_Blur'})
  (video,) = sources.scan(tmp_path).videos
  assert video.lq_streams == ('ir_lq', 'vi_lq')
  frames = video.read()
  np.testing.assert_array_equal(frames['vi_gt'], truth['m']['vi_gt'])
  np.testing.assert_array_equal(frames['ir_lq'], videos['m']['ir_lq'])


def test_split_folders_set_the_split_and_one_based_six_digit_names_work(tmp_path):
  rng = np.random.default_rng(3)
  tiny_release(tmp_path / 'train', rng, {'a': 3, 'b': 2}, first_number=1, digits=6)
  tiny_release(tmp_path / 'test', rng, {'c': 4})
  result = sources.scan(tmp_path)
  assert [(v.split, v.name) for v in result.videos] == [('train', 'a'), ('train', 'b'), ('test', 'c')]
  assert result.videos[0].frame_names == ('000001.png', '000002.png', '000003.png')


def test_natural_order_and_max_frames_and_video_filter(tmp_path):
  tiny_release(tmp_path, np.random.default_rng(4), {'v10': 2, 'v9': 2, 'v100': 5})
  assert [v.name for v in sources.scan(tmp_path).videos] == ['v9', 'v10', 'v100']
  (video,) = sources.scan(tmp_path, videos=['v100'], max_frames=3).videos
  assert video.num_frames == 3 and len(video.frame_names) == 3 and video.read()['ir_gt'].shape[0] == 3


def test_iter_chunks_cover_the_video_with_full_chunks(tmp_path):
  videos = tiny_release(tmp_path, np.random.default_rng(5), {'v': 7})
  (video,) = sources.scan(tmp_path).videos
  chunks = list(video.iter_chunks(3))
  assert [start for start, _ in chunks] == [0, 3, 4]
  for start, frames in chunks:
    for key, value in frames.items():
      np.testing.assert_array_equal(value, videos['v'][key][start:start + 3])


def test_assign_split_is_deterministic_and_honours_lists():
  names = [f'{m:02d}{d:02d}_{h:02d}00' for m in (1, 12) for d in range(1, 29) for h in (8, 20)]
  splits = [sources.assign_split(n, val_percent=20, test_percent=10) for n in names]
  assert splits == [sources.assign_split(n, val_percent=20, test_percent=10) for n in names]
  counts = {s: splits.count(s) for s in sources.SPLITS}
  assert counts['train'] > counts['val'] > counts['test'] > 0
  assert sources.assign_split(names[0], test_videos=[names[0]], val_percent=100) == 'test'
  assert sources.assign_split(names[0], val_videos=[names[0]]) == 'val'
  assert {sources.assign_split(n) for n in names} == {'train'}


def test_to_gray_modes():
  rgb = np.array([[[10, 10, 10], [200, 100, 50]]], np.uint8)
  np.testing.assert_array_equal(sources.to_gray(rgb, 'first')[..., 0], [[10, 200]])
  luma = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
  np.testing.assert_array_equal(sources.to_gray(rgb, 'luma')[..., 0], [[10, luma]])
  np.testing.assert_array_equal(sources.to_gray(rgb[:, :1], 'equal')[..., 0], [[10]])
  with pytest.raises(sources.DataError, match='unequal colour channels'):
    sources.to_gray(rgb, 'equal', 'here')


# Malformed input: each case must name the video and the file.


def _truncate(path, keep):
  path.write_bytes(path.read_bytes()[:keep])


def _bad_frame_count(root):
  (root / 'visible_Enhance' / 'v01' / '0004.png').unlink()
  return 'frame counts differ', 'v01'


def _bad_size_between_streams(root):
  write_png(root / 'infrared_noise' / 'v02' / '0000.png', np.zeros((8, 8, 1), np.uint8))
  for i in (1, 2):
    write_png(root / 'infrared_noise' / 'v02' / f'{i:04d}.png', np.zeros((8, 8, 1), np.uint8))
  return 'frame sizes differ', 'infrared_noise/v02'


def _bad_size_within_stream(root):
  write_png(root / 'visible_Blur' / 'v01' / '0002.png', np.zeros((8, 8, 3), np.uint8))
  return 'is 8x8', 'visible_Blur/v01/0002.png'


def _unreadable_frame(root):
  (root / 'infrared_Enhance' / 'v02' / '0001.png').write_bytes(b'not a png')
  return 'cannot read frame', 'infrared_Enhance/v02/0001.png'


def _numbering_gap(root):
  for key in RELEASE.values():
    (root / key / 'v01' / '0002.png').unlink()
  return 'gap in frame numbering', '0001.png is followed by 0003.png'


def _empty_video(root):
  shutil.rmtree(root / 'visible_Enhance' / 'v02')
  (root / 'visible_Enhance' / 'v02').mkdir()
  return 'empty video', 'visible_Enhance/v02'


def _missing_in_one_stream(root):
  shutil.rmtree(root / 'visible_Blur' / 'v02')
  return 'has no v02', 'visible_Blur'


def _non_numeric_name(root):
  for key in RELEASE.values():
    (root / key / 'v01' / '0004.png').rename(root / key / 'v01' / 'last.png')
  return 'not named by its number', 'last.png'


def _names_differ(root):
  folder = root / 'infrared_noise' / 'v02'
  for i in (2, 1, 0):
    (folder / f'{i:04d}.png').rename(folder / f'{i + 1:04d}.png')
  return 'frame names differ', 'infrared_noise/v02/0001.png'


@pytest.mark.parametrize('damage', [_bad_frame_count, _bad_size_between_streams, _bad_size_within_stream,
                                    _unreadable_frame, _numbering_gap, _empty_video, _missing_in_one_stream,
                                    _non_numeric_name, _names_differ], ids=lambda f: f.__name__.strip('_'))
def test_malformed_video_raises_naming_video_and_file_or_is_skipped(tmp_path, damage):
  tiny_release(tmp_path, np.random.default_rng(6))
  message, where = damage(tmp_path)
  with pytest.raises(sources.DataError, match=message) as error:
    sources.scan(tmp_path)
  bad = 'v01' if 'v01' in str(error.value) else 'v02'
  assert f'video {bad}' in str(error.value) and where in str(error.value)
  result = sources.scan(tmp_path, skip_bad_videos=True)
  assert [v.name for v in result.videos] == [{'v01': 'v02', 'v02': 'v01'}[bad]]
  assert [name for name, _ in result.skipped] == [bad] and message in result.skipped[0][1]


def test_corrupt_pixel_data_fails_at_decode_naming_the_file(tmp_path):
  tiny_release(tmp_path, np.random.default_rng(7))
  _truncate(tmp_path / 'visible_Enhance' / 'v01' / '0003.png', 60)  # The header survives, the pixels do not.
  video = sources.scan(tmp_path).videos[0]
  with pytest.raises(sources.DataError, match='video v01: cannot decode frame .*visible_Enhance/v01/0003.png'):
    video.verify()


def test_unequal_infrared_channels_fail_unless_converted(tmp_path):
  videos = tiny_release(tmp_path, np.random.default_rng(8), {'v': 2})
  frame = np.random.default_rng(9).integers(0, 256, (*TINY_SIZE, 3), np.uint8)
  Image.fromarray(frame).save(tmp_path / 'infrared_Enhance' / 'v' / '0001.png')
  with pytest.raises(sources.DataError, match='infrared_Enhance/v/0001.png: infrared frame has unequal'):
    sources.scan(tmp_path).videos[0].read()
  first = sources.scan(tmp_path, ir_gray='first').videos[0].read()['ir_gt']
  np.testing.assert_array_equal(first[1, ..., 0], frame[..., 0])
  np.testing.assert_array_equal(first[0], videos['v']['ir_gt'][0])


def test_mp4_frame_count_mismatch_and_unreadable_file(tmp_path):
  rng = np.random.default_rng(10)
  write_mp4s(tmp_path, {'short': random_video(rng, 3)})
  with video_io.VideoWriter(tmp_path / 'visible' / 'short.mp4', fps=TINY_FPS, overwrite=True) as writer:
    for frame in random_video(rng, 2)['vi_gt']:
      writer.write(frame)
  with pytest.raises(sources.DataError, match='video short: frame counts differ: .*infrared/short.mp4 has 3'):
    sources.scan(tmp_path)
  (tmp_path / 'visible' / 'short.mp4').write_bytes(b'\x00' * 100)
  with pytest.raises(sources.DataError, match='video short: cannot read .*visible/short.mp4'):
    sources.scan(tmp_path)


def test_truncated_mp4_is_an_error_at_scan_or_decode(tmp_path):
  write_mp4s(tmp_path, {'cut': random_video(np.random.default_rng(11), 8)})
  path = tmp_path / 'visible' / 'cut.mp4'
  _truncate(path, path.stat().st_size // 2)
  with pytest.raises(sources.DataError, match='video cut: .*visible/cut.mp4'):
    sources.scan(tmp_path).videos[0].verify()


@pytest.mark.parametrize('make,message', [
    (lambda root: (root / 'train' / 'ir').mkdir(parents=True) or (root / 'ir').mkdir(), 'both stream folders'),
    (lambda root: (root / 'other').mkdir(), 'holds no dataset'),
    (lambda root: [(root / name).mkdir() for name in ('ir', 'infrared', 'vi')], 'several ir_gt folders'),
    (lambda root: (root / 'infrared_Enhance').mkdir(), 'has no visible_Enhance/visible/vi folder'),
    (lambda root: [(root / s / 'ir').mkdir(parents=True) for s in ('val', 'validation')], 'both the val split'),
], ids=['splits_and_streams', 'nothing', 'two_ir_folders', 'no_visible', 'two_val_folders'])
def test_bad_layouts_raise(tmp_path, make, message):
  make(tmp_path)
  with pytest.raises(sources.DataError, match=message):
    sources.scan(tmp_path, skip_bad_videos=True)


# The real M3SVD data beside the checkout.


def test_real_sample_frames_equal_the_pngs():
  root = shared_data('m3svd_sample')
  result = sources.scan(root)
  assert [v.name for v in result.videos] == list(SAMPLE_VIDEOS)
  video = result.videos[1]
  assert video.num_frames == SAMPLE_FRAMES and (video.height, video.width) == (480, 640)
  assert video.lq_streams == ('ir_lq', 'vi_lq')
  frames = video.read(18, 2)
  for key, folder in RELEASE.items():
    png = video_io.load_png(root / folder / video.name / '0019.png')
    np.testing.assert_array_equal(frames[key][1], png[..., :sources.CHANNELS[key]])


def test_real_mp4_pairs_equal_the_decoded_frames():
  root = shared_data('m3svd_videos')
  videos = sources.scan(root).videos
  assert {v.name: v.streams['ir_gt'].num_frames for v in videos} == MP4_FRAMES
  video = videos[1]
  frames = video.read(0, 2)
  np.testing.assert_array_equal(frames['vi_gt'], video_io.read_video(root / 'visible' / f'{video.name}.mp4', 0, 2))
  ir = video_io.read_video(root / 'infrared' / f'{video.name}.mp4', 0, 2)
  np.testing.assert_array_equal(frames['ir_gt'], sources.to_gray(ir, 'luma'))
  assert np.abs(frames['ir_gt'].astype(int) - ir[..., :1]).max() <= 4  # Luma ~ any channel of grey video.
