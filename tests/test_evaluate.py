"""Whole-video evaluation: tables agree with the saved PNGs and with vfusion_jax.metrics, settings, baselines."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import m3svd
from conftest import LOCAL_FIXTURES, REPO, shared_data
from vfusion_jax import baselines, checkpoint, convert, evaluate, inference, io, metrics, windows
from vfusion_jax.data import synthetic, video_io

TINY_NPZ = LOCAL_FIXTURES / 'videofusion_tiny_T3_32.npz'
HEIGHT, WIDTH = 32, 48  # Shared with tests/test_infer.py: one XLA compile for the model runs.
WINDOW = 4
NUM_FRAMES = 6
VIDEOS = ('clip_a', 'clip_b')
STREAM_DIRS = {'infrared_Enhance': 'ir_gt', 'visible_Enhance': 'vi_gt', 'infrared_noise': 'ir_lq',
               'visible_Blur': 'vi_lq'}


@pytest.fixture(scope='module')
def tiny_apply(tmp_path_factory):
  params = convert.torch_to_flax(convert.load_state_dict(str(TINY_NPZ)), m3svd.tiny_model())
  path = checkpoint.save_inference_checkpoint(str(tmp_path_factory.mktemp('ckpt') / 'tiny'), params,
                                              m3svd.tiny_model())
  return path, inference.load_model(path)[0]


def _clip(seed):
  """uint8 frames of the four release streams of one video; IR stored as three equal channels."""
  rng = np.random.default_rng(seed)
  scene = rng.random((HEIGHT, WIDTH, 3))
  frames = {}
  for t in range(NUM_FRAMES):
    vi = np.clip(np.roll(scene, t, axis=1) + 0.05 * rng.random(scene.shape), 0, 1)
    ir = np.clip(0.6 * vi.mean(axis=-1, keepdims=True) + 0.2 * rng.random((HEIGHT, WIDTH, 1)), 0, 1)
    noisy = np.clip(ir + 0.05 * rng.standard_normal(ir.shape), 0, 1)
    for key, value in (('ir_gt', ir), ('vi_gt', vi), ('ir_lq', noisy), ('vi_lq', 0.9 * vi + 0.05)):
      frames.setdefault(key, []).append(np.round(255 * np.repeat(value, 3 // value.shape[-1], -1))
                                        .astype(np.uint8))
  return frames


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """A tiny dataset in the M3SVD release layout; returns (root, {video: {stream: [frames]}})."""
  root = tmp_path_factory.mktemp('m3svd')
  content = {}
  for seed, video in enumerate(VIDEOS):
    content[video] = _clip(seed)
    for folder, key in STREAM_DIRS.items():
      (root / folder / video).mkdir(parents=True)
      for t, frame in enumerate(content[video][key]):
        io.save_png(root / folder / video / f'{t:04d}.png', frame)
  return root, content


@pytest.fixture(scope='module')
def degraded_run(tiny_apply, dataset, tmp_path_factory):
  out = tmp_path_factory.mktemp('eval') / 'degraded'
  options = evaluate.EvalOptions(setting='degraded', references='clean', window=windows.WindowConfig(WINDOW, 1))
  summary = evaluate.evaluate(dataset[0], out, apply_fn=tiny_apply[1], options=options, progress=False)
  return out, summary


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_outputs_written(degraded_run):
  out, summary = degraded_run
  for video in VIDEOS:
    for kind in ('fusion', 'ir', 'vi'):
      assert sorted(p.name for p in (out / kind / video).iterdir()) == [f'{t:04d}.png' for t in range(NUM_FRAMES)]
    for plot in ('intensity', 'column'):
      assert video_io.load_png(out / 'plots' / f'{video}_{plot}.png').shape[-1] == 3
  methods = ['VideoFusion', 'pixel_max', 'pixel_mean', 'restored_max']
  assert len(_read_csv(out / 'metrics_per_frame.csv')) == len(methods) * len(VIDEOS) * NUM_FRAMES
  assert len(_read_csv(out / 'metrics_per_video.csv')) == len(methods) * len(VIDEOS)
  assert [r['method'] for r in _read_csv(out / 'metrics_mean.csv')] == methods
  stored = json.loads((out / 'metrics.json').read_text())
  assert stored['setting'] == 'degraded' and stored['references'] == 'clean'
  assert stored['inputs'] == ['infrared_noise', 'visible_Blur']
  assert stored['window'] == {'window': WINDOW, 'overlap': 1, 'rule': 'blend', 'tile_size': 0, 'tile_overlap': 32}
  table = (out / 'metrics.md').read_text()
  assert '**setting: degraded**' in table and '**references: clean**' in table
  # The VF-Bench substitutes are labelled _fb, never with the paper's bare names.
  assert '| BiSWE_fb ↓ | MS2R_fb ↓ |' in table and 'BiSWE ↓' not in table and 'MS2R ↓' not in table
  assert {'BiSWE_fb', 'MS2R_fb', 'BiSWE_fb_valid_frac'} <= set(_read_csv(out / 'metrics_per_video.csv')[0])
  assert stored['vfbench_fb_sources'] == ['infrared_Enhance', 'visible_Enhance']
  assert '| pixel_max |' in table and 'Restoration' in table and summary['videos'] == list(VIDEOS)
  assert '| restored_max |' in table and 'IR PSNR classical' in table
  assert stored['baselines']['methods'] == methods[1:]
  assert stored['baselines']['restored_max']['ir_offset'] == pytest.approx(37.8)


def test_output_in_a_bucket_equals_the_local_output(degraded_run, dataset, tiny_apply, gcs_emulator):
  local, _ = degraded_run
  out = io.path(f'gs://{gcs_emulator.new_bucket()}/eval')
  options = evaluate.EvalOptions(setting='degraded', references='clean', window=windows.WindowConfig(WINDOW, 1))
  evaluate.evaluate(dataset[0], out, apply_fn=tiny_apply[1], options=options, progress=False)
  for table in ('metrics_per_frame.csv', 'metrics_per_video.csv', 'metrics_mean.csv', 'restoration_per_video.csv'):
    assert (out / table).read_text() == (local / table).read_text()
  assert '**setting: degraded**' in (out / 'metrics.md').read_text()
  for video in VIDEOS:
    for name in (f'{t:04d}.png' for t in range(NUM_FRAMES)):
      np.testing.assert_array_equal(video_io.load_png(out / 'fusion' / video / name),
                                    video_io.load_png(local / 'fusion' / video / name))
    np.testing.assert_array_equal(video_io.load_png(out / 'plots' / f'{video}_column.png'),
                                  video_io.load_png(local / 'plots' / f'{video}_column.png'))
  with pytest.raises(FileExistsError, match='not empty'):
    evaluate.evaluate(dataset[0], out, apply_fn=tiny_apply[1], options=options, progress=False)
  with pytest.raises(ValueError, match='gcsfuse'):
    evaluate.evaluate(f'gs://{gcs_emulator.new_bucket()}/data', out, apply_fn=tiny_apply[1], progress=False)


def test_fused_pngs_are_the_quantised_model_output(degraded_run, dataset, tiny_apply):
  out, _ = degraded_run
  content = dataset[1][VIDEOS[0]]
  frames = zip((f[..., :1] for f in content['ir_lq']), content['vi_lq'])  # One IR channel, as the reader.
  config = windows.WindowConfig(WINDOW, 1)
  for t, result in windows.stream_windows(frames, NUM_FRAMES, tiny_apply[1], config):
    png = video_io.load_png(out / 'fusion' / VIDEOS[0] / f'{t:04d}.png')
    np.testing.assert_array_equal(png, metrics.quantize_fused(result['fusion']))
    np.testing.assert_array_equal(video_io.load_png(out / 'vi' / VIDEOS[0] / f'{t:04d}.png'),
                                  metrics.to_uint8(result['vi']))


def test_metrics_agree_with_the_pngs_and_the_clean_references(degraded_run, dataset):
  out, summary = degraded_run
  rows = _read_csv(out / 'metrics_per_frame.csv')
  video = VIDEOS[1]
  content = dataset[1][video]
  fused = np.stack([video_io.load_png(out / 'fusion' / video / f'{t:04d}.png') for t in range(NUM_FRAMES)])
  for t in (0, NUM_FRAMES - 1):
    row = next(r for r in rows if r['video'] == video and r['method'] == 'VideoFusion' and int(r['frame']) == t)
    expected = metrics.fusion_metrics(fused[t], content['ir_gt'][t], content['vi_gt'][t])
    for key, value in expected.items():
      assert float(row[key]) == pytest.approx(value, rel=1e-12, abs=1e-12)
    # The baselines are stretched exactly as the network's output (IR read as one channel).
    ir_lq, vi_lq = content['ir_lq'][t][..., :1], content['vi_lq'][t]
    ir3 = np.repeat(ir_lq, 3, axis=-1).astype(np.float32) / 255
    restored = np.maximum(np.repeat(baselines.restore_ir(ir_lq), 3, axis=-1), baselines.restore_vi(vi_lq))
    for method, x in (('pixel_max', np.maximum(ir3, vi_lq.astype(np.float32) / 255)), ('restored_max', restored)):
      base = next(r for r in rows if r['video'] == video and r['method'] == method and int(r['frame']) == t)
      expected = metrics.fusion_metrics(metrics.quantize_fused(x), content['ir_gt'][t], content['vi_gt'][t])
      for key in ('MI', 'VIF', 'SSIM', 'Qabf'):
        assert float(base[key]) == pytest.approx(expected[key], abs=1e-12), (method, key)
  per_video = summary['per_video']['VideoFusion'][1]
  assert per_video['flowD_fb'] == pytest.approx(metrics.flowd_fb(fused, np.stack(content['vi_gt'])), abs=1e-9)
  ir_gt, vi_gt = np.stack(content['ir_gt']), np.stack(content['vi_gt'])
  assert per_video['BiSWE_fb'] == pytest.approx(metrics.biswe_fb(fused, ir_gt, vi_gt), abs=1e-9)
  assert per_video['MS2R_fb'] == pytest.approx(metrics.ms2r_fb(fused, ir_gt, vi_gt), abs=1e-9)
  baseline = np.stack([metrics.quantize_fused(np.maximum(a, b).astype(np.float32) / 255)
                       for a, b in zip(content['ir_lq'], content['vi_lq'])])
  assert summary['per_video']['pixel_max'][1]['BiSWE_fb'] == pytest.approx(
      metrics.biswe_fb(baseline, ir_gt, vi_gt), abs=1e-9)
  assert all(r['BiSWE_fb'] != '' and 0 < float(r['BiSWE_fb_valid_frac']) <= 1 for r in rows)
  assert per_video['tdiff'] == pytest.approx(metrics.tdiff(fused), abs=1e-9)
  assert per_video['EN'] == pytest.approx(np.mean([metrics.en(f) for f in fused]), abs=1e-12)
  mean = summary['mean']['VideoFusion']
  assert mean['SSIM'] == pytest.approx(np.mean([v['SSIM'] for v in summary['per_video']['VideoFusion']]))
  assert mean['num_frames'] == len(VIDEOS) * NUM_FRAMES


def test_restoration_gain_is_measured_against_clean(degraded_run, dataset):
  out, summary = degraded_run
  content = dataset[1][VIDEOS[0]]
  row = _read_csv(out / 'restoration_per_frame.csv')[0]
  assert float(row['PSNR_vi_input']) == pytest.approx(evaluate.psnr(content['vi_lq'][0], content['vi_gt'][0]))
  restored_ir = video_io.load_png(out / 'ir' / VIDEOS[0] / '0000.png')
  assert float(row['PSNR_ir_restored']) == pytest.approx(evaluate.psnr(restored_ir, content['ir_gt'][0]))
  assert float(row['SSIM_ir_input']) == pytest.approx(
      metrics.ssim_pair(content['ir_lq'][0][..., 0], content['ir_gt'][0][..., 0]))  # Equal channels.
  assert summary['restoration']['mean']['PSNR_vi_input'] > 0
  classical_ir = metrics.to_uint8(baselines.restore_ir(content['ir_lq'][0][..., :1]))
  assert float(row['PSNR_ir_classical']) == pytest.approx(evaluate.psnr(np.repeat(classical_ir, 3, axis=-1),
                                                                        content['ir_gt'][0]))
  classical_vi = metrics.to_uint8(baselines.restore_vi(content['vi_lq'][0]))
  assert float(row['SSIM_vi_classical']) == pytest.approx(evaluate.ssim_rgb(classical_vi, content['vi_gt'][0]))


def _fake_apply(ir, vi):
  """Stand-in for the network (no compile): fusion = mean of the inputs, restorations = the inputs."""
  ir3 = np.broadcast_to(ir, vi.shape)
  return {'fusion': 0.5 * (ir3 + vi), 'ir': ir3, 'vi': vi}


@pytest.mark.parametrize('setting', evaluate.SETTINGS)
@pytest.mark.parametrize('fused_minmax', [True, False])
def test_baselines_are_quantised_like_the_network(dataset, tmp_path, setting, fused_minmax):
  """The stand-in network fuses by the pixel mean: its rows equal the pixel_mean rows, stretched or not.

  Windows of 2 tile the NUM_FRAMES = 6 frames, so no blend of overlapping windows rounds the stand-in's output.
  """
  options = evaluate.EvalOptions(setting=setting, window=windows.WindowConfig(2), fused_minmax=fused_minmax,
                                 save_restored=False, plots=False, videos=(VIDEOS[0],))
  summary = evaluate.evaluate(dataset[0], tmp_path / 'out', apply_fn=_fake_apply, options=options, progress=False)
  expected = ['VideoFusion', 'pixel_max', 'pixel_mean'] + (['restored_max'] if setting == 'degraded' else [])
  assert list(summary['mean']) == expected
  network, mean = summary['per_video']['VideoFusion'][0], summary['per_video']['pixel_mean'][0]
  for key in evaluate.FRAME_KEYS + evaluate.TEMPORAL_KEYS:
    assert network[key] == mean[key], key
  assert summary['mean']['pixel_max'] != summary['mean']['pixel_mean']


def test_each_farneback_flow_is_computed_once(dataset, tmp_path, monkeypatch):
  """With clean references, flowD_fb's guide flow FB(V_t, V_t-1) is the visible source stream's own flow."""
  calls = []
  flow = metrics.farneback_backward_flow
  monkeypatch.setattr(metrics, 'farneback_backward_flow', lambda *args: calls.append(1) or flow(*args))
  options = evaluate.EvalOptions(window=windows.WindowConfig(WINDOW), save_restored=False, plots=False,
                                 baselines=False, videos=(VIDEOS[0],))
  evaluate.evaluate(dataset[0], tmp_path / 'out', apply_fn=_fake_apply, options=options, progress=False)
  streams = 3  # the two source streams and the fused video: 2 (T - 1) + 2 flows each
  assert len(calls) == streams * 2 * NUM_FRAMES


def test_normal_setting_with_degraded_references(dataset, tmp_path):
  options = evaluate.EvalOptions(setting='normal', references='degraded', window=windows.WindowConfig(WINDOW),
                                 save_restored=False, plots=False, baselines=False)
  summary = evaluate.evaluate(dataset[0], tmp_path / 'out', apply_fn=_fake_apply, options=options, progress=False)
  assert summary['inputs'] == ['infrared_Enhance', 'visible_Enhance']
  assert summary['reference_frames'] == ['infrared_noise', 'visible_Blur']
  assert list(summary['mean']) == ['VideoFusion'] and summary['restoration']['per_video'] == []
  assert not (tmp_path / 'out' / 'ir').exists() and not (tmp_path / 'out' / 'restoration_per_frame.csv').exists()
  content = dataset[1][VIDEOS[0]]
  fused = video_io.load_png(tmp_path / 'out' / 'fusion' / VIDEOS[0] / '0002.png')
  x = 0.5 * (content['ir_gt'][2].astype(np.float32) / 255 + content['vi_gt'][2].astype(np.float32) / 255)
  np.testing.assert_array_equal(fused, metrics.quantize_fused(x))
  row = _read_csv(tmp_path / 'out' / 'metrics_per_frame.csv')[2]
  assert float(row['Qabf']) == pytest.approx(metrics.qabf(fused, content['ir_lq'][2], content['vi_lq'][2]))
  # BiSWE_fb and MS2R_fb take their source flows from the references too.
  video = np.stack([video_io.load_png(tmp_path / 'out' / 'fusion' / VIDEOS[0] / f'{t:04d}.png')
                    for t in range(NUM_FRAMES)])
  ir_lq, vi_lq = np.stack(content['ir_lq']), np.stack(content['vi_lq'])
  assert summary['per_video']['VideoFusion'][0]['MS2R_fb'] == pytest.approx(metrics.ms2r_fb(video, ir_lq, vi_lq),
                                                                              abs=1e-9)
  # flowD_fb's guide stays the clean visible video (its flow is computed, not a source stream's).
  assert summary['per_video']['VideoFusion'][0]['flowD_fb'] == pytest.approx(
      metrics.flowd_fb(video, np.stack(content['vi_gt'])), abs=1e-9)
  assert '**references: degraded**' in (tmp_path / 'out' / 'metrics.md').read_text()


def test_data_without_degraded_frames_is_degraded_with_a_fixed_seed(tmp_path):
  source = synthetic.SyntheticVideoSource(num_videos=2, frames_per_video=5, frames_per_example=5, height=HEIGHT,
                                          width=WIDTH)
  options = evaluate.EvalOptions(window=windows.WindowConfig(WINDOW), plots=False, save_restored=False)
  first = evaluate.evaluate(source, tmp_path / 'a', apply_fn=_fake_apply, options=options, progress=False)
  second = evaluate.evaluate(source, tmp_path / 'b', apply_fn=_fake_apply, options=options, progress=False)
  assert first['videos'] == ['synthetic_00000', 'synthetic_00001']
  assert any('degraded with vfusion_jax.data.degrade' in n for n in first['notes'])
  assert first['mean'] == second['mean']
  assert first['restoration']['mean']['PSNR_vi_input'] < 60  # The inputs really are degraded.


def test_synthetic_degradation_does_not_depend_on_max_frames():
  """Frame t of a video's synthetic degradation is the same whether 4 or all 12 frames are evaluated."""
  source = synthetic.SyntheticVideoSource(num_videos=1, frames_per_video=12, frames_per_example=12, height=HEIGHT,
                                          width=WIDTH)
  short = evaluate.add_synthetic_degradation(next(evaluate.open_videos(source, max_frames=4)))
  full = evaluate.add_synthetic_degradation(next(evaluate.open_videos(source)))
  short_frames, full_frames = list(short.frames()), list(full.frames())
  assert (len(short_frames), len(full_frames)) == (4, 12)
  for a, b in zip(short_frames, full_frames):
    for key in (evaluate.IR_LQ, evaluate.VI_LQ):
      np.testing.assert_array_equal(a[key], b[key])


