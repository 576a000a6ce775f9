r"""Loss curves of bfloat16 and float32 training: same config, data and seed, plus a second float32 seed.

  python benchmarks/bf16_training.py --root=/tmp/bf16_training                 # configs/demo.py, 300 steps
  python benchmarks/bf16_training.py --root=/tmp/bf16_training --plot=docs/precision_loss.png

Runs train.py three times (each in ``ROOT/<run>``; a finished run is resumed, which does nothing): float32,
bfloat16 compute (``--config.model.dtype=bfloat16``, float32 params, optimiser state, loss and metrics), and
float32 with another seed, whose distance from the first float32 run is the seed-to-seed spread that the
bfloat16 difference is judged against. Reads each run's metrics.jsonl (training losses averaged over every
log window) and prints a Markdown table; ``--plot`` draws the three curves.
"""

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RUNS = {  # name -> train.py overrides
    'float32': ('--config.model.dtype=float32',),
    'bfloat16': ('--config.model.dtype=bfloat16',),
    'float32, seed + 1': ('--config.model.dtype=float32', '--config.seed={seed_plus_one}'),
}


def _workdir(root: pathlib.Path, name: str) -> pathlib.Path:
  return root / name.replace(', ', '_').replace(' + ', '_plus_')


def read_losses(workdir: pathlib.Path, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of ``key`` in the run's metrics.jsonl training rows, in step order."""
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines() if line.strip()]
  rows = sorted((r for r in rows if key in r), key=lambda r: r['step'])
  return np.array([r['step'] for r in rows]), np.array([r[key] for r in rows])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--root', type=pathlib.Path, required=True, help='parent folder of the three workdirs')
  parser.add_argument('--config', default=str(REPO / 'configs' / 'demo.py'))
  parser.add_argument('--steps', type=int, default=None, help='total_steps (default: the config\'s)')
  parser.add_argument('--key', default='loss', help='the metrics.jsonl field compared')
  parser.add_argument('--every', type=int, default=50, help='table row every this many steps')
  parser.add_argument('--plot', type=pathlib.Path, default=None, help='write the curves to this PNG')
  args = parser.parse_args()

  spec = importlib.util.spec_from_file_location('experiment_config', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  seed = module.get_config().seed
  for name, overrides in RUNS.items():
    command = [sys.executable, str(REPO / 'train.py'), f'--config={args.config}',
               f'--workdir={_workdir(args.root, name)}', *(o.format(seed_plus_one=seed + 1) for o in overrides)]
    command += [f'--config.total_steps={args.steps}'] if args.steps else []
    print('$', ' '.join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)

  curves = {name: read_losses(_workdir(args.root, name), args.key) for name in RUNS}
  steps = curves['float32'][0]
  for name, (s, _) in curves.items():
    if not np.array_equal(s, steps):
      sys.exit(f'error: {name} logged other steps than float32 ({s} vs {steps})')
  values = {name: v for name, (_, v) in curves.items()}
  print(f'\n{args.key} (mean over each log window), {pathlib.Path(args.config).name}\n')
  print('| step | ' + ' | '.join(RUNS) + ' | bfloat16 / float32 | float32 seed spread |')
  print('|---:|' + '---:|' * (len(RUNS) + 2))
  for i, step in enumerate(steps):
    if i == 0 or step % args.every == 0 or i == len(steps) - 1:
      f32, bf16, other = (values[n][i] for n in RUNS)
      print(f'| {step} | ' + ' | '.join(f'{values[n][i]:.3f}' for n in RUNS) +
            f' | {bf16 / f32 - 1:+.1%} | {other / f32 - 1:+.1%} |')
  tail = max(1, len(steps) // 3)
  means = {n: float(np.mean(v[-tail:])) for n, v in values.items()}
  print(f'\nmean of the last {tail} log windows (steps {steps[-tail]}-{steps[-1]}): ' +
        ', '.join(f'{n} {m:.3f}' for n, m in means.items()) +
        f'; bfloat16 vs float32 {means["bfloat16"] / means["float32"] - 1:+.1%}, '
        f'seed vs seed {means["float32, seed + 1"] / means["float32"] - 1:+.1%}')
  if args.plot:
    from vfusion_jax import evaluate  # pylint: disable=g-import-not-at-top
    from vfusion_jax import io  # pylint: disable=g-import-not-at-top
    image = evaluate.line_plot({n: list(v) for n, v in values.items()},
                               f'{args.key}: bfloat16 vs float32 ({pathlib.Path(args.config).name})',
                               f'log window (every {int(steps[1] - steps[0])} steps)', args.key)
    io.save_png(args.plot, image)
    print(f'plot: {args.plot}')


if __name__ == '__main__':
  main()
