r"""Input-pipeline throughput at the training shape, against what the train step consumes.

  python benchmarks/bench_data.py                                 # M3SVD sample records built in a temp dir
  python benchmarks/bench_data.py --data_dir=D --workers=0,1,2 --batch_sizes=12,3 --batches=4
  python benchmarks/bench_data.py --train_step_batch_sizes=1 --train_step_crop=64   # + the train step (minutes)

Reads the M3SVD TFDS records (default config: 8-frame chunks of 640x480 frames, zlib) with
``pipeline.train_dataset`` at the released training shape (T=6 frames, 128x128 crops; global batch 12 = 4
devices x 3) and ``pipeline.make_iterator`` with 0, 1, 2 grain worker processes, in three modes:
'synthetic' (on-the-fly blur + stripe noise), 'synthetic-skiplq' (the same, reading the records with
``tfds.decode.SkipDecoding`` for the unused LQ frames) and 'dataset' (the release's LQ frames). Reported: clips
per second after a warm-up batch (worker start-up is reported apart) for each --clips_per_chunk (clips drawn
from one decoded chunk), the records read per clip (counted in the training process, so with 0 workers), the
per-clip cost of the record read and of the clip sampler, and, with --train_step_batch_sizes (and
--train_step_crop), seconds per released train step (jit, one process) for the ratio of pipeline supply to
train-step demand. Prints Markdown for docs/benchmarks.md.
"""

import argparse
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class _Records:
  data_dir: str
  name: str  # TFDS name, e.g. 'm3svd' or 'm3svd/nodegraded'
  folder: pathlib.Path  # the version folder holding the ArrayRecord files


def _records(args) -> tuple[_Records, float]:
  """Builds the M3SVD records from --manual_dir (unless --data_dir has them); returns them and the build s."""
  sys.path.insert(0, str(REPO))
  from vfusion_jax.data import build  # pylint: disable=g-import-not-at-top
  data_dir = args.data_dir or tempfile.mkdtemp(prefix='bench_data_')
  t0 = time.perf_counter()
  overrides = {} if args.degraded_frames else {'degraded_frames': False}
  builder = build.build(args.manual_dir, data_dir, **overrides)
  seconds = time.perf_counter() - t0
  config = builder.builder_config.name
  name = 'm3svd' if config == build.DEFAULT_CONFIG_NAME else f'm3svd/{config}'
  return _Records(data_dir, name, pathlib.Path(builder.data_dir)), seconds


def _source(records: _Records, skip_lq: bool):
  """The train split; ``skip_lq`` leaves the degraded frames undecoded (synthetic mode never reads them)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  decoders = {key: tfds.decode.SkipDecoding() for key in LQ_KEYS} if skip_lq else None
  return tfds.data_source(records.name, split='train', data_dir=records.data_dir, decoders=decoders)


def _component_costs(records: _Records) -> dict:
  """Seconds per clip of the record read (with and without LQ) and of the clip sampler (one process)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vfusion_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  costs = {}
  for skip_lq in (True, False):
    source = _source(records, skip_lq)
    indices = [i % len(source) for i in range(COMPONENT_CLIPS)]
    t0 = time.perf_counter()
    examples = [source[i] for i in indices]
    costs['read_skiplq_s' if skip_lq else 'read_s'] = (time.perf_counter() - t0) / len(indices)
  rng = np.random.default_rng(SEED)
  has_lq = all(np.asarray(example[key]).shape[0] > 0 for example in examples for key in LQ_KEYS)
  for mode in pipeline.DEGRADATION_MODES if has_lq else ('synthetic',):
    sampler = pipeline.ClipSampler(NUM_FRAMES, CROP_SIZE, degradation=mode)
    t0 = time.perf_counter()
    for example in examples:
      sampler.random_map(example, rng)
    costs[f'sampler_{mode}_s'] = (time.perf_counter() - t0) / len(examples)
  return costs


class _CountingSource:
  """A source that counts its reads (the chunks a clip decodes; counted in this process only)."""

  def __init__(self, source):
    self._source = source
    self.reads = 0

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    self.reads += 1
    return self._source[index]