def test_one_frame_video_has_no_temporal_metrics(dataset, tmp_path):
  options = evaluate.EvalOptions(window=windows.WindowConfig(WINDOW), max_frames=1, videos=(VIDEOS[0],),
                                 save_restored=False, plots=False)
  summary = evaluate.evaluate(dataset[0], tmp_path / 'out', apply_fn=_fake_apply, options=options, progress=False)
  for key in ('flowD_fb', 'tdiff', 'BiSWE_fb', 'MS2R_fb', 'BiSWE_fb_valid_frac'):
    assert np.isnan(summary['mean']['VideoFusion'][key]), key


def test_tfds_records_give_the_same_tables_as_the_frame_folders(dataset, tmp_path):
  build = pytest.importorskip('vfusion_jax.data.build')
  builder = build.build(dataset[0], tmp_path / 'records', num_shards=1, chunk_frames=4)
  options = evaluate.EvalOptions(window=windows.WindowConfig(WINDOW), plots=False, save_restored=False)
  from_records = evaluate.evaluate(builder.data_dir, tmp_path / 'a', apply_fn=_fake_apply, options=options,
                                   progress=False)
  from_folders = evaluate.evaluate(dataset[0], tmp_path / 'b', apply_fn=_fake_apply, options=options,
                                   progress=False)
  assert from_records['videos'] == list(VIDEOS)
  assert from_records['mean'] == from_folders['mean']
  assert from_records['restoration']['mean'] == from_folders['restoration']['mean']


