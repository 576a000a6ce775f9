r"""Compile time of the released network, cold and from the project's persistent compilation cache.

  python benchmarks/bench_compile.py                                  # forward at 480x640, T=7
  python benchmarks/bench_compile.py --mode=train --height=128 --width=128 --frames=6

Runs the same compilation in two fresh processes that share an empty cache folder (vfusion_jax.runtime
.enable_compilation_cache, as train.py / eval.py / infer do): the first compiles and writes the cache, the
second should find it. Reported per process: trace + lower seconds, compile seconds (XLA, or the cache
lookup), and whether the second hit the cache (its compile time collapses). Nothing is executed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(args) -> dict:
  sys.path.insert(0, REPO)
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_xla_flags()
  runtime.enable_compilation_cache(args.cache_dir)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import m3svd  # pylint: disable=g-import-not-at-top
  from vfusion_jax import optim, train_lib  # pylint: disable=g-import-not-at-top

  config = m3svd.get_config(args.variant)
  model = train_lib.create_model(config)
  clip = lambda c: jax.ShapeDtypeStruct((1, args.frames, args.height, args.width, c), np.float32)
  start = time.perf_counter()
  if args.mode == 'forward':
    params = jax.eval_shape(model.init, jax.random.key(0), clip(1), clip(3))['params']
    lowered = jax.jit(model.apply).lower({'params': params}, clip(1), clip(3))
  else:
    tx = optim.make_optimizer(config)
    step = train_lib.make_train_step(model, tx, config.loss, optim.make_schedule(config))
    state = jax.eval_shape(lambda r: train_lib.init_state(model, tx, r, config), jax.random.key(0))
    batch = {'ir_lq': clip(1), 'vi_lq': clip(3), 'ir_gt': clip(1), 'vi_gt': clip(3)}
    lowered = jax.jit(step, donate_argnums=0).lower(state, batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  lowered.compile()
  return dict(lower_s=lower_s, compile_s=time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mode', choices=('forward', 'train'), default='forward')
  parser.add_argument('--variant', default='')
  parser.add_argument('--frames', type=int, default=7)
  parser.add_argument('--height', type=int, default=480)
  parser.add_argument('--width', type=int, default=640)
  parser.add_argument('--cache_dir', help=argparse.SUPPRESS)
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print('RESULT ' + json.dumps(_child(args)))
    return
  runs = []
  with tempfile.TemporaryDirectory() as cache_dir:
    for label in ('cold (empty cache)', 'warm (second process)'):
      command = [sys.executable, os.path.abspath(__file__), '--child', f'--cache_dir={cache_dir}'] + sys.argv[1:]
      done = subprocess.run(command, capture_output=True, text=True, check=False)
      lines = [l for l in done.stdout.splitlines() if l.startswith('RESULT ')]
      if done.returncode or not lines:
        sys.exit(f'the compilation failed:\n{done.stderr[-4000:]}')
      runs.append(dict(json.loads(lines[-1][len('RESULT '):]), run=label))
    entries = sum(len(files) for _, _, files in os.walk(cache_dir))
  print(f'{args.mode} {args.variant or "released"} T={args.frames} {args.height}x{args.width}; '
        f'cache entries written: {entries}\n')
  print('| run | trace + lower (s) | compile (s) |\n|---|---:|---:|')
  for r in runs:
    print(f"| {r['run']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} |")


if __name__ == '__main__':
  main()
