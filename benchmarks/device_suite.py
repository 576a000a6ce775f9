r"""The prepared accelerator benchmark: one command, one table, under 8 minutes on one GPU.

  python benchmarks/device_suite.py                    # on the default JAX device (GPU or TPU)
  python benchmarks/device_suite.py --json=/tmp/device_suite.json
  python benchmarks/device_suite.py --smoke            # tiny shapes and network: checks the script on a CPU

Cases (the released network, configs/m3svd.py), each in float32 and in bfloat16 compute (float32 params):
  forward      B=1, T=7, 480x640 (a whole M3SVD frame size), as eval/infer run it
  train_b3     the train step at B=3, T=6, 128x128 (the release's per-GPU recipe)
  train_b12    the train step at B=12, T=6, 128x128 (the release's global batch on one chip)

Every case runs in its own process, so its peak device memory is its own. Reported per case: compile time
(lower + compile), the median seconds per call over --repeats calls after one warm-up, the FLOPs XLA counts in
the compiled program, achieved FLOP/s and its share of the chip's peak (MFU; the peak table is below and
printed with the results), and peak device memory (the allocator's peak where the device reports one, else
XLA's memory analysis of the compiled program). When torch is importable the same cases run through the
PyTorch reference (reference/torch_videofusion.py: float32, and bfloat16 under autocast) on the same device,
timed the same way; its MFU uses the FLOPs that XLA counts for the same function.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
GIB = 2**30
DTYPES = ('float32', 'bfloat16')

# case -> (kind, batch, frames, height, width)
CASES = {
    'forward': ('forward', 1, 7, 480, 640),
    'train_b3': ('train', 3, 6, 128, 128),
    'train_b12': ('train', 12, 6, 128, 128),
}
# --smoke: the tiny network (configs/m3svd.py:tiny) with the weights of its parity fixture (no init to
# compile), and only the runs that the default test suite covers nowhere else (the float32 forward and train
# step are compiled by tests/test_network.py and tests/test_train_lib.py): each of the script's two kinds once,
# in bfloat16 (a check that the script works, in about a minute and a half on a CPU).
SMOKE_CASES = {
    'forward': ('forward', 1, 2, 32, 32),
    'train_b1': ('train', 1, 2, 32, 32),
}
SMOKE_RUNS = (('forward', 'bfloat16'), ('train_b1', 'bfloat16'))
SMOKE_WEIGHTS = REPO / 'tests' / 'fixtures' / 'videofusion_tiny_T3_32.npz'

# Dense peak FLOP/s per chip, from the vendors' data sheets, matched against jax's device_kind (first match
# wins). GPUs: bfloat16 tensor cores, and TF32 for float32 (XLA:GPU's default precision lets float32 matrix
# products and convolutions use TF32). TPUs: bfloat16 (the MXU's type; XLA:TPU's default precision also runs
# float32 products as one bfloat16 pass).
PEAK_FLOPS = (
    ('H200', {'bfloat16': 989e12, 'float32': 494e12}),
    ('H100 PCIe', {'bfloat16': 756e12, 'float32': 378e12}),
    ('H100', {'bfloat16': 989e12, 'float32': 494e12}),
    ('A100', {'bfloat16': 312e12, 'float32': 156e12}),
    ('L4', {'bfloat16': 121e12, 'float32': 60e12}),
    ('TPU v4', {'bfloat16': 275e12, 'float32': 275e12}),
    ('TPU v5 lite', {'bfloat16': 197e12, 'float32': 197e12}),
    ('TPU v5', {'bfloat16': 459e12, 'float32': 459e12}),
    ('TPU v6 lite', {'bfloat16': 918e12, 'float32': 918e12}),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The chip's dense peak FLOP/s for ``dtype`` compute, or None for a chip not in PEAK_FLOPS (a CPU)."""
  for name, peaks in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peaks[dtype]
  return None


def _model_config(smoke: bool, dtype: str):
  sys.path.insert(0, str(REPO))
  from configs import m3svd  # pylint: disable=g-import-not-at-top
  config = m3svd.get_config('tiny' if smoke else '')
  config.model.dtype = dtype
  return config


def _time_calls(call, repeats: int, sync) -> list[float]:
  sync(call())  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(call())
    times.append(time.perf_counter() - start)
  return times