def test_output_folder_is_not_overwritten(dataset, tmp_path):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'keep.txt').write_text('x')
  with pytest.raises(FileExistsError, match='not empty; pass --overwrite'):
    evaluate.evaluate(dataset[0], tmp_path / 'out', apply_fn=_fake_apply, progress=False)


def test_unknown_split_is_a_clear_error(tmp_path):
  root = tmp_path / 'data'
  for folder in ('ir', 'vi'):
    (root / folder / 'v').mkdir(parents=True)
    io.save_png(root / folder / 'v' / '0000.png', np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match='no videos'):
    evaluate.evaluate(root, tmp_path / 'out', apply_fn=_fake_apply, progress=False,
                      options=evaluate.EvalOptions(split='test'))


def test_real_sample_metrics_pipeline(tmp_path):
  """The real M3SVD sample (2 frames per video) through the whole pipeline, with a stand-in for the network."""
  root = shared_data('m3svd_sample')
  options = evaluate.EvalOptions(window=windows.WindowConfig(2), max_frames=2, videos=('0114_1609',))
  summary = evaluate.evaluate(root, tmp_path / 'out', apply_fn=_fake_apply, options=options, progress=False)
  assert summary['videos'] == ['0114_1609'] and summary['mean']['VideoFusion']['num_frames'] == 2
  fused = video_io.load_png(tmp_path / 'out' / 'fusion' / '0114_1609' / '0001.png')
  assert fused.shape == (480, 640, 3)
  ir = video_io.load_png(root / 'infrared_Enhance' / '0114_1609' / '0001.png')
  vi = video_io.load_png(root / 'visible_Enhance' / '0114_1609' / '0001.png')
  row = next(r for r in _read_csv(tmp_path / 'out' / 'metrics_per_frame.csv')
             if (r['method'], r['video'], r['frame']) == ('VideoFusion', '0114_1609', '1'))
  assert float(row['VIF']) == pytest.approx(metrics.vif(fused, ir, vi), abs=1e-12)
  gain = summary['restoration']['mean']
  assert gain['PSNR_ir_restored'] == pytest.approx(gain['PSNR_ir_input'])  # The stand-in restores nothing.


