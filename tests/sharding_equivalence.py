"""Runs the same 3 train steps on several ('data', 'time') meshes of 8 CPU devices; saves losses and params.

Executed in a subprocess by tests/test_sharding.py, because the device count must be set before JAX starts.
"""

import os
import re
import sys

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import m3svd  # pylint: disable=g-import-not-at-top
from vfusion_jax import optim, sharding, train_lib  # pylint: disable=g-import-not-at-top

STEPS = 3
MESHES = ((1, 1), (8, 1), (4, 2), (2, 4), (1, 8))
# FSDP on the (8, 1) mesh: kernels of >= FSDP_MIN_SIZE elements split over 'data' (the tiny net has 18 such).
FSDP_MESH = (8, 1)
FSDP_MIN_SIZE = 2 ** 12


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


def run(config, mesh_shape, data, rules=sharding.DEFAULT_LOGICAL_AXIS_RULES,
        fsdp_min_size=sharding.DEFAULT_FSDP_MIN_SIZE):
  """3 train steps on the mesh through train_lib's setup; (losses, params, number of sharded param leaves)."""
  config = config.copy_and_resolve_references()
  config.sharding = {'logical_axis_rules': rules, 'fsdp_min_size': fsdp_min_size}
  mesh = sharding.make_mesh({'data': mesh_shape[0], 'time': mesh_shape[1]}, jax.devices()[:np.prod(mesh_shape)])
  setup = train_lib.ShardedTrainStep(config, mesh)
  state = setup.init_state(jax.random.key(0))
  losses = []
  compiled = None
  for i, batch in enumerate(data):
    batch = setup.global_batch(batch)
    if compiled is None:
      compiled = setup.compile(state, batch, jax.random.key(0))
    state, metrics = compiled(state, batch, jax.random.key(i))
    losses.append(float(metrics['loss']))
  sharded = sum(any(a is not None for a in leaf.sharding.spec) for leaf in jax.tree.leaves(state.params))
  return losses, jax.device_get(state.params), sharded


def forward_check(config):
  """Eval forward on T=16 with time sharded 8 ways, and on one device: {'sharded/<key>', 'single/<key>'}."""
  model = train_lib.create_model(config)
  rng = np.random.default_rng(1)
  ir = rng.uniform(size=(1, 16, 16, 16, 1)).astype(np.float32)
  vi = rng.uniform(size=(1, 16, 16, 16, 3)).astype(np.float32)
  params = model.init(jax.random.key(0), ir[:, :2], vi[:, :2])['params']
  single = jax.jit(model.apply)({'params': params}, ir, vi)
  mesh = sharding.make_mesh({'data': 1, 'time': 8})
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


def equivalence_config():
  config = m3svd.get_config('tiny')
  # A constant lr of 1e-4 makes 3 steps move the params measurably (the released warm-up starts at 2e-8).
  config.optim.schedule = 'constant'
  config.batch_size = 8
  config.num_frames = 8
  config.crop_size = 16
  return config


def cases():
  """Case name -> (mesh shape, rules, FSDP minimum size). '1x1' is the reference."""
  out = {f'{d}x{t}': ((d, t), sharding.DEFAULT_LOGICAL_AXIS_RULES, sharding.DEFAULT_FSDP_MIN_SIZE)
         for d, t in MESHES}
  out[f'{FSDP_MESH[0]}x{FSDP_MESH[1]}_fsdp'] = (FSDP_MESH, sharding.FSDP_LOGICAL_AXIS_RULES, FSDP_MIN_SIZE)
  return out


def main(argv):
  """Usage: sharding_equivalence.py OUTPUT.npz CASE[,CASE...]; CASE is a mesh case of `cases()`, 'initial'
  (the parameters before training) or 'forward' (the time-sharded forward check)."""
  output, names = argv[1], argv[2].split(',')
  # Compile time dominates this test; the partitioner (what is tested) runs either way.
  jax.config.update('jax_disable_most_optimizations', True)
  config = equivalence_config()
  data = batches(config, STEPS)
  arrays = {}
  for name in names:
    if name == 'forward':
      arrays.update({f'forward/{k}': v for k, v in forward_check(config).items()})
    elif name == 'initial':
      params = train_lib.init_state(train_lib.create_model(config), optim.make_optimizer(config),
                                    jax.random.key(0), config).params
      arrays.update({f'initial/{jax.tree_util.keystr(p)}': np.asarray(v)
                     for p, v in jax.tree_util.tree_flatten_with_path(params)[0]})
    else:
      mesh_shape, rules, min_size = cases()[name]
      losses, params, sharded = run(config, mesh_shape, data, rules, min_size)
      arrays[f'{name}/losses'] = np.asarray(losses)
      arrays[f'{name}/sharded_param_leaves'] = np.asarray(sharded)
      arrays.update({f'{name}/params/{jax.tree_util.keystr(p)}': np.asarray(v)
                     for p, v in jax.tree_util.tree_flatten_with_path(params)[0]})
  np.savez(output, **arrays)


if __name__ == '__main__':
  main(sys.argv)
