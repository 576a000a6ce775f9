r"""Train-step benchmark: seconds per step and memory of the jitted VideoFusion train step on this machine.

  python benchmarks/bench_train.py                                         # every case below
  python benchmarks/bench_train.py --cases tiny --steps 3                  # a quick check of the script
  python benchmarks/bench_train.py --cases released_b1,released_b3_remat --json /tmp/bench_train.json
  python benchmarks/bench_train.py --cases released_b3,released_b3_remat --compile_only   # XLA memory only
  python benchmarks/bench_train.py --cases demo --set crop_size=64         # another demo setting

Cases (configs/m3svd.py with the batch, clip length, crop and remat overridden; per device, one CPU device):
  released_b3        the released per-device recipe: B=3, T=6, 128x128
  released_b3_remat  the same with config.remat=True (every block wrapped in nn.remat)
  released_b1        B=1, T=6, 128x128 (the official PyTorch step: 5.46 s, ~10 GiB peak on this machine)
  released_b1_remat  B=1 with remat
  tiny               configs/m3svd.py:tiny (B=2, T=3, 32x32, the small network)
  demo               configs/demo.py (the small network at the demo's batch, clip length and crop)

The step is train_lib's (loss, grads, clipped AdamW, finite check) jitted with the state donated, as train.py
runs it, fed random clips (the input pipeline is not timed). Each case runs in its own subprocess so that
peak resident memory (ru_maxrss) is that case's alone. Reported: compile time (lower + compile); median
seconds per step over --steps steps after one warm-up step, and the process's CPU seconds per step (on a
loaded machine, CPU s/step divided by the cores the step uses estimates the idle s/step); examples/s; XLA's
memory analysis of the compiled step (arguments + outputs + temporaries - donated aliases = the buffers live
during the step); peak RSS after compiling and at the end. A step whose XLA live bytes exceed the memory
available is compiled and analysed but not run. Prints a Markdown table to paste into docs/benchmarks.md.
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
GIB = 2**30
KIB = 2**10

RELEASED = dict(variant='', batch_size=3, num_frames=6, crop_size=128)
CASES = {
    'released_b3': dict(RELEASED, remat=False),
    'released_b3_remat': dict(RELEASED, remat=True),
    'released_b1': dict(RELEASED, batch_size=1, remat=False),
    'released_b1_remat': dict(RELEASED, batch_size=1, remat=True),
    'tiny': dict(variant='tiny', remat=False),  # batch, frames and crop of the tiny config
    'demo': dict(config='demo', remat=False),
}
# The official PyTorch training step on this machine (T=6, 128x128, AdamW, L1 loss), B=1.
TORCH_B1_STEP_S = 5.46
TORCH_B1_PEAK_GIB = 10.0
MACHINE_MEMORY_GIB = 24.0


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / GIB


def _available_bytes() -> float:
  """MemAvailable of /proc/meminfo (Linux), or infinity where it cannot be read."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return float(line.split()[1]) * KIB
  except OSError:
    pass
  return float('inf')