def test_real_mp4_pairs_are_degraded_with_a_note(tmp_path):
  """The mp4 release layout (clean streams only): the degraded setting degrades them here, seeded."""
  root = shared_data('m3svd_videos')
  options = evaluate.EvalOptions(window=windows.WindowConfig(2), max_frames=2, videos=('1230_1202',),
                                 plots=False, save_restored=False, baselines=False, save_mp4=True)
  summary = evaluate.evaluate(root, tmp_path / 'out', apply_fn=_fake_apply, options=options, progress=False)
  assert summary['videos'] == ['1230_1202'] and any('degrade' in n for n in summary['notes'])
  assert sorted(p.name for p in (tmp_path / 'out' / 'fusion' / '1230_1202').iterdir()) == ['0000.png', '0001.png']
  info = video_io.probe_video(tmp_path / 'out' / 'videos' / '1230_1202_fusion.mp4')
  assert (info.num_frames, info.fps) == (2, 22.0)
  assert summary['restoration']['mean']['PSNR_ir_input'] < 40


def test_eval_cli(tiny_apply, dataset, tmp_path):
  cmd = [sys.executable, 'eval.py', '--config=configs/m3svd.py:tiny', f'--checkpoint={tiny_apply[0]}',
         f'--data={dataset[0]}', '--setting=normal', '--references=clean', f'--output={tmp_path / "out"}',
         f'--fuse.window={WINDOW}', '--fuse.overlap=1', '--fuse.fps=12', '--videos=clip_b', '--save_mp4']
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(REPO)},
                       check=False)
  assert run.returncode == 0, run.stderr
  summary = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert summary['setting'] == 'normal' and summary['videos'] == ['clip_b']
  assert (summary['window']['window'], summary['window']['overlap']) == (WINDOW, 1)
  info = video_io.probe_video(tmp_path / 'out' / 'videos' / 'clip_b_fusion.mp4')
  assert (info.num_frames, info.fps) == (NUM_FRAMES, 12)
  cmd[2] = '--config=configs/m3svd.py'  # The released network: the tiny checkpoint does not fit.
  cmd[7] = f'--output={tmp_path / "other"}'
  run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(REPO)},
                       check=False)
  assert run.returncode == 1 and 'written for another model config' in run.stderr