def measure_jax(case: str, dtype: str, smoke: bool, repeats: int) -> dict:
  """Compiles and times one case with JAX on the default device, in this process."""
  sys.path.insert(0, str(REPO))
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_xla_flags()  # the CPU flags on a CPU (the smoke run); nothing on an accelerator
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vfusion_jax import optim  # pylint: disable=g-import-not-at-top
  from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top

  kind, b, t, h, w = (SMOKE_CASES if smoke else CASES)[case]
  config = _model_config(smoke, dtype)
  model = train_lib.create_model(config)
  rng = np.random.default_rng(0)
  clip = lambda c: jax.device_put(rng.uniform(size=(b, t, h, w, c)).astype(np.float32))
  if smoke:
    from vfusion_jax import convert  # pylint: disable=g-import-not-at-top
    params = convert.torch_to_flax(convert.load_state_dict(str(SMOKE_WEIGHTS)), config.model)
  else:
    params = jax.jit(model.init)(jax.random.key(0), clip(1)[:, :2, :8, :8], clip(3)[:, :2, :8, :8])['params']
  if kind == 'forward':
    ir, vi = clip(1), clip(3)
    jitted = jax.jit(model.apply)
    args = ({'params': params}, ir, vi)
  else:
    tx = optim.make_optimizer(config)
    step = train_lib.make_train_step(model, tx, config.loss, optim.make_schedule(config))
    state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    batch = {'ir_lq': clip(1), 'vi_lq': clip(3), 'ir_gt': clip(1), 'vi_gt': clip(3)}
    jitted = jax.jit(step)  # not donated: the same state is fed to every timed call
    args = (state, batch)
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  flops = train_lib.compiled_flops(compiled)
  times = _time_calls(lambda: compiled(*args), repeats, jax.block_until_ready)
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    peak, peak_source = stats['peak_bytes_in_use'], 'allocator peak'
  else:
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes) if mem is not None else float('nan')
    peak_source = 'XLA memory analysis'
  seconds = statistics.median(times)
  return dict(framework='jax', case=case, kind=kind, dtype=dtype, shape=[b, t, h, w], compile_s=compile_s,
              seconds=seconds, times=times, flops=flops, flops_per_s=flops / seconds, peak_gib=peak / GIB,
              peak_source=peak_source, device_kind=device.device_kind, platform=device.platform,
              version=jax.__version__)


def measure_torch(case: str, dtype: str, smoke: bool, repeats: int) -> dict:
  """Times one case through the PyTorch reference on CUDA when present (else the CPU), in this process."""
  sys.path.insert(0, str(REPO))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from reference import torch_videofusion  # pylint: disable=g-import-not-at-top

  kind, b, t, h, w = (SMOKE_CASES if smoke else CASES)[case]
  config = _model_config(smoke, 'float32').model
  official = dict(in_channels=config.in_channels, out_channels=config.out_channels,
                  num_features=config.num_features, num_blocks=tuple(config.num_blocks),
                  num_decoder_blocks=config.num_decoder_blocks, num_heads=tuple(config.num_heads),
                  ffn_expansion_factor=config.ffn_expansion_factor, bias=config.bias,
                  layer_norm_type=config.layernorm_type)
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.manual_seed(0)
  model = torch_videofusion.build_model(official).to(device)
  rng = np.random.default_rng(0)
  clip = lambda: torch.from_numpy(rng.uniform(size=(b, t, 3, h, w)).astype(np.float32)).to(device)
  ir_lq, vi_lq, ir_gt, vi_gt = clip(), clip(), clip(), clip()
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')
  if kind == 'forward':
    model.eval()

    def call():
      with torch.inference_mode(), autocast():
        return model(ir_lq, vi_lq)
  else:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)

    def call():
      optimizer.zero_grad(set_to_none=True)
      with autocast():
        loss, _ = torch_videofusion.released_loss(model(ir_lq, vi_lq), {'ir_gt': ir_gt, 'vi_gt': vi_gt})
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
      optimizer.step()
      return loss

  sync = (lambda _: torch.cuda.synchronize()) if device.type == 'cuda' else (lambda _: None)
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  try:
    times = _time_calls(call, repeats, sync)
  except torch.cuda.OutOfMemoryError:
    return dict(framework='torch', case=case, kind=kind, dtype=dtype, shape=[b, t, h, w],
                skipped='out of device memory', version=torch.__version__)
  peak = torch.cuda.max_memory_allocated() / GIB if device.type == 'cuda' else float('nan')
  return dict(framework='torch', case=case, kind=kind, dtype=dtype, shape=[b, t, h, w],
              seconds=statistics.median(times), times=times, peak_gib=peak,
              peak_source='allocator peak' if device.type == 'cuda' else 'n/a on CPU', platform=device.type,
              version=torch.__version__)


