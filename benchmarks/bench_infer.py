r"""Benchmarks streaming inference (frames/s, peak memory vs video length) and the evaluation metrics per frame.

  python benchmarks/bench_infer.py --checkpoint CKPT                      # 480x640, 150 and 600 frames
  python benchmarks/bench_infer.py --checkpoint CKPT --frames 14,42       # a short run

For each length it writes a synthetic registered IR/visible mp4 pair (a textured scene panning by one pixel per
frame, so every frame differs), fuses it with ``inference.fuse_video`` (what ``vfusion-infer`` runs, set up as
the program sets itself up) in a fresh child process and reports: the wall time (including start-up, checkpoint
load and XLA compilation), the steady frames/s (``InferResult.frames_per_sec``: the progress line's rate,
counted from the first finished frame), and the child's peak resident memory (its ``getrusage``). Bounded
memory means the peak does not grow with the number of frames. Then it times the metrics of ``eval.py`` on one frame
(the real M3SVD sample if present, else synthetic frames).
"""

import argparse
import json
import multiprocessing
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from vfusion_jax import evaluate, metrics  # pylint: disable=g-import-not-at-top,g-bad-import-order
from vfusion_jax.data import video_io  # pylint: disable=g-import-not-at-top

SAMPLE = REPO.parent / 'shared' / 'data' / 'm3svd_sample'
SAMPLE_VIDEO = '0111_1716'
KIB = 1024
FPS = 30
PAN_PX_PER_FRAME = 1
TEXTURE_SMOOTHING = 8  # Box-filter passes over the noise texture: a smooth, natural-looking scene.


def _texture(rng, height, width):
  x = rng.random((height, width))
  for _ in range(TEXTURE_SMOOTHING):
    x = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 5
  x = (x - x.min()) / (x.max() - x.min())
  return x


def write_pair(folder: pathlib.Path, num_frames: int, height: int, width: int) -> tuple[pathlib.Path, ...]:
  """A synthetic IR/visible mp4 pair of ``num_frames`` frames, written frame by frame."""
  rng = np.random.default_rng(0)
  scene = _texture(rng, height, width + num_frames * PAN_PX_PER_FRAME)
  colour = np.stack([scene, np.roll(scene, 7, 0), np.roll(scene, 13, 1)], axis=-1)
  paths = folder / f'ir_{num_frames}.mp4', folder / f'vi_{num_frames}.mp4'
  with video_io.VideoWriter(paths[0], FPS) as ir, video_io.VideoWriter(paths[1], FPS) as vi:
    for t in range(num_frames):
      window = slice(t * PAN_PX_PER_FRAME, t * PAN_PX_PER_FRAME + width)
      ir.write(metrics.to_uint8(np.repeat(scene[:, window, None] ** 2, 3, axis=-1)))
      vi.write(metrics.to_uint8(colour[:, window]))
  return paths