def test_eval_cli_help_and_old_option_spelling():
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  run = subprocess.run([sys.executable, 'eval.py', '--help'], cwd=REPO, capture_output=True, text=True, env=env,
                       check=False)
  assert run.returncode == 0 and '--fuse' in run.stdout and 'tile_overlap' in run.stdout
  run = subprocess.run([sys.executable, 'eval.py', '--rule=center', '--nofused_minmax'], cwd=REPO,
                       capture_output=True, text=True, env=env, check=False)
  assert run.returncode == 1 and 'pass --fuse.rule=center' in run.stderr


@pytest.mark.slow
def test_real_sample_with_the_tiny_network(tiny_apply, tmp_path):
  """The done-when check in small: real 640x480 frames through the tiny network (compiles the full size)."""
  root = shared_data('m3svd_sample')
  options = evaluate.EvalOptions(window=windows.WindowConfig(3), max_frames=3, videos=('0115_1834',))
  summary = evaluate.evaluate(root, tmp_path / 'out', apply_fn=tiny_apply[1], options=options, progress=False)
  assert summary['mean']['VideoFusion']['num_frames'] == 3
  assert np.isfinite(summary['mean']['VideoFusion']['flowD_fb'])


def test_as_rgb_repeats_grey_and_keeps_rgb():
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  for frame in (grey, grey[..., None]):
    rgb = evaluate.as_rgb(frame)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    for c in range(3):
      np.testing.assert_array_equal(rgb[..., c], grey)
  colour = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
  np.testing.assert_array_equal(evaluate.as_rgb(colour), colour)
