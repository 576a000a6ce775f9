"""Times the evaluation metrics on 640x480 frames and prints a small table.

Uses real M3SVD frames from ``../shared/data/m3svd_sample`` when present
(clean IR and visible, fused = their average), else synthetic textured frames.

Usage: python benchmarks/bench_metrics.py [--repeats 5] [--frames 5]
"""

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from vfusion_jax import metrics  # pylint: disable=g-import-not-at-top

HEIGHT, WIDTH = 480, 640
DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'm3svd_sample'
DEFAULT_VIDEO = '0111_1716'
SYNTHETIC_BLUR_SIGMA = 3.0
SYNTHETIC_SHIFT_PX = 2


def _synthetic_frames(num_frames, seed=0):
  """(T, H, W, 3) uint8 IR and visible clips with a steady horizontal pan."""
  rng = np.random.default_rng(seed)
  pad = SYNTHETIC_SHIFT_PX * num_frames
  clips = []
  for _ in range(2):
    field = ndimage.gaussian_filter(rng.uniform(0, 1, (HEIGHT, WIDTH + pad, 3)),
                                    (SYNTHETIC_BLUR_SIGMA, SYNTHETIC_BLUR_SIGMA, 0))
    field = metrics.quantize_fused(field)  # Min-max stretch to 0..255.
    clips.append(np.stack([field[:, pad - SYNTHETIC_SHIFT_PX * t:][:, :WIDTH]
                           for t in range(num_frames)]))
  return clips[0], clips[1], 'synthetic'


def _real_frames(data, video, num_frames):
  def load(folder):
    return np.stack([np.asarray(Image.open(data / folder / video / f'{t:04d}.png').convert('RGB'))
                     for t in range(num_frames)])
  return load('infrared_Enhance'), load('visible_Enhance'), f'M3SVD {video}'


def _time(fn, repeats):
  """Median and min wall time in ms after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times), min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5, help='timed calls per row')
  parser.add_argument('--frames', type=int, default=5, help='sequence length T for flowd_fb/tdiff')
  parser.add_argument('--data', type=pathlib.Path, default=DEFAULT_DATA, help='m3svd_sample folder')
  parser.add_argument('--video', default=DEFAULT_VIDEO)
  args = parser.parse_args()

  if (args.data / 'visible_Enhance' / args.video).is_dir():
    ir, vi, source = _real_frames(args.data, args.video, args.frames)
  else:
    ir, vi, source = _synthetic_frames(args.frames)
  fused = np.round((ir.astype(np.float64) + vi) / 2).astype(np.uint8)
  f0, a0, b0 = fused[0], ir[0], vi[0]

  rows = [
      ('fusion_metrics (all 9 keys)', lambda: metrics.fusion_metrics(f0, a0, b0), 1),
      ('  en', lambda: metrics.en(f0), 1),
      ('  mi (merged)', lambda: metrics.mi(f0, a0, b0), 1),
      ('  sf + sd', lambda: (metrics.sf(f0), metrics.sd(f0)), 1),
      ('  ssim (L=255)', lambda: metrics.ssim(f0, a0, b0), 1),
      ('  vif', lambda: metrics.vif(f0, a0, b0), 1),
      ('  qabf', lambda: metrics.qabf(f0, a0, b0), 1),
      (f'flowd_fb (T={args.frames})', lambda: metrics.flowd_fb(fused, vi), args.frames - 1),
      (f'tdiff (T={args.frames})', lambda: metrics.tdiff(fused), args.frames - 1),
  ]
  print(f'frames: {source}, {WIDTH}x{HEIGHT} RGB; {args.repeats} timed calls per row')
  print(f'{"call":<30} {"median ms":>10} {"min ms":>10} {"ms/frame|pair":>13}')
  for name, fn, per in rows:
    median, best = _time(fn, args.repeats)
    print(f'{name:<30} {median:>10.1f} {best:>10.1f} {median / per:>13.1f}')
  print('values:', {k: round(v, 4) for k, v in metrics.fusion_metrics(f0, a0, b0).items()})
  print(f'flowd_fb = {metrics.flowd_fb(fused, vi):.4f}, tdiff = {metrics.tdiff(fused):.4f}')


if __name__ == '__main__':
  main()
