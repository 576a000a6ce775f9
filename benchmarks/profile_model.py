r"""Per-op-group profile of the jitted VideoFusion forward or train step on this CPU (docs/performance.md).

  python benchmarks/profile_model.py --mode=forward --height=128 --width=128 --frames=7
  python benchmarks/profile_model.py --mode=train --batch=1 --frames=6 --height=128 --width=128
  python benchmarks/profile_model.py --mode=forward --variant=tiny --height=32 --width=32 --repeats=1   # quick

Time: the JAX profiler's trace of ``--repeats`` runs (after a warm-up); XLA:CPU records one event per executed
HLO op (thunk) with its ``hlo_op`` name; each op is attributed to the Flax module that produced it through the
``op_name`` metadata of the compiled HLO (e.g. ``jit(train_step)/transpose(jvp(VideoFusion))/co_attention_1/
layers_0/co_transformer/attn/q_dwconv/...``), then to a block-type group (`group_of`). XLA:CPU runs
convolution thunks asynchronously on its Eigen pool, so their trace events only time the dispatch; the time is
therefore attributed by wall clock: from an op's start to the next op's start (over all threads) is charged to
it, so an async convolution gets the time until the ops waiting for it start, and the table sums to the wall
time (overlapping ops on the 2 threads are charged to whichever started last). FLOPs: counted from the
jaxpr of the same function, per equation, with the same name stack and grouping: 2*M*N*K for dot_general and
convolutions, one per output element for every other arithmetic primitive (XLA's cost analysis of the whole
program is printed beside their sum as a check). Both directions (``forward`` / ``backward``) are separated for
the train step. The ceiling is this machine's sgemm rate, measured at start (a 2048x2048 float32 ``jnp.dot``,
best of 5; ``--ceiling_gflops`` overrides it). Prints a Markdown table, with ``--top N`` the N slowest HLO ops
of each group (name, shape, module path), and with --json writes every number.
"""

import argparse
import collections
import glob
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SGEMM_SIZE = 2048  # square float32 matrix product that measures the ceiling

GROUPS = ('Conv3D', '3x3 conv', 'depthwise 3x3', '1x1 conv', 'channel attention (MDTA)', 'BiCAM attention',
          'LayerNorm', 'CMA gates', 'pixel (un)shuffle', 'upsampling', 'other network ops', 'loss',
          'optimizer + step', 'unattributed')
ELEMENTWISE_FLOPS = {
    'add', 'sub', 'mul', 'div', 'max', 'min', 'neg', 'exp', 'log', 'tanh', 'logistic', 'sqrt', 'rsqrt', 'pow',
    'integer_pow', 'abs', 'sign', 'erf', 'erf_inv', 'square', 'exp2', 'log1p', 'expm1', 'select_n', 'atan2',
    'reduce_sum', 'reduce_max', 'reduce_min', 'add_any', 'cumsum', 'clamp', 'sin', 'cos'}


def _kernel_kinds(params) -> dict:
  """Module path ('a/b/c') -> conv kind, from the kernel shapes: every kernel is (..., in, out)."""
  import jax  # pylint: disable=g-import-not-at-top
  kinds = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [getattr(k, 'key', str(k)) for k in path]
    if keys[-1] != 'kernel':
      continue
    shape = leaf.shape
    module = '/'.join(keys[:-1])
    if len(shape) == 5:
      kinds[module] = 'Conv3D'
    elif shape[:2] == (1, 1):
      kinds[module] = '1x1 conv'
    elif shape[2] == 1 and 'dwconv' in keys[-2]:
      kinds[module] = 'depthwise 3x3'
    else:
      kinds[module] = '3x3 conv'
  return kinds


_MODEL_SCOPE = re.compile(r'(?:^|/)(?:[a-z_]+\()*VideoFusion\)*/(.*)$')


def group_of(op_name: str, kinds: dict) -> tuple:
  """(group, direction) of an op from its name stack ('' when the op has none)."""
  if not op_name:
    return 'unattributed', ''
  direction = 'backward' if 'transpose(' in op_name else 'forward'
  match = _MODEL_SCOPE.search(op_name)
  if match is None:
    if 'loss' in op_name or 'jvp(' in op_name or 'transpose(' in op_name:
      return 'loss', direction
    return 'optimizer + step', ''
  parts = match.group(1).split('/')
  for end in range(len(parts), 0, -1):  # the deepest module that owns a kernel
    kind = kinds.get('/'.join(parts[:end]))
    if kind:
      return kind, direction
  modules = parts[:-1]
  if any(p.startswith('norm') for p in modules):
    return 'LayerNorm', direction
  if 'attn' in modules:
    return ('BiCAM attention' if any(p.startswith('co_attention') for p in modules)
            else 'channel attention (MDTA)'), direction
  if any(p.startswith('CMA_') for p in modules):
    return 'CMA gates', direction
  if any(p.startswith('down_') for p in modules):
    return 'pixel (un)shuffle', direction
  if any(re.fullmatch(r'up\d+', p) for p in modules):
    return 'upsampling', direction
  return 'other network ops', direction


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if hasattr(item, 'jaxpr') and hasattr(item, 'consts'):  # ClosedJaxpr
        yield item.jaxpr
      elif hasattr(item, 'eqns'):  # Jaxpr
        yield item


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  out = eqn.outvars[0].aval
  size = math.prod(getattr(out, 'shape', ()))
  if name == 'dot_general':
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    return 2.0 * size * math.prod(lhs[d] for d in lhs_contract)
  if name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params['dimension_numbers'].rhs_spec  # (out, in, spatial...)
    taps = math.prod(rhs[d] for d in spec[2:])
    return 2.0 * size * taps * rhs[spec[1]]
  if name in ELEMENTWISE_FLOPS:
    return float(max(size, math.prod(getattr(eqn.invars[0].aval, 'shape', ()))) if eqn.invars else size)
  return 0.0