def _throughput(records: _Records, mode: str, batch_size: int, workers: int, batches: int,
                clips_per_chunk: int) -> dict:
  from vfusion_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  degradation, skip_lq = MODES[mode]
  source = _CountingSource(_source(records, skip_lq))
  dataset = pipeline.train_dataset(source, batch_size=batch_size, num_frames=NUM_FRAMES, crop_size=CROP_SIZE,
                                   seed=SEED, degradation=degradation, clips_per_chunk=clips_per_chunk)
  t0 = time.perf_counter()
  iterator = pipeline.make_iterator(dataset, num_workers=workers, batches_per_element=clips_per_chunk)
  try:
    next(iterator)
    first_s = time.perf_counter() - t0
    reads_before = source.reads
    t0 = time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    elapsed = time.perf_counter() - t0
    reads = source.reads - reads_before
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()
  assert batch['ir_gt'].shape == (batch_size, NUM_FRAMES, CROP_SIZE, CROP_SIZE, 1)
  return dict(mode=mode, batch_size=batch_size, workers=workers, clips_per_chunk=clips_per_chunk,
              first_batch_s=first_s, batch_s=elapsed / batches, clips_per_s=batches * batch_size / elapsed,
              reads_per_clip=reads / (batches * batch_size) if workers == 0 else None)


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


def _markdown(costs: dict, rows: list, steps: list, build_s: float, records: _Records, num_records: int,
              record_mib: float) -> str:
  dataset_lq = (f'with dataset LQ {costs["sampler_dataset_s"] * 1e3:.0f} ms' if 'sampler_dataset_s' in costs
                else 'no dataset LQ in these records')
  lines = [
      f'Records: {records.name} (8-frame chunks of 640x480, zlib) of --manual_dir, {num_records} examples, '
      f'{record_mib:.1f} MiB per record; built in {build_s:.1f} s.',
      f'Per clip, one process: record read + decode {costs["read_s"] * 1e3:.0f} ms '
      f'({costs["read_skiplq_s"] * 1e3:.0f} ms leaving the LQ frames undecoded); clip sampler '
      f'(window, crop, to float) + synthetic degradation {costs["sampler_synthetic_s"] * 1e3:.0f} ms; '
      f'{dataset_lq}.',
      '',
      '| mode | batch | clips per chunk | workers | first batch (s) | s / batch | clips / s | records read '
      'per clip | MiB read per clip |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    reads = row['reads_per_clip']
    read_text = ('-', '-') if reads is None else (f'{reads:.2f}', f'{reads * record_mib:.1f}')
    lines.append(f'| {row["mode"]} | {row["batch_size"]} | {row["clips_per_chunk"]} | {row["workers"]} | '
                 f'{row["first_batch_s"]:.1f} | {row["batch_s"]:.2f} | {row["clips_per_s"]:.1f} | '
                 f'{read_text[0]} | {read_text[1]} |')
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
  parser.add_argument('--nodegraded_frames', dest='degraded_frames', action='store_false',
                      help='build the records without the degraded frames (builder config degraded_frames=False)')
  parser.add_argument('--clips_per_chunk', default='1,8',
                      help='comma-separated clips drawn from each decoded chunk (pipeline.train_dataset)')
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
  records, build_s = _records(args)
  num_records = len(_source(records, skip_lq=False))
  record_files = records.folder.glob('*-train.array_record*')
  record_mib = sum(f.stat().st_size for f in record_files) / num_records / 2**20
  print(f'records: {num_records} examples of {records.name} in {records.data_dir}', file=sys.stderr)
  costs = _component_costs(records)
  print(json.dumps(costs), file=sys.stderr)
  rows = []
  for mode in args.modes.split(','):
    for batch_size in (int(b) for b in args.batch_sizes.split(',')):
      for clips_per_chunk in (int(k) for k in args.clips_per_chunk.split(',')):
        for workers in (int(w) for w in args.workers.split(',')):
          rows.append(_throughput(records, mode, batch_size, workers, args.batches, clips_per_chunk))
          print(json.dumps(rows[-1]), file=sys.stderr)
  steps = [_train_step(int(b), args.train_step_crop, args.train_step_remat)
           for b in args.train_step_batch_sizes.split(',') if b]
  for step in steps:
    print(json.dumps(step), file=sys.stderr)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(costs=costs, rows=rows, train_steps=steps,
                                                       build_s=build_s), indent=2))
  print(_markdown(costs, rows, steps, build_s, records, num_records, record_mib))


if __name__ == '__main__':
  main()