def _measure(case: str, steps: int, overrides: list[str], compile_only: bool) -> dict:
  """Compiles the train step of ``case`` (with ``key=value`` overrides) in this process, and times it.

  The step is not run when ``compile_only`` or when XLA's live bytes exceed the memory available now (running
  it would only get this process, or a neighbour's, killed for memory); ``skipped`` then says why.
  """
  sys.path.insert(0, REPO)
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_xla_flags()  # the XLA:CPU flags train.py runs with, before JAX starts its backend
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import demo  # pylint: disable=g-import-not-at-top
  from configs import m3svd  # pylint: disable=g-import-not-at-top
  from vfusion_jax import optim  # pylint: disable=g-import-not-at-top
  from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top

  spec = CASES[case]
  config = demo.get_config() if spec.get('config') == 'demo' else m3svd.get_config(spec['variant'])
  for key in ('batch_size', 'num_frames', 'crop_size', 'remat'):
    if key in spec:
      config[key] = spec[key]
  for override in overrides:
    key, value = override.split('=', 1)
    current = config[key]
    config[key] = value.lower() in ('1', 'true', 'yes') if isinstance(current, bool) else type(current)(value)
  b, t, s = config.batch_size, config.num_frames, config.crop_size
  model = train_lib.create_model(config)
  tx = optim.make_optimizer(config)
  step_fn = train_lib.make_train_step(model, tx, config.loss, optim.make_schedule(config))
  state = jax.jit(lambda r: train_lib.init_state(model, tx, r, config))(jax.random.key(config.seed))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  rng = np.random.default_rng(0)
  clip = lambda c: jax.device_put(rng.uniform(size=(b, t, s, s, c)).astype(np.float32))
  batch = {'ir_lq': clip(1), 'vi_lq': clip(3), 'ir_gt': clip(1), 'vi_gt': clip(3)}

  jitted = jax.jit(step_fn, donate_argnums=0)
  start = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  rss_after_compile = _peak_rss_gib()
  memory = compiled.memory_analysis()
  mem = {k: int(getattr(memory, f'{k}_size_in_bytes', 0) or 0) for k in
         ('argument', 'output', 'temp', 'alias', 'generated_code')} if memory is not None else {}
  live = mem['argument'] + mem['output'] + mem['temp'] - mem['alias'] if mem else float('nan')
  flops = train_lib.compiled_flops(compiled)
  result = dict(case=case, batch_size=b, num_frames=t, crop_size=s, remat=bool(config.remat),
                num_params=int(num_params), compile_s=compile_s, gflop_per_step=flops / 1e9, memory_bytes=mem,
                xla_live_gib=live / GIB, rss_after_compile_gib=rss_after_compile, skipped=None)

  available = _available_bytes()
  if compile_only:
    result['skipped'] = 'compile only'
  elif live > available:
    result['skipped'] = f'needs {live / GIB:.1f} GiB, {available / GIB:.1f} GiB available'
  if result['skipped']:
    return dict(result, peak_rss_gib=_peak_rss_gib())

  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready((state, metrics))
  times, cpu_times = [], []
  for _ in range(steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  step_s = statistics.median(times)
  return dict(result, step_s=step_s, times=times, cpu_step_s=statistics.median(cpu_times),
              examples_per_s=b / step_s, gflops=flops / step_s / 1e9, peak_rss_gib=_peak_rss_gib(),
              loss=float(metrics['loss']))


COLUMNS = ('case', 'B', 'T', 'crop', 'remat', 'compile (s)', 's/step', 'CPU s/step', 'examples/s',
           'vs PyTorch B=1', 'XLA args (GiB)', 'XLA outputs (GiB)', 'XLA temp (GiB)', 'XLA donated (GiB)',
           'XLA live (GiB)', 'RSS after compile (GiB)', 'peak RSS (GiB)')


def _row(r: dict) -> str:
  """One Markdown table row, in the order of COLUMNS."""
  mem = r['memory_bytes']
  gib = lambda k: f'{mem[k] / GIB:.2f}' if mem else 'n/a'
  if r['skipped']:
    timing = [f'not run: {r["skipped"]}', '', '', '']
  else:
    is_b1 = r['case'].startswith('released') and r['batch_size'] == 1
    timing = [f'{r["step_s"]:.2f}', f'{r["cpu_step_s"]:.2f}', f'{r["examples_per_s"]:.2f}',
              f'{TORCH_B1_STEP_S / r["step_s"]:.2f}x' if is_b1 else '']
  cells = [r['case'], r['batch_size'], r['num_frames'], r['crop_size'], 'yes' if r['remat'] else 'no',
           f'{r["compile_s"]:.1f}', *timing, gib('argument'), gib('output'), gib('temp'), gib('alias'),
           f'{r["xla_live_gib"]:.2f}', f'{r["rss_after_compile_gib"]:.2f}', f'{r["peak_rss_gib"]:.2f}']
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--cases', default=','.join(CASES), help=f'comma-separated subset of {list(CASES)}')
  parser.add_argument('--steps', type=int, default=3, help='timed steps after one warm-up step')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='override a top-level config field in every case, e.g. --set crop_size=64')
  parser.add_argument('--compile_only', action='store_true',
                      help='compile and report memory analysis only (steps are also skipped, by themselves, '
                      'when XLA needs more memory than is available)')
  parser.add_argument('--json', default=None, help='also write the results to this JSON file')
  parser.add_argument('--_child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()

  child = args._child  # pylint: disable=protected-access
  if child:
    print(json.dumps(_measure(child, args.steps, args.set, args.compile_only)))
    return

  cases = args.cases.split(',')
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    parser.error(f'unknown cases {unknown}; choose from {list(CASES)}')
  results = []
  for case in cases:
    cmd = [sys.executable, os.path.abspath(__file__), '--_child', case, '--steps', str(args.steps)]
    cmd += [f'--set={override}' for override in args.set] + (['--compile_only'] if args.compile_only else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
      print(f'{case}: failed (rc {proc.returncode}; killed for memory if -9):\n{proc.stderr[-2000:]}',
            file=sys.stderr)
      continue
    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    done = results[-1]
    print(f'done {case}: ' + (f'not run ({done["skipped"]})' if done['skipped'] else f'{done["step_s"]:.2f} s/step')
          + f', XLA live {done["xla_live_gib"]:.2f} GiB', file=sys.stderr)

  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  allocator = os.environ.get('GLIBC_TUNABLES', 'glibc default')
  xla_flags = os.environ.get('XLA_FLAGS') or ' '.join(runtime.CPU_XLA_FLAGS)
  print(f'\njax {jax.__version__}, {os.cpu_count()} CPUs, allocator: {allocator}, XLA flags: {xla_flags}; '
        f'overrides: {args.set or "none"}; median of {args.steps} steps '
        f'after a warm-up; PyTorch reference at B=1: {TORCH_B1_STEP_S} s/step, ~{TORCH_B1_PEAK_GIB:.0f} GiB; '
        f'machine memory {MACHINE_MEMORY_GIB:.0f} GB\n')
  print('| ' + ' | '.join(COLUMNS) + ' |')
  print('|' + '---|' * len(COLUMNS))
  for r in results:
    print(_row(r))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(allocator=allocator, xla_flags=xla_flags, steps=args.steps, overrides=args.set,
                     results=results), f, indent=2)


if __name__ == '__main__':
  main()