def jaxpr_flops(closed_jaxpr, kinds: dict) -> dict:
  """{(group, direction): flops} over every equation, recursing into sub-jaxprs (pjit, custom_vjp, remat)."""
  totals = collections.Counter()

  def walk(jaxpr, prefix):
    for eqn in jaxpr.eqns:
      stack = '/'.join(s for s in (prefix, str(eqn.source_info.name_stack)) if s)
      subs = list(_sub_jaxprs(eqn))
      if subs and eqn.primitive.name not in ('custom_vjp_call', 'custom_jvp_call'):
        for sub in subs:
          walk(sub, stack)
        continue
      if subs:  # custom derivative rules: count the primal computation once
        walk(subs[0], stack)
        continue
      flops = _eqn_flops(eqn)
      if flops:
        totals[group_of(stack, kinds)] += flops

  walk(closed_jaxpr.jaxpr, '')
  return totals


def hlo_instructions(hlo_text: str) -> tuple[dict, dict]:
  """For every instruction of the compiled module: {name: op_name metadata} and {name: result shape}."""
  names, shapes = {}, {}
  for line in hlo_text.splitlines():
    match = re.match(r'\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)', line)
    if not match:
      continue
    shapes[match.group(1)] = match.group(2).split('{')[0]
    op_name = re.search(r'metadata=\{[^}]*op_name="([^"]*)"', line)
    if op_name:
      names[match.group(1)] = op_name.group(1)
  return names, shapes


def trace_op_times(run, repeats: int) -> dict:
  """{hlo_op: summed seconds per run} from a JAX profiler trace of ``repeats`` calls of ``run``."""
  from jax._src import profiler as jax_profiler  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    for _ in range(repeats):
      run()
    jax.profiler.stop_trace()
    path = glob.glob(os.path.join(folder, '**', '*.xplane.pb'), recursive=True)[0]
    data = jax_profiler.ProfileData.from_file(path)
  events = []
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        op = dict(event.stats).get('hlo_op')
        if op:
          events.append((event.start_ns, event.duration_ns, op))
  events.sort()
  times = collections.Counter()
  for i, (start, duration, op) in enumerate(events):
    following = events[i + 1][0] if i + 1 < len(events) else start + duration
    # Wall-time attribution: the interval until the next op starts belongs to this op (an async convolution
    # is only dispatched by its event; the ops that need its result start when it is done). The gap between
    # two runs (Python dispatch, about a millisecond) goes to the last op of the first.
    times[op] += max(following - start, duration) * 1e-9 / repeats
  return times


