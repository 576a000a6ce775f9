"""Runs the same 3 train steps on several ('data', 'time') meshes of 8 CPU devices; prints a JSON report.

Executed in a subprocess by tests/test_sharding.py, because the device count must be set before JAX starts.
"""

import json
import os
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


def run(config, mesh_shape, data):
  mesh = sharding.make_mesh({'data': mesh_shape[0], 'time': mesh_shape[1]}, jax.devices()[:np.prod(mesh_shape)])
  model = train_lib.create_model(config)
  tx = optim.make_optimizer(config)
  step_fn = train_lib.make_train_step(model, tx, config.loss, optim.make_schedule(config))
  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(lambda r: train_lib.init_state(model, tx, r, config), jax.random.key(0))
  state_sharding = jax.tree.map(lambda _: repl, abstract)
  state = jax.jit(lambda r: train_lib.init_state(model, tx, r, config), out_shardings=state_sharding)(
      jax.random.key(0))
  jitted = jax.jit(step_fn, in_shardings=(state_sharding, sharding.clip_sharding(mesh), repl),
                   out_shardings=(state_sharding, repl))
  losses = []
  for i, batch in enumerate(data):
    state, metrics = jitted(state, sharding.host_batch_to_global(batch, mesh), jax.random.key(i))
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state.params)


def forward_check(config):
  """Eval forward on T=16 with time sharded 8 ways vs one device."""
  model = train_lib.create_model(config)
  rng = np.random.default_rng(1)
  ir = rng.uniform(size=(1, 16, 16, 16, 1)).astype(np.float32)
  vi = rng.uniform(size=(1, 16, 16, 16, 3)).astype(np.float32)
  params = model.init(jax.random.key(0), ir[:, :2], vi[:, :2])['params']
  single = jax.jit(model.apply)({'params': params}, ir, vi)
  mesh = sharding.make_mesh({'data': 1, 'time': 8})
  spec = sharding.clip_sharding(mesh)
  fn = jax.jit(model.apply, in_shardings=(sharding.replicated(mesh), spec, spec), out_shardings=spec)
  sharded = fn({'params': params}, jax.device_put(ir, spec), jax.device_put(vi, spec))
  return {k: float(np.abs(np.asarray(sharded[k]) - np.asarray(single[k])).max()) for k in single}


def _global_rel(a, b):
  """||a - b|| / ||b|| over a whole pytree."""
  num = sum(float(np.sum((np.asarray(x, np.float64) - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  den = sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in jax.tree.leaves(b))
  return (num / den) ** 0.5


def main():
  # Compile time dominates this test; the partitioner (what is tested) runs either way.
  jax.config.update('jax_disable_most_optimizations', True)
  config = m3svd.get_config('tiny')
  # A constant lr of 1e-4 makes 3 steps move the params measurably (the released warm-up starts at 2e-8).
  config.optim.schedule = 'constant'
  config.batch_size = 8
  config.num_frames = 8
  config.crop_size = 16
  data = batches(config, STEPS)
  reference_losses, reference_params = run(config, MESHES[0], data)
  initial = jax.device_get(train_lib.init_state(train_lib.create_model(config), optim.make_optimizer(config),
                                                jax.random.key(0), config).params)
  reference_update = jax.tree.map(lambda p, q: np.asarray(p, np.float64) - q, reference_params, initial)
  report = {'reference_losses': reference_losses, 'meshes': {}}
  for mesh_shape in MESHES[1:]:
    losses, params = run(config, mesh_shape, data)
    rel_loss = max(abs(a - b) / abs(b) for a, b in zip(losses, reference_losses))
    update = jax.tree.map(lambda p, q: np.asarray(p, np.float64) - q, params, initial)
    report['meshes'][f'{mesh_shape[0]}x{mesh_shape[1]}'] = {
        'losses': losses, 'max_rel_loss_diff': rel_loss,
        'rel_param_diff': _global_rel(params, reference_params),
        'rel_update_diff': _global_rel(update, reference_update)}
  report['forward_time_sharded_max_abs_diff'] = forward_check(config)
  print('REPORT ' + json.dumps(report))


if __name__ == '__main__':
  main()
