"""Streaming inference (``inference.fuse_video`` and the ``vfusion_jax.infer`` program): real tiny-checkpoint runs on
small videos and frame folders, and every error path."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import m3svd
from conftest import LOCAL_FIXTURES, REPO, shared_data
from vfusion_jax import checkpoint, convert, inference, io, metrics, windows
from vfusion_jax.data import video_io

TINY_NPZ = LOCAL_FIXTURES / 'videofusion_tiny_T3_32.npz'
HEIGHT, WIDTH = 32, 48  # Small frames; every model test shares these shapes so XLA compiles once.
WINDOW = 4
NUM_FRAMES = 10
FPS = 25


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  params = convert.torch_to_flax(convert.load_state_dict(str(TINY_NPZ)), m3svd.tiny_model())
  return checkpoint.save_inference_checkpoint(str(tmp_path_factory.mktemp('ckpt') / 'tiny'), params,
                                              m3svd.tiny_model())


@pytest.fixture(scope='module')
def tiny_model(tiny_checkpoint):
  return inference.load_model(tiny_checkpoint)


def _frames(seed, num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH, grey=False):
  rng = np.random.default_rng(seed)
  base = rng.random((height, width, 1 if grey else 3))
  return [np.round(255 * np.clip(base + 0.03 * t + 0.1 * rng.random(base.shape), 0, 1)).astype(np.uint8)
          for t in range(num_frames)]


def _write_video(path, frames, fps=FPS):
  with video_io.VideoWriter(path, fps) as writer:
    for frame in frames:
      writer.write(frame)
  return path


def _write_folder(path, frames):
  path.mkdir()
  for t, frame in enumerate(frames):
    io.save_png(path / f'{t:04d}.png', frame)
  return path


@pytest.fixture(scope='module')
def folder_pair(tmp_path_factory):
  root = tmp_path_factory.mktemp('pair')
  return (_write_folder(root / 'ir', _frames(1, grey=True)), _write_folder(root / 'vi', _frames(2)))


@pytest.fixture(scope='module')
def video_pair(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  return _write_video(root / 'ir.mp4', _frames(1)), _write_video(root / 'vi.mp4', _frames(2))


def _expected_official(apply_fn, ir_frames, vi_frames):
  """The official rule by hand: each window through inference.fuse, the later window overwriting."""
  ir = np.stack(ir_frames)[..., :1].astype(np.float32) / 255  # Grey PNG: one channel, as infer feeds it.
  vi = np.stack(vi_frames).astype(np.float32) / 255
  out = {}
  for start in windows.window_starts(len(ir), WINDOW):
    clip = apply_fn(ir[start:start + WINDOW], vi[start:start + WINDOW])
    for i in range(clip['fusion'].shape[0]):
      out[start + i] = {k: v[i] for k, v in clip.items()}
  return out


def test_frame_folders_match_windows_run_by_hand(tiny_model, folder_pair, tmp_path):
  apply_fn, _, _ = tiny_model
  ir_dir, vi_dir = folder_pair
  result = inference.fuse_video(ir_dir, vi_dir, tmp_path / 'fused', apply_fn=apply_fn, output_ir=tmp_path / 'ir',
                                output_vi=tmp_path / 'vi', window_config=windows.WindowConfig(WINDOW, 0, 'official'),
                                progress=False)
  assert result.num_frames == NUM_FRAMES and (result.height, result.width) == (HEIGHT, WIDTH)
  names = sorted(p.name for p in (tmp_path / 'fused').iterdir())
  assert names == [f'{t:04d}.png' for t in range(NUM_FRAMES)]  # The input's frame names.
  ir_frames = [video_io.load_png(p) for p in sorted(ir_dir.iterdir())]
  vi_frames = [video_io.load_png(p) for p in sorted(vi_dir.iterdir())]
  expected = _expected_official(apply_fn, ir_frames, vi_frames)
  for t, name in enumerate(names):
    np.testing.assert_array_equal(video_io.load_png(tmp_path / 'fused' / name),
                                  metrics.fused_to_uint8(expected[t]['fusion']))
    np.testing.assert_array_equal(video_io.load_png(tmp_path / 'ir' / name),
                                  metrics.to_uint8(expected[t]['ir']))
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # No staging left behind.


def test_grey_and_rgb_ir_give_the_same_result(tiny_model, folder_pair, tmp_path):
  apply_fn, _, _ = tiny_model
  config = windows.WindowConfig(WINDOW)
  inference.fuse_video(*folder_pair, tmp_path / 'rgb', apply_fn=apply_fn, num_frames=WINDOW, window_config=config,
                       ir_to_gray=False, progress=False)
  inference.fuse_video(*folder_pair, tmp_path / 'grey', apply_fn=apply_fn, num_frames=WINDOW, window_config=config,
                       progress=False)
  for name in sorted(p.name for p in (tmp_path / 'rgb').iterdir()):  # The network repeats grey IR to 3 channels.
    np.testing.assert_array_equal(video_io.load_png(tmp_path / 'grey' / name),
                                  video_io.load_png(tmp_path / 'rgb' / name))


def test_videos_in_video_out_with_part(tiny_model, video_pair, tmp_path):
  apply_fn, _, _ = tiny_model
  out = tmp_path / 'fused.mp4'
  result = inference.fuse_video(*video_pair, out, apply_fn=apply_fn, start_frame=2, num_frames=6,
                                window_config=windows.WindowConfig(WINDOW, 1), progress=False)
  info = video_io.probe_video(out)
  assert (info.num_frames, info.fps, info.height, info.width) == (6, FPS, HEIGHT, WIDTH)
  assert result.fps == FPS
  assert result.frames_per_sec > 0  # The progress line's steady rate, for benchmarks.


def test_odd_resolution_and_fused_frames_keep_the_input_size(tiny_model, tmp_path):
  apply_fn, _, _ = tiny_model
  ir = _write_folder(tmp_path / 'ir', _frames(3, num_frames=5, height=30, width=45))
  vi = _write_folder(tmp_path / 'vi', _frames(4, num_frames=5, height=30, width=45))
  inference.fuse_video(ir, vi, tmp_path / 'fused', output_vi=tmp_path / 'vi.mp4', apply_fn=apply_fn,
                       window_config=windows.WindowConfig(WINDOW), progress=False)
  assert video_io.load_png(tmp_path / 'fused' / '0004.png').shape == (30, 45, 3)
  info = video_io.probe_video(tmp_path / 'vi.mp4')  # 4:2:0 needs even sizes: padded by one row/column.
  assert (info.num_frames, info.height, info.width, info.fps) == (5, 30, 46, inference.DEFAULT_FPS)


def test_frame_count_mismatch_and_truncate(tiny_model, tmp_path):
  apply_fn, _, _ = tiny_model
  ir = _write_video(tmp_path / 'ir.mp4', _frames(1, num_frames=6))
  vi = _write_video(tmp_path / 'vi.mp4', _frames(2, num_frames=5))
  with pytest.raises(ValueError, match='frame-count mismatch.*6 frames.*5.*--truncate'):
    inference.fuse_video(ir, vi, tmp_path / 'out.mp4', apply_fn=apply_fn, progress=False)
  assert not (tmp_path / 'out.mp4').exists()
  result = inference.fuse_video(ir, vi, tmp_path / 'out.mp4', apply_fn=apply_fn, truncate=True,
                                window_config=windows.WindowConfig(WINDOW), progress=False)
  assert result.num_frames == 5 and video_io.probe_video(tmp_path / 'out.mp4').num_frames == 5


def test_fps_mismatch(tmp_path):
  ir = _write_video(tmp_path / 'ir.mp4', _frames(1, num_frames=3), fps=25)
  vi = _write_video(tmp_path / 'vi.mp4', _frames(2, num_frames=3), fps=30)
  with pytest.raises(ValueError, match='fps mismatch.*25.*30'):
    inference.plan_frames(inference.open_input(ir), inference.open_input(vi))
  plan = inference.plan_frames(inference.open_input(ir), inference.open_input(vi), ignore_fps_mismatch=True)
  assert plan.fps == 30 and plan.notes


def test_resolution_mismatch(tmp_path):
  ir = _write_folder(tmp_path / 'ir', _frames(1, num_frames=2, width=44))
  vi = _write_folder(tmp_path / 'vi', _frames(2, num_frames=2))
  with pytest.raises(ValueError, match='resolution mismatch.*32x44.*32x48'):
    inference.fuse_video(ir, vi, tmp_path / 'out', apply_fn=lambda *a: None, progress=False)


def test_unreadable_and_missing_inputs(tmp_path):
  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'not a video at all' * 100)
  with pytest.raises(ValueError, match='IR .*bad.mp4 is not a readable video'):
    inference.open_input(bad, 'IR')
  with pytest.raises(FileNotFoundError, match='visible .*missing.mp4 does not exist'):
    inference.open_input(tmp_path / 'missing.mp4', 'visible')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='holds no PNG frames'):
    inference.open_input(tmp_path / 'empty')


def test_part_outside_the_video(video_pair):
  ir, vi = inference.open_input(video_pair[0]), inference.open_input(video_pair[1])
  with pytest.raises(ValueError, match='--start_frame 10 is outside'):
    inference.plan_frames(ir, vi, start_frame=10)
  with pytest.raises(ValueError, match=r'--num_frames 9 must lie in \[1, 8\]'):
    inference.plan_frames(ir, vi, start_frame=2, num_frames=9)


def test_checkpoint_errors(tiny_checkpoint, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    inference.load_model(tmp_path / 'nope')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='not an inference checkpoint'):
    inference.load_model(tmp_path / 'empty')
  with pytest.raises(ValueError, match='written for another model config.*num_features'):
    inference.load_model(tiny_checkpoint, m3svd.released_model())


def test_never_overwrites_without_flag(tiny_model, folder_pair, tmp_path):
  apply_fn, _, _ = tiny_model
  existing = tmp_path / 'fused.mp4'
  existing.write_bytes(b'keep me')
  with pytest.raises(FileExistsError, match='--overwrite'):
    inference.fuse_video(*folder_pair, existing, apply_fn=apply_fn, progress=False)
  assert existing.read_bytes() == b'keep me'
  with pytest.raises(ValueError, match='is also an input'):
    inference.fuse_video(*folder_pair, folder_pair[1], apply_fn=apply_fn, overwrite=True, progress=False)
  inference.fuse_video(*folder_pair, existing, apply_fn=apply_fn, overwrite=True, num_frames=WINDOW,
                       window_config=windows.WindowConfig(WINDOW), progress=False)
  assert video_io.probe_video(existing).num_frames == WINDOW


def test_failed_run_leaves_nothing(tiny_model, folder_pair, tmp_path):
  apply_fn, _, _ = tiny_model
  calls = []

  def failing(ir, vi):
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError('device lost')
    return apply_fn(ir, vi)

  with pytest.raises(RuntimeError, match='device lost'):
    inference.fuse_video(*folder_pair, tmp_path / 'fused.mp4', output_ir=tmp_path / 'ir', apply_fn=failing,
                         window_config=windows.WindowConfig(WINDOW), progress=False)
  assert list(tmp_path.iterdir()) == []  # Neither the final names nor temporary files.


def test_bucket_inputs_checkpoint_and_outputs(tiny_checkpoint, tiny_model, video_pair, gcs_emulator, tmp_path):
  """Everything in gs:// gives what the same run on local disk gives; a failed run leaves no object."""
  apply_fn, params, model_config = tiny_model
  bucket = io.path(f'gs://{gcs_emulator.new_bucket()}')
  checkpoint.save_inference_checkpoint(bucket / 'ckpt', params, model_config)
  remote_inputs = [io.write_bytes(bucket / 'in' / p.name, p.read_bytes()) for p in video_pair]
  config = windows.WindowConfig(WINDOW)
  inference.fuse_video(*remote_inputs, bucket / 'out' / 'fused.mp4', checkpoint_dir=bucket / 'ckpt',
                       output_ir=bucket / 'out' / 'ir', window_config=config, progress=False)
  inference.fuse_video(*video_pair, tmp_path / 'fused.mp4', apply_fn=apply_fn, output_ir=tmp_path / 'ir',
                       window_config=config, progress=False)
  np.testing.assert_array_equal(video_io.read_video(bucket / 'out' / 'fused.mp4'),
                                video_io.read_video(tmp_path / 'fused.mp4'))
  names = sorted(p.name for p in (tmp_path / 'ir').iterdir())
  assert sorted(p.name for p in (bucket / 'out' / 'ir').iterdir()) == names
  for name in names:
    np.testing.assert_array_equal(video_io.load_png(bucket / 'out' / 'ir' / name),
                                  video_io.load_png(tmp_path / 'ir' / name))
  assert sorted(p.name for p in (bucket / 'out').iterdir()) == ['fused.mp4', 'ir']  # no staging left

  def failing(ir, vi):
    raise RuntimeError('device lost')

  with pytest.raises(RuntimeError, match='device lost'):
    inference.fuse_video(*remote_inputs, bucket / 'failed' / 'fused.mp4', output_vi=bucket / 'failed' / 'vi',
                         apply_fn=failing, window_config=config, progress=False)
  assert not (bucket / 'failed').exists()


