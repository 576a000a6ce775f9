r"""Input-pipeline throughput at the training shape, against what the train step consumes.

  python benchmarks/bench_data.py                                 # M3SVD sample records built in a temp dir
  python benchmarks/bench_data.py --data_dir=D --workers=0,1,2 --batch_sizes=12,3 --batches=4
  python benchmarks/bench_data.py --train_step_batch_sizes=1 --train_step_crop=64   # + the train step (minutes)

Reads the M3SVD TFDS records (default config: 8-frame chunks of 640x480 frames, zlib) with
``pipeline.train_dataset`` at the released training shape (T=6 frames, 128x128 crops; global batch 12 = 4
devices x 3) and ``pipeline.make_iterator`` with 0, 1, 2 grain worker processes, in three modes:
'synthetic' (on-the-fly blur + stripe noise), 'synthetic-skiplq' (the same, reading the records with
``tfds.decode.SkipDecoding`` for the unused LQ frames) and 'dataset' (the release's LQ frames). Reported: clips
per second after a warm-up batch (worker start-up is reported apart), the per-clip cost of the record read and
of the clip sampler, and, with --train_step_batch_sizes (and --train_step_crop), seconds per released train
step (jit, one process) for the ratio of pipeline supply to train-step demand. Prints Markdown for
docs/benchmarks.md.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MANUAL_DIR = REPO.parent / 'shared' / 'data' / 'm3svd_sample'
NUM_FRAMES = 6
CROP_SIZE = 128
SEED = 0
TRAIN_STEP_REPEATS = 2
COMPONENT_CLIPS = 12
LQ_KEYS = ('ir_lq', 'vi_lq')
# Benchmark modes: (degradation of pipeline.train_dataset, whether the records' LQ frames are left undecoded).
MODES = {'synthetic': ('synthetic', False), 'synthetic-skiplq': ('synthetic', True), 'dataset': ('dataset', False)}


def _records(args):
  """Builds the M3SVD records from --manual_dir (unless --data_dir has them); returns (data_dir, build s)."""
  sys.path.insert(0, str(REPO))
  from vfusion_jax.data import build  # pylint: disable=g-import-not-at-top
  data_dir = args.data_dir or tempfile.mkdtemp(prefix='bench_data_')
  t0 = time.perf_counter()
  build.build(args.manual_dir, data_dir)
  return data_dir, time.perf_counter() - t0


def _source(data_dir: str, skip_lq: bool):
  """The train split; ``skip_lq`` leaves the degraded frames undecoded (synthetic mode never reads them)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  decoders = {key: tfds.decode.SkipDecoding() for key in LQ_KEYS} if skip_lq else None
  return tfds.data_source('m3svd', split='train', data_dir=data_dir, decoders=decoders)