def _fuse_in_child(checkpoint: str, ir: pathlib.Path, vi: pathlib.Path, output: pathlib.Path, window: int,
                   send) -> None:
  """Runs in a fresh process: sets up as vfusion-infer does, fuses, sends the steady rate and peak memory."""
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup_process(tuned_allocator=False)
  from vfusion_jax import inference, windows  # pylint: disable=g-import-not-at-top
  result = inference.fuse_video(ir, vi, output, checkpoint_dir=checkpoint, window_config=windows.WindowConfig(window),
                                overwrite=True, progress=False)
  send.send({'frames_per_s': result.frames_per_sec,
             'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB})  # KiB on Linux.


def run_infer(checkpoint: str, ir: pathlib.Path, vi: pathlib.Path, output: pathlib.Path, window: int) -> dict:
  """Fuses the pair in a spawned child process; returns wall time, steady frames/s and the child's peak RSS."""
  context = multiprocessing.get_context('spawn')
  receive, send = context.Pipe(duplex=False)
  started = time.monotonic()
  child = context.Process(target=_fuse_in_child, args=(checkpoint, ir, vi, output, window, send))
  child.start()
  send.close()  # The child holds the only sending end: recv() fails if it dies without sending.
  try:
    result = receive.recv()
  except EOFError:
    result = None
  child.join()
  seconds = time.monotonic() - started
  if child.exitcode or result is None:
    raise RuntimeError(f'fusion failed in the child process (exit code {child.exitcode}); its error is above')
  return {'wall_s': seconds, **result}


def _metric_frames(height: int, width: int):
  if (SAMPLE / 'visible_Enhance' / SAMPLE_VIDEO).is_dir():
    load = lambda folder, t: video_io.load_png(SAMPLE / folder / SAMPLE_VIDEO / f'{t:04d}.png')
    return ('real M3SVD 640x480', load('infrared_Enhance', 0), load('visible_Enhance', 0), load('visible_Blur', 0),
            load('visible_Enhance', 1))
  rng = np.random.default_rng(1)
  frames = [metrics.to_uint8(np.repeat(_texture(rng, height, width)[..., None], 3, -1)) for _ in range(4)]
  return (f'synthetic {width}x{height}', *frames)


def time_metrics(height: int, width: int, repeats: int) -> dict:
  """Seconds per frame of each metric group of eval.py (median of ``repeats``)."""
  name, ir, vi, fused, vi_next = _metric_frames(height, width)
  groups = {
      'fusion_metrics (EN MI SF SD VIF SSIM Qabf), one method': lambda: metrics.fusion_metrics(fused, ir, vi),
      'flowD_fb term (Farneback + warp), one method': lambda: metrics.flowd_fb_term(
          fused, vi, metrics.farneback_backward_flow(vi_next, vi)),
      'restoration PSNR + SSIM (IR and visible, restored and input)': lambda: evaluate.restoration_metrics(
          {'ir': ir, 'vi': fused}, {'ir': ir, 'vi': vi}, {'ir': ir, 'vi': vi}),
  }
  out = {'frames': name}
  for label, fn in groups.items():
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    out[label] = float(np.median(times))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', required=True, help='inference checkpoint directory')
  parser.add_argument('--frames', default='150,600', help='video lengths to run, comma-separated')
  parser.add_argument('--height', type=int, default=480)
  parser.add_argument('--width', type=int, default=640)
  parser.add_argument('--window', type=int, default=7)
  parser.add_argument('--metric_repeats', type=int, default=3)
  parser.add_argument('--workdir', default=None, help='where the videos go (default: a temporary folder)')
  parser.add_argument('--json', default=None, help='also write the results here')
  args = parser.parse_args()

  results = {'height': args.height, 'width': args.width, 'window': args.window, 'runs': []}
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(args.workdir or tmp)
    workdir.mkdir(parents=True, exist_ok=True)
    for num_frames in (int(n) for n in args.frames.split(',')):
      ir, vi = write_pair(workdir, num_frames, args.height, args.width)
      run = run_infer(args.checkpoint, ir, vi, workdir / f'fused_{num_frames}.mp4', args.window)
      run['num_frames'] = num_frames
      results['runs'].append(run)
      print(f'{num_frames} frames: {run["wall_s"]:.1f} s wall, {run["frames_per_s"]:.3f} frames/s steady, '
            f'peak RSS {run["peak_rss_mib"]:.0f} MiB', flush=True)
  results['metrics_s_per_frame'] = time_metrics(args.height, args.width, args.metric_repeats)

  print(f'\n| frames | wall s | steady frames/s | peak RSS MiB |  ({args.width}x{args.height}, T={args.window})')
  print('|---:|---:|---:|---:|')
  for run in results['runs']:
    print(f'| {run["num_frames"]} | {run["wall_s"]:.1f} | {run["frames_per_s"]:.3f} | {run["peak_rss_mib"]:.0f} |')
  print(f'\n| metric group ({results["metrics_s_per_frame"]["frames"]}) | s per frame |\n|---|---:|')
  for label, seconds in results['metrics_s_per_frame'].items():
    if label != 'frames':
      print(f'| {label} | {seconds:.3f} |')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  main()
