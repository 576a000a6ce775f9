"""Tests of the calibration tool (python -m vfusion_jax.data.calibrate): JSON report, both modes, real data."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from conftest import REPO, shared_data
from test_sources import RELEASE, write_frame_folders
from vfusion_jax.data import calibrate
from vfusion_jax.data import degrade
from vfusion_jax.data import sources

FRAMES, HEIGHT, WIDTH = 4, 96, 128
KNOWN = dict(blur_sigma=1.5, gain=0.95, offset=0.03, column_std=0.03, row_std=0.01, pixel_std=0.04,
             offset_mean=0.12, offset_amplitude=0.1)
FIXED_CONFIG = degrade.DegradationConfig(
    blur_sigma_range=(1.5, 1.5), vi_gain_range=(0.95, 0.95), vi_offset_range=(0.03, 0.03),
    ir_column_std_range=(0.03, 0.03), ir_row_std_range=(0.01, 0.01), ir_temporal_row_std_range=(0.0, 0.0),
    ir_pixel_std_range=(0.04, 0.04), ir_offset_mean_range=(0.12, 0.12), ir_offset_amplitude_range=(0.1, 0.1),
    ir_offset_power_range=(2.0, 2.0), ir_tone_knee_range=(0.5, 0.5), ir_tone_slope_range=(0.0, 0.0),
    field_frame_size=(HEIGHT, WIDTH))
# Relative error allowed on the recovered stripe/noise stds (they are sample stds of ~100 random values).
STD_RTOL = 0.2
SIGMA_ATOL = 0.1
AFFINE_ATOL = 0.01
OFFSET_ATOL = 0.02
# Central window of the real 480x640 frames used to degrade real clean frames (fast blur fit).
WINDOW = (slice(120, 360), slice(160, 480))
# Statistics a default-range degradation of real frames must measure inside the default ranges.
ROBUST_STATISTICS = ('visible.blur_sigma', 'visible.gain', 'visible.offset', 'infrared.column_std',
                     'infrared.pixel_std', 'infrared.offset_mean')
# The real sample: 0111_1716 is the held-out video of docs/cpu_study.md, the others train.
HELD_OUT = '0111_1716'
TRAIN_VIDEOS = ['0114_1609', '0115_1834']


def _to_uint8(x):
  return np.rint(np.asarray(x) * 255).astype(np.uint8)


def _texture(rng, channels):
  x = ndimage.gaussian_filter(rng.random((HEIGHT, WIDTH, channels)), sigma=(2, 2, 0))
  return (0.1 + 0.5 * (x - x.min()) / (x.max() - x.min())).astype(np.float32)


def _write_degraded_release(root, name, ir, vi, config, rng):
  """Degrades uint8 clean clips with ``config`` and writes the four release folders of video ``name``."""
  ir_lq, vi_lq = degrade.degrade_clip(ir / 255.0, vi / 255.0, rng, config)
  write_frame_folders(root, {name: dict(ir_gt=ir, vi_gt=vi, ir_lq=_to_uint8(ir_lq), vi_lq=_to_uint8(vi_lq))},
                      RELEASE)


@pytest.fixture(scope='module')
def known_release(tmp_path_factory):
  """A release folder with one video degraded with the fixed, known parameters."""
  root = tmp_path_factory.mktemp('known')
  rng = np.random.default_rng(0)
  ir = np.repeat(_to_uint8(_texture(rng, 1))[None], FRAMES, 0)
  vi = np.repeat(_to_uint8(_texture(rng, 3))[None], FRAMES, 0)
  _write_degraded_release(root, 'known', ir, vi, FIXED_CONFIG, rng)
  return root


def _no_nan(constant):
  raise ValueError(f'JSON holds {constant}')


def _check_known(visible, infrared):
  assert visible['blur_sigma'] == pytest.approx(KNOWN['blur_sigma'], abs=SIGMA_ATOL)
  np.testing.assert_allclose(visible['gain'], KNOWN['gain'], atol=AFFINE_ATOL)
  np.testing.assert_allclose(visible['offset'], KNOWN['offset'], atol=AFFINE_ATOL)
  for key in ('column_std', 'row_std', 'pixel_std'):
    assert infrared[key] == pytest.approx(KNOWN[key], rel=STD_RTOL), key
  for key in ('offset_mean', 'offset_amplitude'):
    assert infrared[key] == pytest.approx(KNOWN[key], abs=OFFSET_ATOL), key


def test_cli_root_mode_writes_json_that_recovers_known_degradation(known_release, tmp_path):
  output = tmp_path / 'calibration.json'
  command = [sys.executable, '-m', 'vfusion_jax.data.calibrate', f'--root={known_release}', f'--output={output}']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads(output.read_text(), parse_constant=_no_nan)
  video = report['videos']['known']
  assert (video['num_frames'], video['height'], video['width']) == (FRAMES, HEIGHT, WIDTH)
  _check_known(video['visible'], video['infrared'])
  assert set(report['default_ranges']) == set(calibrate.CONFIG_RANGES)
  sigma = report['default_ranges']['visible.blur_sigma']
  assert sigma['config_field'] == 'blur_sigma_range' and sigma['inside']
  assert sigma['default'] == list(degrade.DegradationConfig().blur_sigma_range)
  assert report['summary']['infrared.pixel_std']['min'] == video['infrared']['pixel_std']
  pixel = report['default_ranges']['infrared.pixel_std']
  assert pixel['suggested'] == calibrate.suggest_range('infrared.pixel_std', *pixel['measured'])
  bad = subprocess.run([sys.executable, '-m', 'vfusion_jax.data.calibrate', f'--root={known_release}',
                        f'--clean={known_release}'], cwd=REPO, capture_output=True, text=True, timeout=120,
                       check=False)
  assert bad.returncode != 0 and 'either --root, or both --clean and --degraded' in bad.stderr


def test_folder_pair_mode_stream_folders_and_one_video(known_release):
  infrared = calibrate.calibrate_folders(known_release / 'infrared_Enhance', known_release / 'infrared_noise')
  assert infrared['inputs']['modality'] == 'ir' and set(infrared['videos']['known']) >= {'infrared'}
  visible = calibrate.calibrate_folders(known_release / 'visible_Enhance' / 'known',
                                        known_release / 'visible_Blur' / 'known')
  assert visible['inputs']['modality'] == 'vi' and 'infrared' not in visible['videos']['known']
  _check_known(visible['videos']['known']['visible'], infrared['videos']['known']['infrared'])
  root_report = calibrate.calibrate_root(known_release)
  assert root_report['videos']['known']['infrared'] == infrared['videos']['known']['infrared']


def test_folder_pair_mode_errors(known_release, tmp_path):
  (tmp_path / 'other').mkdir()
  with pytest.raises(ValueError, match='cannot tell the modality'):
    calibrate.calibrate_folders(tmp_path / 'other', known_release / 'infrared_noise')
  (tmp_path / 'infrared_noise' / 'extra').mkdir(parents=True)
  (tmp_path / 'infrared_noise' / 'known').mkdir()
  with pytest.raises(sources.DataError, match=r"videos in only one of .*\['extra'\]"):
    calibrate.calibrate_folders(known_release / 'infrared_Enhance', tmp_path / 'infrared_noise')
  with pytest.raises(FileNotFoundError):
    calibrate.calibrate_folders(tmp_path / 'missing', known_release / 'infrared_noise')


def test_default_degradation_of_real_clean_frames_measures_inside_the_default_ranges(tmp_path):
  root = shared_data('m3svd_sample')
  video = sources.scan(root, videos=['0114_1609'], max_frames=FRAMES).videos[0]
  clean = video.read()
  ir, vi = (clean[key][:, WINDOW[0], WINDOW[1]] for key in ('ir_gt', 'vi_gt'))
  # The window is the whole virtual frame of the bias field, whose mean offset_mean_range sets, as for real
  # full frames (a smaller window sees a part of the field, with another mean).
  config = dataclasses.replace(degrade.DegradationConfig(), field_frame_size=ir.shape[1:3])
  _write_degraded_release(tmp_path, '0114_1609', ir, vi, config, np.random.default_rng(1))
  report = calibrate.calibrate_root(tmp_path)
  for statistic in ROBUST_STATISTICS:
    assert report['default_ranges'][statistic]['inside'], report['default_ranges'][statistic]


def test_real_sample_training_videos_measure_inside_the_default_ranges():
  report = calibrate.calibrate_root(shared_data('m3svd_sample'), max_frames=3, held_out=[HELD_OUT])
  assert sorted(report['videos']) == TRAIN_VIDEOS
  assert report['inputs']['skipped'] == {HELD_OUT: 'held out (--held_out)'}
  outside = {k: v for k, v in report['default_ranges'].items() if not v['inside']}
  assert not outside, outside


def test_held_out_videos_are_skipped_or_refused(known_release):
  with pytest.raises(sources.DataError, match='no train video'):
    calibrate.calibrate_root(known_release, held_out=['known'])
  with pytest.raises(ValueError, match='train videos only.*known held out'):
    calibrate.calibrate_root(known_release, videos=['known'], held_out=['known'])
  for clean, degraded in ((known_release / 'visible_Enhance' / 'known', known_release / 'visible_Blur' / 'known'),
                          (known_release / 'infrared_Enhance', known_release / 'infrared_noise')):
    with pytest.raises(ValueError, match='known is held out'):
      calibrate.calibrate_folders(clean, degraded, held_out=['known'])


def test_only_the_training_split_is_measured(known_release, tmp_path):
  shutil.copytree(known_release, tmp_path / 'train')
  shutil.copytree(known_release, tmp_path / 'test')
  for folder in (tmp_path / 'test').iterdir():
    (folder / 'known').rename(folder / 'other')
  report = calibrate.calibrate_root(tmp_path)
  assert list(report['videos']) == ['known'] and report['inputs']['split'] == 'train'
  assert report['inputs']['skipped'] == {'other': 'in the test split, not train'}
  assert list(calibrate.calibrate_root(tmp_path, split='test')['videos']) == ['other']
  with pytest.raises(ValueError, match='other in the test split'):
    calibrate.calibrate_root(tmp_path, videos=['known', 'other'])
  test = tmp_path / 'test'
  for clean, degraded in ((test / 'infrared_Enhance', test / 'infrared_noise'),
                          (test / 'visible_Enhance' / 'other', test / 'visible_Blur' / 'other')):
    with pytest.raises(ValueError, match='is in the test split'):
      calibrate.calibrate_folders(clean, degraded)
  train = calibrate.calibrate_folders(tmp_path / 'train' / 'infrared_Enhance', tmp_path / 'train' / 'infrared_noise')
  assert list(train['videos']) == ['known']


def test_suggested_ranges_widen_the_measured_range():
  assert calibrate.suggest_range('infrared.pixel_std', 0.04, 0.05) == [0.026, 0.075]  # 0.0267 down, 0.075.
  assert calibrate.suggest_range('infrared.tone_knee', 0.15, 0.25) == [0.1, 0.375]
  # Gains widen their attenuation 1 - g: [0.01, 0.07] -> [0.006, 0.105].
  assert calibrate.suggest_range('visible.gain', 0.93, 0.99) == [0.895, 0.994]
  # Below the noise floor (half a grey level): the component is off.
  assert calibrate.suggest_range('infrared.row_std', 0.0003, 0.0005) == [0.0, 0.0]
