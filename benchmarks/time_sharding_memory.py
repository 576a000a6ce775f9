r"""Per-device memory of the train step when the clip's frames are sharded n ways ('time' mesh axis).

  python benchmarks/time_sharding_memory.py                       # the T x n table of docs/scaling.md
  python benchmarks/time_sharding_memory.py --frames=8,16 --shards=1,8 --height=64 --width=64   # quick

Compiles (does not run) the released train step, B=1, on a (1, n) ('data', 'time') mesh of 8 forced CPU
devices, with the project's logical axis rules, and reads XLA's memory analysis of the per-device program:
arguments + outputs + temporaries - donated aliases = the bytes live on one device during the step. The
parameters and optimiser state (replicated, donated, so counted once) are in that number; the temporaries
(activations kept for the backward pass, gradients, workspace) are what time sharding divides. Runs in a
subprocess per call of this script (the device count must be set before JAX starts). Prints a Markdown table;
--json writes the numbers.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
NUM_DEVICES = 8


def measure(frames: int, shards: int, height: int, width: int, remat: bool, variant: str,
            dtype: str = 'float32') -> dict:
  """Compiles the train step for one (T, n) and returns XLA's per-device memory analysis."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import m3svd  # pylint: disable=g-import-not-at-top
  from vfusion_jax import sharding, train_lib  # pylint: disable=g-import-not-at-top

  config = m3svd.get_config(variant)
  config.remat = remat
  config.model.dtype = dtype
  config.batch_size, config.num_frames = 1, frames
  mesh = sharding.make_mesh({'data': 1, 'time': shards}, jax.devices()[:shards])
  setup = train_lib.ShardedTrainStep(config, mesh)
  state, batch = setup.state_targets(), setup.batch_targets(height, width)
  start = time.perf_counter()
  compiled = setup.compile(state, batch)
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  sizes = {k: int(getattr(mem, f'{k}_size_in_bytes', 0) or 0) for k in ('argument', 'output', 'temp', 'alias')}
  live = sizes['argument'] + sizes['output'] + sizes['temp'] - sizes['alias']
  state_bytes = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state))
  return dict(variant=variant, frames=frames, shards=shards, height=height, width=width, remat=remat, dtype=dtype,
              compile_s=compile_s,
              live_gib=live / GIB, temp_gib=sizes['temp'] / GIB, state_gib=float(state_bytes) / GIB, bytes=sizes)


def _child(args) -> None:
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={NUM_DEVICES}')
  os.environ['JAX_PLATFORMS'] = 'cpu'
  sys.path.insert(0, REPO)
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_xla_flags()
  for frames in args.frames:
    for shards in args.shards:
      if frames % shards:
        continue
      result = measure(frames, shards, args.height, args.width, args.remat, args.variant, args.dtype)
      print(json.dumps(result), flush=True)


def markdown(results: list) -> str:
  shards = sorted({r['shards'] for r in results})
  frames = sorted({r['frames'] for r in results})
  by = {(r['frames'], r['shards']): r for r in results}
  first = results[0]
  lines = [f"Train step, {first['variant'] or 'released'} network, B=1, {first['height']}x{first['width']}, "
           f"remat={first['remat']}, {first.get('dtype', 'float32')}: "
           'XLA live GiB per device (arguments + outputs + temporaries - donated; parameters and Adam state '
           f"{first['state_gib']:.2f} GiB of it) / temporaries GiB", '',
           '| T \\ n (time shards) | ' + ' | '.join(str(n) for n in shards)
           + ' | temporaries shrink, first to last n |',
           '|---|' + '---:|' * (len(shards) + 1)]
  for t in frames:
    cells = [f"{by[(t, n)]['live_gib']:.2f} / {by[(t, n)]['temp_gib']:.2f}" if (t, n) in by else '-'
             for n in shards]
    done = [n for n in shards if (t, n) in by]
    shrink = by[(t, done[0])]['temp_gib'] / by[(t, done[-1])]['temp_gib'] if len(done) > 1 else 1.0
    lines.append(f'| {t} | ' + ' | '.join(cells) + f' | {shrink:.1f}x ({done[0]} -> {done[-1]}) |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--frames', default='8,16,32', type=lambda s: [int(v) for v in s.split(',')])
  parser.add_argument('--shards', default='1,2,4,8', type=lambda s: [int(v) for v in s.split(',')])
  parser.add_argument('--height', type=int, default=128)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--remat', action='store_true')
  parser.add_argument('--variant', default='')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='computation dtype (config.model.dtype); parameters stay float32')
  parser.add_argument('--json')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args)
    return
  import subprocess  # pylint: disable=g-import-not-at-top
  command = [sys.executable, os.path.abspath(__file__), '--child'] + sys.argv[1:]
  import tempfile  # pylint: disable=g-import-not-at-top
  results = []
  with tempfile.TemporaryFile('w+') as errors:
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True) as child:
      for line in child.stdout:  # one JSON line per compiled case, as it finishes
        if line.startswith('{'):
          results.append(json.loads(line))
          print(line.strip(), flush=True)
    if child.returncode or not results:
      errors.seek(0)
      sys.exit(f'the measurement failed:\n{errors.read()[-4000:]}')
  print(markdown(results))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