def _torch_importable() -> bool:
  return subprocess.run([sys.executable, '-c', 'import torch'], capture_output=True, check=False).returncode == 0


def _run_child(framework: str, case: str, dtype: str, smoke: bool, repeats: int) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f'--_child={framework},{case},{dtype}', f'--repeats={repeats}']
  cmd += ['--smoke'] if smoke else []
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
  if proc.returncode:
    return dict(framework=framework, case=case, dtype=dtype,
                skipped=f'failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
  """Markdown table of the results; torch rows take the FLOPs and MFU of the JAX row of the same case."""
  jax_flops = {(r['case'], r['dtype']): r['flops'] for r in results if r['framework'] == 'jax' and 'flops' in r}
  device_kind = next((r['device_kind'] for r in results if 'device_kind' in r), 'unknown')
  lines = ['| framework | case | dtype | B×T×H×W | compile (s) | s/call | TFLOP/call | TFLOP/s | MFU '
           '| peak memory |',
           '|---|---|---|---|---:|---:|---:|---:|---:|---|']
  for r in results:
    shape = '×'.join(str(v) for v in r.get('shape', ())) or 'n/a'
    if r.get('skipped'):
      lines.append(f"| {r['framework']} | {r['case']} | {r['dtype']} | {shape} | | {r['skipped']} | | | | |")
      continue
    flops = jax_flops.get((r['case'], r['dtype']), float('nan'))
    peak = peak_flops(device_kind, r['dtype'])
    achieved = flops / r['seconds']
    mfu = f'{100 * achieved / peak:.1f} %' if peak else 'n/a'
    compile_s = f"{r['compile_s']:.1f}" if 'compile_s' in r else ''
    lines.append(f"| {r['framework']} | {r['case']} | {r['dtype']} | {shape} | {compile_s} | {r['seconds']:.4f} | "
                 f"{flops / 1e12:.3f} | {achieved / 1e12:.2f} | {mfu} | {r['peak_gib']:.2f} GiB ({r['peak_source']}) |")
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--smoke', action='store_true', help='tiny network and shapes (a check of the script)')
  parser.add_argument('--repeats', type=int, default=None, help='timed calls per case (default 10; smoke 2)')
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch reference even if importable')
  parser.add_argument('--json', default=None, help='also write the results to this JSON file')
  parser.add_argument('--_child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  repeats = args.repeats or (2 if args.smoke else 10)
  if args._child:  # pylint: disable=protected-access
    framework, case, dtype = args._child.split(',')  # pylint: disable=protected-access
    measure = measure_jax if framework == 'jax' else measure_torch
    print(json.dumps(measure(case, dtype, args.smoke, repeats)))
    return

  start = time.perf_counter()
  frameworks = ['jax'] + ([] if args.no_torch or not _torch_importable() else ['torch'])
  results = []
  runs = SMOKE_RUNS if args.smoke else [(case, dtype) for case in CASES for dtype in DTYPES]
  for framework in frameworks:
    for case, dtype in runs:
      results.append(_run_child(framework, case, dtype, args.smoke, repeats))
      print(json.dumps(results[-1]), flush=True)
  device_kind = next((r['device_kind'] for r in results if 'device_kind' in r), 'unknown')
  peaks = {dtype: peak_flops(device_kind, dtype) for dtype in DTYPES}
  peaks_text = ', '.join(f'{d} {p / 1e12:.0f} TFLOP/s' for d, p in peaks.items() if p) or 'unknown chip, MFU n/a'
  print(f'\n{device_kind}; jax {results[0].get("version", "?")}; torch: '
        f'{"run" if "torch" in frameworks else "not importable or skipped"}; peak for MFU: {peaks_text}; '
        f'suite took {time.perf_counter() - start:.0f} s\n')
  print(table(results))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
  if any(r.get('skipped', '').startswith('failed') for r in results if r['framework'] == 'jax'):
    sys.exit('error: a JAX case failed (see its row)')


if __name__ == '__main__':
  main()