def test_cli_video_pair(tiny_checkpoint, video_pair, tmp_path):
  out = tmp_path / 'fused.mp4'
  cmd = [sys.executable, '-m', 'vfusion_jax.infer', f'--ir={video_pair[0]}', f'--vi={video_pair[1]}',
         f'--checkpoint={tiny_checkpoint}', f'--output={out}', f'--fuse.window={WINDOW}', '--fuse.fps=12',
         '--config=configs/m3svd.py:tiny']
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(REPO)},
                       check=False)
  assert run.returncode == 0, run.stderr
  assert f'wrote {NUM_FRAMES} frames' in run.stdout and 'frames/s' in run.stderr
  info = video_io.probe_video(out)
  assert (info.num_frames, info.fps) == (NUM_FRAMES, 12)
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(REPO)},
                       check=False)
  assert run.returncode == 1 and 'already exists; pass --overwrite' in run.stderr


def test_cli_help_and_old_option_spelling():
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  run = subprocess.run([sys.executable, '-m', 'vfusion_jax.infer', '--help'], cwd=REPO, capture_output=True,
                       text=True, env=env, check=False)
  assert run.returncode == 0 and '--fuse' in run.stdout and '--overwrite' in run.stdout
  run = subprocess.run([sys.executable, '-m', 'vfusion_jax.infer', '--ir=a', '--window=5'], cwd=REPO,
                       capture_output=True, text=True, env=env, check=False)
  assert run.returncode == 1 and 'pass --fuse.window=5' in run.stderr
  run = subprocess.run([sys.executable, '-m', 'vfusion_jax.infer', '--nofused_minmax'], cwd=REPO,
                       capture_output=True, text=True, env=env, check=False)
  assert run.returncode == 1 and 'pass --fuse.fused_minmax=false' in run.stderr


