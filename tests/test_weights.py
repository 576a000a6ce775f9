"""The shipped study weights (weights/m3svd_tiny, docs/cpu_study.md): they load as the export writes them and,
on the first official window of held-out real video, fuse better than the stretched pixel max, restore, and
fuse a window of 7 more steadily than frame pairs.

The held-out check is what an outside user does: ``checkpoint.load_inference_checkpoint``, ``inference.fuse`` on
7 frames, ``metrics.quantize_fused`` applied alike to the network and to the pixel max of the inputs (computed
here with numpy), ``metrics.fusion_metrics`` against the clean frames.
"""

import json

import jax
import numpy as np
import pytest

from conftest import REPO
from conftest import SHARED_DATA
from conftest import shared_data
from vfusion_jax import checkpoint
from vfusion_jax import inference
from vfusion_jax import metrics
from vfusion_jax import models
from vfusion_jax.configs import m3svd

WEIGHTS = REPO / 'weights' / 'm3svd_tiny'
HELD_OUT = 'm3svd_sample/{stream}/0111_1716'
WINDOW = 7  # the official window
TINY_PARAMETERS = 1_557_218
PAIRS = 3  # frames 0-5 fused as the pairs (0, 1), (2, 3), (4, 5)


@pytest.fixture(scope='module')
def weights():
  params, model_config = checkpoint.load_inference_checkpoint(WEIGHTS)
  return params, model_config


@pytest.fixture(scope='module')
def held_out_window(weights):
  """Degraded and clean frames 0-6 of held-out 0111_1716, and the network's outputs in both settings."""
  shared_data('m3svd_sample')
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def read(stream, channels):
    path = SHARED_DATA / HELD_OUT.format(stream=stream)
    frames = [np.asarray(Image.open(p).convert('RGB')) for p in sorted(path.glob('*.png'))[:WINDOW]]
    return np.stack(frames)[..., :channels]

  clip = {'ir_lq': read('infrared_noise', 1), 'vi_lq': read('visible_Blur', 3),
          'ir_gt': read('infrared_Enhance', 1), 'vi_gt': read('visible_Enhance', 3)}
  params, model_config = weights
  outputs = {setting: inference.fuse(params, model_config, clip[f'ir_{key}'] / 255.0, clip[f'vi_{key}'] / 255.0)
             for setting, key in (('degraded', 'lq'), ('normal', 'gt'))}
  return clip, outputs


@pytest.fixture(scope='module')
def pair_fusion(weights, held_out_window):
  """Frames 0-5 fused as frame pairs (T = 2), both settings in one batch: {setting: (6, H, W, 3) floats}."""
  clip, _ = held_out_window
  params, model_config = weights
  frames = 2 * PAIRS

  def pairs(stream):  # (2 settings x PAIRS, 2, H, W, C): degraded pairs, then clean pairs
    both = np.concatenate([clip[f'{stream}_lq'][:frames], clip[f'{stream}_gt'][:frames]])
    return both.reshape(2 * PAIRS, 2, *both.shape[1:]) / 255.0

  fused = inference.fuse(params, model_config, pairs('ir'), pairs('vi'))['fusion']
  fused = fused.reshape(2, frames, *fused.shape[2:])
  return {'degraded': fused[0], 'normal': fused[1]}


def _mean_metrics(fused_float, clip):
  rows = [metrics.fusion_metrics(metrics.quantize_fused(f), ir, vi)
          for f, ir, vi in zip(fused_float, clip['ir_gt'], clip['vi_gt'])]
  return {k: np.mean([r[k] for r in rows]) for k in ('MI', 'VIF', 'SSIM', 'Qabf')}


def _pixel_max(ir, vi):
  return np.maximum(np.repeat(ir, 3, axis=-1), vi).astype(np.float32) / 255.0


def _psnr(x, y):
  return 10 * np.log10(255.0 ** 2 / np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))


def test_weights_load_as_the_tiny_study_network(weights):
  params, model_config = weights
  assert dict(model_config) == dict(m3svd.tiny_model())
  assert sum(np.size(x) for x in jax.tree.leaves(params)) == TINY_PARAMETERS
  info = json.loads((WEIGHTS / checkpoint.METADATA_FILE).read_text())
  assert info['format_version'] == checkpoint.FORMAT_VERSION
  models.VideoFusion(**model_config)  # the stored config builds the network


def test_degraded_setting_fuses_better_than_pixel_max_and_restores(held_out_window):
  clip, outputs = held_out_window
  out = outputs['degraded']
  fused = _mean_metrics(out['fusion'], clip)
  baseline = _mean_metrics(_pixel_max(clip['ir_lq'], clip['vi_lq']), clip)
  for key in ('MI', 'VIF', 'SSIM', 'Qabf'):
    assert fused[key] > baseline[key], (key, fused, baseline)
  for key, channels in (('ir', 1), ('vi', 3)):
    restored = metrics.to_uint8(out[key])[..., :channels]
    assert _psnr(restored, clip[f'{key}_gt']) > _psnr(clip[f'{key}_lq'], clip[f'{key}_gt']), key


@pytest.mark.xfail(strict=True, reason='a goal the study model misses (docs/cpu_study.md): with clean inputs it '
                   'loses to the stretched pixel max; strict, so a model that meets it must update this test')
def test_normal_setting_fuses_better_than_pixel_max(held_out_window):
  clip, outputs = held_out_window
  fused = _mean_metrics(outputs['normal']['fusion'], clip)
  baseline = _mean_metrics(_pixel_max(clip['ir_gt'], clip['vi_gt']), clip)
  for key in ('VIF', 'SSIM', 'Qabf'):
    assert fused[key] > baseline[key], (key, fused, baseline)


@pytest.mark.parametrize('setting', ['degraded', 'normal'])
def test_a_window_of_7_is_steadier_than_frame_pairs(held_out_window, pair_fusion, setting):
  """The temporal goal on frames 0-5: flowD_fb (guide: the clean visible frames) of the window of 7 is no higher
  than that of the same frames fused in pairs. A model trained on clips of T = 4 fails it: it fuses positions
  2-4 of a window of 7 brighter than the others (docs/cpu_study.md)."""
  clip, outputs = held_out_window
  frames = 2 * PAIRS
  window = np.stack([metrics.quantize_fused(f) for f in outputs[setting]['fusion'][:frames]])
  pairs = np.stack([metrics.quantize_fused(f) for f in pair_fusion[setting]])
  guide = clip['vi_gt'][:frames]
  window_flowd, pairs_flowd = metrics.flowd_fb(window, guide), metrics.flowd_fb(pairs, guide)
  assert window_flowd <= pairs_flowd, (window_flowd, pairs_flowd)