def _component_costs(data_dir: str) -> dict:
  """Seconds per clip of the record read (with and without LQ) and of the clip sampler (one process)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vfusion_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  costs = {}
  for skip_lq in (True, False):
    source = _source(data_dir, skip_lq)
    indices = [i % len(source) for i in range(COMPONENT_CLIPS)]
    t0 = time.perf_counter()
    examples = [source[i] for i in indices]
    costs['read_skiplq_s' if skip_lq else 'read_s'] = (time.perf_counter() - t0) / len(indices)
  rng = np.random.default_rng(SEED)
  for mode in pipeline.DEGRADATION_MODES:
    sampler = pipeline.ClipSampler(NUM_FRAMES, CROP_SIZE, degradation=mode)
    t0 = time.perf_counter()
    for example in examples:
      sampler.random_map(example, rng)
    costs[f'sampler_{mode}_s'] = (time.perf_counter() - t0) / len(examples)
  return costs


def _throughput(data_dir: str, mode: str, batch_size: int, workers: int, batches: int) -> dict:
  from vfusion_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  degradation, skip_lq = MODES[mode]
  dataset = pipeline.train_dataset(_source(data_dir, skip_lq), batch_size=batch_size, num_frames=NUM_FRAMES,
                                   crop_size=CROP_SIZE, seed=SEED, degradation=degradation)
  t0 = time.perf_counter()
  iterator = pipeline.make_iterator(dataset, num_workers=workers)
  try:
    next(iterator)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    elapsed = time.perf_counter() - t0
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()
  assert batch['ir_gt'].shape == (batch_size, NUM_FRAMES, CROP_SIZE, CROP_SIZE, 1)
  return dict(mode=mode, batch_size=batch_size, workers=workers, first_batch_s=first_s,
              batch_s=elapsed / batches, clips_per_s=batches * batch_size / elapsed)


def _train_step_child(batch_size: int, crop: int, remat: bool) -> dict:
  """Seconds per released train step on this machine (run in its own process)."""
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import m3svd  # pylint: disable=g-import-not-at-top
  from vfusion_jax import optim  # pylint: disable=g-import-not-at-top
  from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top

  config = m3svd.get_config()
  config.remat = remat
  model = train_lib.create_model(config)
  tx = optim.make_optimizer(config)
  step = jax.jit(train_lib.make_train_step(model, tx, config.loss, optim.make_schedule(config)))
  state = jax.jit(lambda r: train_lib.init_state(model, tx, r, config))(jax.random.key(0))
  shape = (batch_size, NUM_FRAMES, crop, crop)
  batch = {key: jnp.full((*shape, channels), 0.5, jnp.float32)
           for key, channels in (('ir_lq', 1), ('vi_lq', 3), ('ir_gt', 1), ('vi_gt', 3))}
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(TRAIN_STEP_REPEATS):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return dict(batch_size=batch_size, crop=crop, remat=remat, compile_and_first_s=first_s,
              step_s=statistics.median(times), times=times)


def _train_step(batch_size: int, crop: int, remat: bool) -> dict:
  command = [sys.executable, __file__, f'--_train_step_child={batch_size}', f'--train_step_crop={crop}']
  command += ['--train_step_remat'] * remat
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f'train-step measurement failed:\n{done.stderr[-3000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def _markdown(costs: dict, rows: list, steps: list, build_s: float, num_records: int) -> str:
  lines = [
      f'Records: M3SVD sample (3 videos x 20 frames, 640x480), default config (8-frame chunks, zlib), '
      f'{num_records} examples; built in {build_s:.1f} s.',
      f'Per clip, one process: record read + decode {costs["read_s"] * 1e3:.0f} ms '
      f'({costs["read_skiplq_s"] * 1e3:.0f} ms leaving the LQ frames undecoded); clip sampler '
      f'(window, crop, to float) + synthetic degradation {costs["sampler_synthetic_s"] * 1e3:.0f} ms, with '
      f'dataset LQ {costs["sampler_dataset_s"] * 1e3:.0f} ms.',
      '',
      '| mode | batch | workers | first batch (s) | s / batch | clips / s |',
      '|---|---|---|---|---|---|',
  ]
  for row in rows:
    lines.append(f'| {row["mode"]} | {row["batch_size"]} | {row["workers"]} | {row["first_batch_s"]:.1f} | '
                 f'{row["batch_s"]:.2f} | {row["clips_per_s"]:.1f} |')
  if steps:
    lines += ['', '| train step batch | crop | remat | compile + first step (s) | s / step | clips / s consumed |',
              '|---|---|---|---|---|---|']
    for step in steps:
      lines.append(f'| {step["batch_size"]} | {step["crop"]} | {step["remat"]} | '
                   f'{step["compile_and_first_s"]:.0f} | {step["step_s"]:.1f} | '
                   f'{step["batch_size"] / step["step_s"]:.2f} |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--manual_dir', default=str(DEFAULT_MANUAL_DIR), help='M3SVD folder to build from')
  parser.add_argument('--data_dir', default=None, help='TFDS data_dir (built there if absent)')
  parser.add_argument('--workers', default='0,1,2', help='comma-separated grain worker counts')
  parser.add_argument('--batch_sizes', default='12,3', help='comma-separated batch sizes')
  parser.add_argument('--modes', default=','.join(MODES), help=f'comma-separated modes of {list(MODES)}')
  parser.add_argument('--batches', type=int, default=4, help='timed batches per setting (after one warm-up)')
  parser.add_argument('--train_step_batch_sizes', default='', help='also time the train step at these batches')
  parser.add_argument('--train_step_remat', action='store_true',
                      help='time the train step with config.remat')
  parser.add_argument('--train_step_crop', type=int, default=CROP_SIZE,
                      help='crop size of the timed train step (the released 128 needs ~50 GB on CPU at batch 3)')
  parser.add_argument('--json', default=None, help='also write the raw numbers to this file')
  parser.add_argument('--_train_step_child', dest='train_step_child', type=int, default=None,
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.train_step_child is not None:
    print(json.dumps(_train_step_child(args.train_step_child, args.train_step_crop, args.train_step_remat)))
    return

  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (STACK.md A.4).
  data_dir, build_s = _records(args)
  num_records = len(_source(data_dir, skip_lq=False))
  print(f'records: {num_records} examples in {data_dir}', file=sys.stderr)
  costs = _component_costs(data_dir)
  print(json.dumps(costs), file=sys.stderr)
  rows = []
  for mode in args.modes.split(','):
    for batch_size in (int(b) for b in args.batch_sizes.split(',')):
      for workers in (int(w) for w in args.workers.split(',')):
        rows.append(_throughput(data_dir, mode, batch_size, workers, args.batches))
        print(json.dumps(rows[-1]), file=sys.stderr)
  steps = [_train_step(int(b), args.train_step_crop, args.train_step_remat)
           for b in args.train_step_batch_sizes.split(',') if b]
  for step in steps:
    print(json.dumps(step), file=sys.stderr)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(costs=costs, rows=rows, train_steps=steps,
                                                       build_s=build_s), indent=2))
  print(_markdown(costs, rows, steps, build_s, num_records))


if __name__ == '__main__':
  main()