def test_cli_wrong_config_is_a_clear_error(tiny_checkpoint, video_pair, tmp_path):
  cmd = [sys.executable, '-m', 'vfusion_jax.infer', f'--ir={video_pair[0]}', f'--vi={video_pair[1]}',
         f'--checkpoint={tiny_checkpoint}', f'--output={tmp_path / "f.mp4"}', '--config=configs/m3svd.py']
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(REPO)},
                       check=False)
  assert run.returncode == 1 and 'written for another model config' in run.stderr
  assert list(tmp_path.iterdir()) == []


def test_real_pair_is_checked_before_fusing():
  root = shared_data('m3svd_videos')
  ir = inference.open_input(root / 'infrared' / '1230_1202.mp4', 'IR')
  vi = inference.open_input(root / 'visible' / '1230_1202.mp4', 'visible')
  plan = inference.plan_frames(ir, vi)
  assert (plan.num_frames, plan.fps, plan.height, plan.width) == (205, 22.0, 480, 640)
  other = inference.open_input(root / 'visible' / '0111_1716.mp4', 'visible')
  with pytest.raises(ValueError, match='frame-count mismatch'):
    inference.plan_frames(ir, other)
  with pytest.raises(ValueError, match='fps mismatch'):
    inference.plan_frames(ir, other, truncate=True)


@pytest.mark.slow
def test_real_pair_full_resolution(tiny_model, tmp_path):
  """Three frames of the real 640x480 pair through the tiny network (compiles the full frame size)."""
  apply_fn, _, _ = tiny_model
  root = shared_data('m3svd_videos')
  out = tmp_path / 'fused.mp4'
  inference.fuse_video(root / 'infrared' / '1230_1202.mp4', root / 'visible' / '1230_1202.mp4', out,
                       apply_fn=apply_fn, start_frame=100, num_frames=3, window_config=windows.WindowConfig(3),
                       progress=False)
  info = video_io.probe_video(out)
  assert (info.num_frames, info.fps, info.height, info.width) == (3, 22.0, 480, 640)