def sgemm_gflops(repeats: int = 5) -> float:
  """Best-of-``repeats`` rate of a SGEMM_SIZE^2 float32 matrix product on all cores, GFLOP/s."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((SGEMM_SIZE, SGEMM_SIZE), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, a))
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, a))
    best = min(best, time.perf_counter() - start)
  return 2.0 * SGEMM_SIZE ** 3 / best / 1e9


def _build(args):
  sys.path.insert(0, REPO)
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_xla_flags()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import m3svd  # pylint: disable=g-import-not-at-top
  from vfusion_jax import optim  # pylint: disable=g-import-not-at-top
  from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top

  config = m3svd.get_config(args.variant)
  config.model.dtype = args.dtype
  config.remat = args.remat
  model = train_lib.create_model(config)
  rng = np.random.default_rng(0)
  clip = lambda c: jax.device_put(rng.uniform(size=(args.batch, args.frames, args.height, args.width, c))
                                  .astype(np.float32))
  ir, vi = clip(1), clip(3)
  if args.mode == 'forward':
    params = jax.jit(model.init)(jax.random.key(0), ir[:, :2, :8, :8], vi[:, :2, :8, :8])['params']
    fn = jax.jit(model.apply)
    fn_args = ({'params': params}, ir, vi)
    return fn, fn_args, params
  tx = optim.make_optimizer(config)
  step_fn = train_lib.make_train_step(model, tx, config.loss, optim.make_schedule(config))
  state = jax.jit(lambda r: train_lib.init_state(model, tx, r, config))(jax.random.key(config.seed))
  batch = {'ir_lq': ir, 'vi_lq': vi, 'ir_gt': clip(1), 'vi_gt': clip(3)}
  fn = jax.jit(step_fn)  # not donated: the same state is fed again on every repeat
  return fn, (state, batch), state.params


def profile(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top
  fn, fn_args, params = _build(args)
  kinds = _kernel_kinds(params)
  start = time.perf_counter()
  compiled = fn.lower(*fn_args).compile()
  compile_s = time.perf_counter() - start
  xla_flops = train_lib.compiled_flops(compiled)
  op_names, shapes = hlo_instructions(compiled.as_text())
  run = lambda: jax.block_until_ready(compiled(*fn_args))
  run()  # warm-up
  walls = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    run()
    walls.append(time.perf_counter() - start)
  op_times = trace_op_times(run, args.repeats)
  closed_jaxpr = jax.make_jaxpr(fn)(*fn_args)
  flops = jaxpr_flops(closed_jaxpr, kinds)
  seconds = collections.Counter()
  unnamed = collections.Counter()
  top = collections.defaultdict(list)
  for op, t in op_times.items():
    key = group_of(op_names.get(op, ''), kinds)
    seconds[key] += t
    top[' '.join(filter(None, key))].append((t, op, shapes.get(op, ''), op_names.get(op, '')))
    if key[0] == 'unattributed':
      unnamed[re.sub(r'\.\d+$', '', op)] += t
  keys = sorted(set(seconds) | set(flops), key=lambda k: (GROUPS.index(k[0]), k[1]))
  rows = [dict(group=g, direction=d, seconds=seconds.get((g, d), 0.0), gflop=flops.get((g, d), 0.0) / 1e9)
          for g, d in keys]
  return dict(mode=args.mode, variant=args.variant or 'released', batch=args.batch, frames=args.frames,
              height=args.height, width=args.width, dtype=args.dtype, remat=args.remat, compile_s=compile_s,
              wall_s=statistics.median(walls), walls=walls, op_seconds=sum(seconds.values()),
              counted_gflop=sum(flops.values()) / 1e9, xla_gflop=xla_flops / 1e9, rows=rows,
              unattributed_ops=dict(unnamed.most_common(10)), ceiling_gflops=args.ceiling_gflops or sgemm_gflops(),
              top_ops={k: [dict(seconds=t, op=op, shape=shape, op_name=name)
                           for t, op, shape, name in sorted(v, reverse=True)[:args.top]]
                       for k, v in top.items()})


def markdown(result: dict) -> str:
  total = result['op_seconds']
  lines = [f"{result['mode']} {result['variant']} B={result['batch']} T={result['frames']} "
           f"{result['height']}x{result['width']} {result['dtype']}: wall {result['wall_s']:.3f} s (median), "
           f"attributed {total:.3f} s, compile {result['compile_s']:.1f} s, "
           f"{result['counted_gflop']:.1f} GFLOP counted (XLA cost analysis {result['xla_gflop']:.1f}), "
           f"sgemm ceiling {result['ceiling_gflops']:.0f} GFLOP/s", '',
           '| group | direction | op time (s) | share | GFLOP | GFLOP/s | % of sgemm ceiling |',
           '|---|---|---:|---:|---:|---:|---:|']
  for r in result['rows']:
    rate = r['gflop'] / r['seconds'] if r['seconds'] > 0 else float('nan')
    share = 100.0 * r['seconds'] / total if total else float('nan')
    lines.append(f"| {r['group']} | {r['direction'] or '-'} | {r['seconds']:.3f} | {share:.1f} % | "
                 f"{r['gflop']:.2f} | {rate:.1f} | {100.0 * rate / result['ceiling_gflops']:.0f} % |")
  for group, ops in sorted(result['top_ops'].items()):
    if ops:
      lines.append(f'\nslowest ops of {group}:')
      lines += [f"  {o['seconds'] * 1e3:8.1f} ms  {o['op']:<32} {o['shape']:<28} {o['op_name'][-90:]}" for o in ops]
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mode', choices=('forward', 'train'), default='forward')
  parser.add_argument('--variant', default='', help="configs/m3svd.py variant ('' = released, 'tiny')")
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--frames', type=int, default=7)
  parser.add_argument('--height', type=int, default=128)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--remat', action='store_true')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--top', type=int, default=0, help='also list the N slowest HLO ops of every group')
  parser.add_argument('--ceiling_gflops', type=float, default=0.0,
                      help='sgemm ceiling for the %% column (default: measured at start)')
  parser.add_argument('--json', help='write the result here')
  args = parser.parse_args()
  result = profile(args)
  print(markdown(result))
  if result['unattributed_ops']:
    print('\nunattributed ops (no op_name metadata), seconds:', json.dumps(result['unattributed_ops']))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
