"""Trains 2 steps on ('data', 'time') meshes of 8 CPU devices and runs time-sharded forwards; saves the results.

Executed in subprocesses by tests/test_sharding.py, because the device count must be set before JAX starts.
Compilation is what this costs (~40-90 s per train step on 2 cores, whatever the clip size), so there are few
cases, each covering what the others do not, on small clips (B=8, T=4, 16x16) of the tiny network, all from
the same host-drawn params (`initial_params`; compiling an init would cost as much as a step):

  1x1              the reference: one device, through the same ShardedTrainStep.
  2x4_fsdp         data x time with the FSDP rules: each device holds 4 clips of 1 frame, so every temporal
                   neighbour (Conv3D taps, BiCAM's previous and next frame) is on another device, forward and
                   backward; batch statistics and gradients reduce over both axes; kernels of at least
                   FSDP_MIN_SIZE elements whose conv_out 'data' divides are split (with their Adam moments),
                   the rest are replicated as under the default rules.
  forward_1x8      the eval forward of a T=8 clip on a (1, 8) mesh (time only, one frame per device) against
                   one device; its compiled program must hold no all-gather (neighbours travel as halos).
  forward_1x8_xla  the same with layer_impl='xla', the GPU/TPU formulation of Conv3D and the depthwise convs.
"""

import os
import re
import sys
import time

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top
from flax import linen as nn  # pylint: disable=g-import-not-at-top

from configs import m3svd  # pylint: disable=g-import-not-at-top
from vfusion_jax import sharding, train_lib  # pylint: disable=g-import-not-at-top

STEPS = 2  # the second step reads the first one's sharded outputs (params and Adam moments)
# Train case -> (mesh (data, time), rules, FSDP minimum size). FSDP_MIN_SIZE is low enough that most kernels of
# the tiny network split over 'data', high enough that some stay replicated.
FSDP_MIN_SIZE = 2 ** 10
TRAIN_CASES = {
    '1x1': ((1, 1), sharding.DEFAULT_LOGICAL_AXIS_RULES, sharding.DEFAULT_FSDP_MIN_SIZE),
    '2x4_fsdp': ((2, 4), sharding.FSDP_LOGICAL_AXIS_RULES, FSDP_MIN_SIZE),
}
# Forward case -> (mesh, layer_impl), each against the single-device forward of its layer_impl.
FORWARD_CASES = {
    'forward_1x8': ((1, 8), 'cpu_tuned'),
    'forward_1x8_xla': ((1, 8), 'xla'),
}
# (B, T) of the forward clip: one frame per device on the (1, 8) mesh. One clip: with several clips per device
# and time sharded, the (B, T) -> B*T flatten of the 2-D convolutions makes XLA all-gather along time (33
# all-gathers at B=2), a cost of the layout that this check would report as a missing halo exchange.
FORWARD_SHAPE = (1, 8)


def equivalence_config():
  config = m3svd.get_config('tiny')
  # A constant lr of 1e-4 makes 2 steps move the params measurably (the released warm-up starts at 2e-8).
  config.optim.schedule = 'constant'
  config.batch_size = 8
  config.num_frames = 4
  config.crop_size = 16  # the SSIM loss needs at least its 13-pixel window
  return config


def batches(config, count, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, config.num_frames, config.crop_size, config.crop_size)
  out = []
  for _ in range(count):
    gt_ir = rng.uniform(size=shape + (1,)).astype(np.float32)
    gt_vi = rng.uniform(size=shape + (3,)).astype(np.float32)
    out.append({'ir_gt': gt_ir, 'vi_gt': gt_vi,
                'ir_lq': np.clip(gt_ir + rng.normal(0, 0.05, gt_ir.shape), 0, 1).astype(np.float32),
                'vi_lq': np.clip(gt_vi + rng.normal(0, 0.05, gt_vi.shape), 0, 1).astype(np.float32)})
  return out


def _sharded(tree) -> int:
  """How many array leaves of ``tree`` are split over some mesh axis."""
  return sum(any(a is not None for a in leaf.sharding.spec) for leaf in jax.tree.leaves(tree))


