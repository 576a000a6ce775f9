r"""Forward-pass benchmark of the Flax VideoFusion network on this machine.

  python benchmarks/bench_model.py                       # released config, T=7, 128x128 240x320 480x640
  python benchmarks/bench_model.py --sizes 128x128 --config tiny --repeats 3
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 python benchmarks/bench_model.py

Each size runs in its own subprocess so that peak resident memory (ru_maxrss) is that size's alone. Reported:
jit compile time (lower + compile), forward seconds per clip and per frame (median of --repeats after one
warm-up call), achieved GFLOP/s from XLA's cost analysis of the compiled forward, peak RSS. Prints a Markdown
table to paste into docs/benchmarks.md.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _measure(config_variant: str, frames: int, height: int, width: int, repeats: int, dtype: str) -> dict:
  sys.path.insert(0, REPO)
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_xla_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import m3svd  # pylint: disable=g-import-not-at-top
  from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top
  from vfusion_jax.models import VideoFusion  # pylint: disable=g-import-not-at-top

  cfg = m3svd.get_config(config_variant).model
  cfg.dtype = dtype
  model = VideoFusion(**cfg)
  rng = np.random.default_rng(0)
  ir = jnp.asarray(rng.uniform(size=(1, frames, height, width, 1)).astype(np.float32))
  vi = jnp.asarray(rng.uniform(size=(1, frames, height, width, 3)).astype(np.float32))
  params = jax.jit(model.init)(jax.random.key(0), ir[:, :2, :8, :8], vi[:, :2, :8, :8])['params']
  t0 = time.perf_counter()
  compiled = jax.jit(model.apply).lower({'params': params}, ir, vi).compile()
  compile_s = time.perf_counter() - t0
  flops = train_lib.compiled_flops(compiled)
  jax.block_until_ready(compiled({'params': params}, ir, vi))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled({'params': params}, ir, vi))
    times.append(time.perf_counter() - t0)
  clip_s = statistics.median(times)
  return dict(size=f'{height}x{width}', frames=frames, compile_s=compile_s, clip_s=clip_s,
              frame_s=clip_s / frames, gflop_per_frame=flops / frames / 1e9, gflops=flops / clip_s / 1e9,
              peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, times=times)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', default='128x128,240x320,480x640', help='comma-separated HxW list')
  parser.add_argument('--frames', type=int, default=7)
  parser.add_argument('--config', default='', help="variant of configs/m3svd.py ('' = released, 'tiny')")
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', default=None, help='also write the results to this JSON file')
  parser.add_argument('--_child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args._child:  # pylint: disable=protected-access
    h, w = (int(v) for v in args._child.split('x'))  # pylint: disable=protected-access
    print(json.dumps(_measure(args.config, args.frames, h, w, args.repeats, args.dtype)))
    return

  allocator = os.environ.get('GLIBC_TUNABLES', 'glibc default')
  sys.path.insert(0, REPO)
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  results = []
  for size in args.sizes.split(','):
    cmd = [sys.executable, __file__, '--_child', size, '--frames', str(args.frames), '--config', args.config,
           '--dtype', args.dtype, '--repeats', str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    results.append(json.loads(out))
    print(f'done {size}: {results[-1]["clip_s"]:.2f} s/clip', file=sys.stderr)

  print(f'\nconfig={args.config or "released"} dtype={args.dtype} T={args.frames} B=1, '
        f'allocator: {allocator}, XLA flags: {os.environ.get("XLA_FLAGS") or " ".join(runtime.CPU_XLA_FLAGS)}, '
        f'jax {__import__("jax").__version__}, {os.cpu_count()} CPUs\n')
  print('| H×W | compile (s) | s/clip | s/frame | GFLOP/frame (XLA) | GFLOP/s | peak RSS (GiB) |')
  print('|---|---|---|---|---|---|---|')
  for r in results:
    print(f'| {r["size"]} | {r["compile_s"]:.1f} | {r["clip_s"]:.2f} | {r["frame_s"]:.3f} | '
          f'{r["gflop_per_frame"]:.1f} | {r["gflops"]:.1f} | {r["peak_rss_gib"]:.2f} |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(allocator=allocator, config=args.config, dtype=args.dtype, results=results), f, indent=2)


if __name__ == '__main__':
  main()
