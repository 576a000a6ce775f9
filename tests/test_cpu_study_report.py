"""The study report's computed tables (scripts/cpu_study_report.py), on small hand-made evaluation records."""

import importlib.util
import json

import numpy as np
import pytest

from conftest import REPO
from vfusion_jax import evaluate


@pytest.fixture(scope='module')
def report():
  spec = importlib.util.spec_from_file_location('cpu_study_report', REPO / 'scripts' / 'cpu_study_report.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _summary(vif, flowd, ir_psnr=None, pixel_max_vif=None):
  """An eval.py summary with what the seed table reads: fusion means, restoration means, baselines."""
  fused = {'MI': 3.0, 'VIF': vif, 'SSIM': 0.6, 'Qabf': 0.5, 'flowD_fb': flowd}
  summary = {'mean': {evaluate.MODEL: fused},
             'restoration': {'mean': {'PSNR_ir_restored': ir_psnr, 'PSNR_vi_restored': 24.0,
                                      'PSNR_ir_input': 18.0, 'PSNR_vi_input': 23.5}}}
  if pixel_max_vif is not None:
    summary['mean'][evaluate.PIXEL_MAX] = {'MI': 2.5, 'VIF': pixel_max_vif, 'SSIM': 0.5, 'Qabf': 0.2,
                                          'flowD_fb': 9.0}
  return summary


def test_seed_table_mean_spread_and_goal_counts(report):
  vifs, w7, w2, ir = [0.45, 0.50, 0.38], [4.2, 4.9, 4.0], [4.5, 4.7, 4.4], [23.0, 17.0, 25.0]
  evals = {}
  for model, v, a, b, p in zip(['final', 'seed2', 'seed3'], vifs, w7, w2, ir):
    evals[f'{model}_frames_degraded_w7'] = _summary(v, a, p, pixel_max_vif=0.40 if model == 'final' else None)
    evals[f'{model}_frames_degraded_w2'] = _summary(v, b, p)
  assert [s for _, s in report.seed_models(evals)] == [report.STUDY_SEED, 2, 3]
  lines = report.seed_table(evals, 'frames', 'degraded').split('\n')
  spread = next(line for line in lines if line.startswith('| mean ± sd'))
  cells = [c.strip() for c in spread.split('|')[2:-1]]
  # Columns: MI VIF SSIM Qabf, PSNR IR, PSNR VI, flowD_fb w7, flowD_fb w2.
  assert cells[1] == f'{np.mean(vifs):.4f} ± {np.std(vifs, ddof=1):.4f}'
  assert cells[4] == f'{np.mean(ir):.4f} ± {np.std(ir, ddof=1):.4f}'
  assert cells[6] == f'{np.mean(w7):.4f} ± {np.std(w7, ddof=1):.4f}'
  met = [c.strip() for c in next(line for line in lines if line.startswith('| seeds meeting')).split('|')[2:-1]]
  assert met[1] == '2/3'  # VIF above the pixel max's 0.40: 0.45 and 0.50
  assert met[4] == '2/3'  # IR PSNR above the input's 18.0: 23 and 25
  assert met[6] == '2/3 (w7 ≤ w2)'  # 4.2 <= 4.5 and 4.0 <= 4.4; 4.9 > 4.7


def test_a_seeds_only_folder_joins_the_kept_record(report, tmp_path):
  """Seeds trained in another session: the kept record gives the study model's rows and bars, the folder the new
  seed's; a name in both is the folder's (a rerun replaces its old record)."""
  kept = {'final_frames_normal_w7': _summary(0.57, 3.7, pixel_max_vif=1.0),
          'final_frames_normal_w2': _summary(0.57, 4.1), 'seed2_frames_normal_w7': _summary(0.1, 9.9)}
  for name, summary in {'seed2_frames_normal_w7': _summary(0.61, 3.5),
                        'seed2_frames_normal_w2': _summary(0.61, 3.4)}.items():
    (tmp_path / 'eval' / name).mkdir(parents=True)
    (tmp_path / 'eval' / name / 'metrics.json').write_text(json.dumps(summary))
  evals = report.load_evals(tmp_path, kept)
  assert sorted(evals) == sorted({*kept, 'seed2_frames_normal_w2'})
  assert evals['seed2_frames_normal_w7']['mean'][evaluate.MODEL]['VIF'] == 0.61
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
          for line in report.seed_table(evals, 'frames', 'normal').split('\n')[2:]}
  assert rows[f'seed {report.STUDY_SEED}'][0] == '0.5700' and rows['seed 2'][0] == '0.6100'  # VIF
  assert rows['seed 2'][-2:] == ['3.5000', '3.4000']
  assert rows['goal bar: stretched pixel max'][0] == '1.0000'
  with pytest.raises(FileNotFoundError):
    report.load_evals(tmp_path / 'empty')


def test_clean_share_table_sets_the_arm_beside_its_own_seed(report):
  """The clean-share arm of seed 3 is compared with seed 3's recipe run (not the study model), has no pair
  column, and stays out of the seed list and its spread."""
  evals = {'final_frames_degraded_w7': _summary(0.47, 4.2, 23.0, pixel_max_vif=0.39),
           'seed3_frames_degraded_w7': _summary(0.48, 4.4, 25.0), 'seed3_frames_degraded_w2': _summary(0.48, 5.0, 25.0),
           'clean3_frames_degraded_w7': _summary(0.30, 3.9, 19.0)}
  assert report.clean_arm_seeds(evals) == [3]
  assert [s for _, s in report.seed_models(evals)] == [report.STUDY_SEED, 3]
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
          for line in report.clean_share_table(evals, 3, 'frames', 'degraded').split('\n')[2:]}
  recipe = f'{report.CLEAN_SHARE:.0%} clean clips (the recipe)'
  assert list(rows) == [recipe, 'every clip clean', 'goal bar: stretched pixel max / input PSNR']
  # Columns: MI VIF SSIM Qabf, PSNR IR, PSNR VI, flowD_fb w7.
  assert rows[recipe][1] == '0.4800' and rows[recipe][4] == '25.0000' and rows[recipe][6] == '4.4000'
  assert rows['every clip clean'][1] == '0.3000' and rows['every clip clean'][6] == '3.9000'
  assert len(rows['every clip clean']) == 7
  assert rows['goal bar: stretched pixel max / input PSNR'][1] == '0.3900'
  assert 'Clean share of stage 2, seed 3' in report.seed_section(evals)


def test_window_position_intensity_follows_the_official_windows(report, tmp_path):
  """20 frames in windows of 7 start at 0, 7 and 13; the official rule takes frame 13 from the last window
  (position 0), whose frames 14-19 are positions 1-6."""
  intensity = np.arange(20, dtype=np.float64) * 10.0
  folder = tmp_path / 'eval' / 'final_frames_normal_w7'
  folder.mkdir(parents=True)
  rows = ['method,video,frame,intensity'] + [f'{evaluate.MODEL},v,{f},{intensity[f]}' for f in range(20)]
  rows += [f'pixel_max,v,{f},0' for f in range(20)]
  (folder / 'metrics_per_frame.csv').write_text('\n'.join(rows) + '\n')
  profile = report.window_position_intensity(tmp_path, 'final_frames_normal_w7', 7)
  expected_frames = [[0, 7, 13], [1, 8, 14], [2, 9, 15], [3, 10, 16], [4, 11, 17], [5, 12, 18], [6, 19]]
  np.testing.assert_allclose(profile, [intensity[f].mean() for f in expected_frames])
  assert report.window_position_intensity(tmp_path, 'missing', 7) is None