def initial_params(abstract_params, seed=0) -> dict:
  """Host params for every case, drawn without compiling an init (that compile costs as much as a step's).

  Kernels and biases U(+-1/sqrt(fan_in)) as PyTorch's default init (a bias's fan_in taken as 9 x its length);
  LayerNorm scales and attention temperatures 1, LayerNorm biases 0.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, parent = path[-1].key, path[-2].key if len(path) > 1 else ''
    if leaf.ndim >= 4:
      bound = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ('scale', 'temperature'):
      return np.ones(leaf.shape, leaf.dtype)
    elif parent.startswith('norm'):
      return np.zeros(leaf.shape, leaf.dtype)
    else:
      bound = 1 / np.sqrt(9 * leaf.shape[0])
    return rng.uniform(-bound, bound, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract_params)


def train(config, case, data, initial) -> dict:
  """STEPS train steps of ``case`` through train_lib's setup from the host params ``initial``.

  Returns the losses, the params after training, and counts of sharded params and of Adam moments whose
  sharding differs from their param's.
  """
  mesh_shape, rules, min_size = TRAIN_CASES[case]
  config = config.copy_and_resolve_references()
  config.sharding = {'logical_axis_rules': rules, 'fsdp_min_size': min_size}
  mesh = sharding.make_mesh({'data': mesh_shape[0], 'time': mesh_shape[1]}, jax.devices()[:np.prod(mesh_shape)])
  setup = train_lib.ShardedTrainStep(config, mesh)
  fresh = jax.jit(lambda p: train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=setup.tx.init(p)),
                  in_shardings=(setup.state_sharding.params,), out_shardings=setup.state_sharding)
  state = fresh(jax.device_put(initial, setup.state_sharding.params))
  # Adam's moments must be sharded exactly like the params they mirror.
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  moments = [t for adam in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(adam)
             for t in (adam.mu, adam.nu)]
  param_specs = [p.sharding.spec for p in jax.tree.leaves(state.params)]
  out = {'moment_leaves': sum(len(jax.tree.leaves(tree)) for tree in moments),
         'moment_sharding_mismatches': sum([m.sharding.spec for m in jax.tree.leaves(tree)] != param_specs
                                           for tree in moments),
         'sharded_param_leaves': _sharded(state.params)}
  losses, compiled = [], None
  for batch in data:
    batch = setup.global_batch(batch)
    if compiled is None:
      compiled = setup.compile(state, batch)
    state, metrics = compiled(state, batch)
    losses.append(float(metrics['loss']))
  out['losses'] = np.asarray(losses)
  out['params'] = jax.device_get(state.params)
  return out


def forward_check(config, case, params) -> dict:
  """Eval forward of one clip sharded on the case's mesh and on one device: {'sharded/<key>', 'single/<key>'}."""
  mesh_shape, layer_impl = FORWARD_CASES[case]
  config = config.copy_and_resolve_references()
  config.model.layer_impl = layer_impl
  model = train_lib.create_model(config)
  rng = np.random.default_rng(1)
  shape = FORWARD_SHAPE + (config.crop_size, config.crop_size)
  ir = rng.uniform(size=shape + (1,)).astype(np.float32)
  vi = rng.uniform(size=shape + (3,)).astype(np.float32)
  single = jax.jit(model.apply)({'params': params}, ir, vi)
  mesh = sharding.make_mesh({'data': mesh_shape[0], 'time': mesh_shape[1]}, jax.devices()[:np.prod(mesh_shape)])
  spec = sharding.clip_sharding(mesh)
  fn = jax.jit(model.apply, in_shardings=(sharding.replicated(mesh), spec, spec), out_shardings=spec)
  args = ({'params': params}, jax.device_put(ir, spec), jax.device_put(vi, spec))
  with sharding.activation_rules(mesh):
    compiled = fn.lower(*args).compile()
  sharded = compiled(*args)
  out = {f'single/{k}': np.asarray(v) for k, v in single.items()}
  # Temporal neighbours (Conv3D taps, BiCAM's previous/next frame) must travel as halo exchanges between
  # neighbouring devices; an all-gather would mean some op collects whole clips on every device.
  out['all_gathers'] = np.asarray(len(re.findall(r'\ball-gather(-start)?\(', compiled.as_text())))
  out.update({f'sharded/{k}': np.asarray(v) for k, v in sharded.items()})
  return out


def _flat(prefix, tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f'{prefix}/{jax.tree_util.keystr(path)}': np.asarray(v) for path, v in leaves}


def main(argv):
  """Usage: sharding_equivalence.py OUTPUT.npz [CASE,...] (default: every train case, then every forward case).

  Writes '<case>/...' arrays, 'initial/...' (the params every case starts from) and '<case>/seconds'.
  """
  output = argv[1]
  names = argv[2].split(',') if len(argv) > 2 else list(TRAIN_CASES) + list(FORWARD_CASES)
  # Compile time dominates this test; the partitioner (what is tested) runs either way.
  jax.config.update('jax_disable_most_optimizations', True)
  config = equivalence_config()
  data = batches(config, STEPS)
  model = train_lib.create_model(config)
  clip = jax.ShapeDtypeStruct((1, 2, config.crop_size, config.crop_size, 3), jnp.float32)
  initial = initial_params(nn.unbox(jax.eval_shape(model.init, jax.random.key(0), clip, clip)['params']))
  arrays = _flat('initial', initial)
  for name in names:
    start = time.perf_counter()
    if name in FORWARD_CASES:
      arrays.update({f'{name}/{k}': v for k, v in forward_check(config, name, initial).items()})
    else:
      result = train(config, name, data, initial)
      arrays.update(_flat(f'{name}/params', result.pop('params')))
      arrays.update({f'{name}/{k}': np.asarray(v) for k, v in result.items()})
    arrays[f'{name}/seconds'] = np.asarray(time.perf_counter() - start)
    print(f'{name}: {time.perf_counter() - start:.1f} s', flush=True)
  np.savez(output, **arrays)


if __name__ == '__main__':
  main(sys.argv)
