"""Sharded training and inference equal the single-device computation (8 CPU devices in subprocesses)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from jax.sharding import AbstractMesh, PartitionSpec as P

from configs import m3svd
from conftest import REPO
from vfusion_jax import optim, sharding, train_lib
from vfusion_jax.models import layers

# Relative tolerance of the issue. Sharding changes only the order of float32 reductions (batch means, attention
# contractions over H*W split across devices), so losses agree to ~1e-7 and parameters after 2 AdamW steps to
# ~1e-8 of their norm; 1e-5 leaves two orders of magnitude while catching a wrong halo (a frame-boundary error
# in Conv3D or BiCAM changes losses at the 1e-3 level).
RTOL = 1e-5


@pytest.mark.parametrize('config, devices, expected', [
    ({'data': -1, 'time': 1}, 8, (8, 1)),
    ({'data': 2, 'time': -1}, 8, (2, 4)),
    ({'data': 4, 'time': 2}, 8, (4, 2)),
    ({'data': 1}, 1, (1, 1)),
])
def test_mesh_shape(config, devices, expected):
  assert sharding.mesh_shape(config, devices) == expected


@pytest.mark.parametrize('config, devices, message', [
    ({'data': -1, 'time': -1}, 8, 'at most one'),
    ({'data': 3, 'time': -1}, 8, 'cannot be split'),
    ({'data': 4, 'time': 4}, 8, 'needs 16 devices'),
])
def test_mesh_shape_errors(config, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(config, devices)


# Updates (params after 2 steps - initial params) are ~1e-3 of the params; their relative difference checks the
# training signal itself, not only the (dominant) unchanged part of the params. Measured ~2e-6.
UPDATE_RTOL = 1e-4
# tests/sharding_equivalence.py says what each case covers. Two subprocesses at once, with about the same
# compile work each: compilation is mostly single-threaded and CI has 2 cores.
PROCESS_CASES = ('1x1,forward_1x8,forward_1x8_xla', '2x4_fsdp')


def _tree_rel(arrays, prefix, reference_prefix, subtract=None):
  """||a - b|| / ||b|| over every array under the two prefixes (float64), optionally minus another prefix."""
  num = den = 0.0
  for key in arrays:
    if not key.startswith(reference_prefix):
      continue
    name = key[len(reference_prefix):]
    a = arrays[prefix + name].astype(np.float64)
    b = arrays[key].astype(np.float64)
    if subtract is not None:
      a, b = a - arrays[subtract + name], b - arrays[subtract + name]
    num += float(np.sum((a - b) ** 2))
    den += float(np.sum(b ** 2))
  return (num / den) ** 0.5


def test_meshes_give_the_same_training_and_forward(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  script = str(REPO / 'tests' / 'sharding_equivalence.py')
  outputs = [tmp_path / f'part{i}.npz' for i in range(len(PROCESS_CASES))]
  processes = [subprocess.Popen([sys.executable, script, str(out), names], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for out, names in zip(outputs, PROCESS_CASES)]
  for process in processes:
    log, _ = process.communicate(timeout=1800)
    assert process.returncode == 0, log[-3000:]
  arrays = {}
  for out in outputs:
    with np.load(out) as part:
      arrays.update({k: part[k] for k in part.files})

  assert int(arrays['1x1/sharded_param_leaves']) == 0
  assert int(arrays['2x4_fsdp/sharded_param_leaves']) > 0  # FSDP really split kernels over 'data'
  for case in ('1x1', '2x4_fsdp'):  # Adam's moments are sharded like their params
    assert int(arrays[f'{case}/moment_leaves']) > 0 and int(arrays[f'{case}/moment_sharding_mismatches']) == 0
  np.testing.assert_allclose(arrays['2x4_fsdp/losses'], arrays['1x1/losses'], rtol=RTOL)
  assert _tree_rel(arrays, '2x4_fsdp/params/', '1x1/params/') <= RTOL
  assert _tree_rel(arrays, '2x4_fsdp/params/', '1x1/params/', subtract='initial/') <= UPDATE_RTOL
  # Time sharded 8 ways on a T=8 clip: Conv3D and BiCAM neighbours cross every shard boundary exactly, as
  # halo exchanges (no op gathers the whole clip), in both formulations of the layers.
  for case in ('forward_1x8', 'forward_1x8_xla'):
    assert int(arrays[f'{case}/all_gathers']) == 0, case
    for key in ('fusion', 'ir', 'vi'):
      np.testing.assert_allclose(arrays[f'{case}/sharded/{key}'], arrays[f'{case}/single/{key}'], atol=1e-5,
                                 rtol=0, err_msg=f'{case} {key}')


def test_logical_rules_map_names_to_mesh_axes():
  mesh = AbstractMesh((4, 2), sharding.MESH_AXES)
  rules = sharding.DEFAULT_LOGICAL_AXIS_RULES
  assert sharding.logical_to_spec(sharding.ACTIVATION_AXES, rules) == P('data', 'time', None, None, None)
  # Default rules replicate every parameter; FSDP splits a kernel's output channels over 'data' ...
  kernel, names = (3, 3, 32, 64), layers.CONV_KERNEL_AXES
  assert sharding.logical_to_spec(names, rules, kernel, mesh) == P(None, None, None, None)
  fsdp = sharding.FSDP_LOGICAL_AXIS_RULES
  assert sharding.logical_to_spec(names, fsdp, kernel, mesh) == P(None, None, None, 'data')
  # ... unless the mesh axis does not divide them (one table for every parameter size).
  assert sharding.logical_to_spec(names, fsdp, (1, 1, 64, 6), mesh) == P(None, None, None, None)
  # Flax's precedence: a mesh axis is used once per array, the first rule that can apply wins, and a name
  # without a rule is unsharded.
  assert sharding.logical_to_spec(('batch', 'channels'), (('batch', 'data'), ('channels', 'data'))) == P('data', None)
  assert sharding.logical_to_spec(('batch', 'time'), (('batch', 'time'), ('batch', 'data'), ('time', 'time'))) == P(
      'time', None)
  assert sharding.logical_to_spec(('batch', 'height'), (('batch', 'data'),)) == P('data', None)


def test_logical_rules_errors():
  with pytest.raises(ValueError, match="no logical axis 'hieght'"):
    sharding.logical_to_spec(('batch',), (('hieght', 'data'),))
  with pytest.raises(ValueError, match='not a mesh axis'):
    sharding.logical_to_spec(('batch',), (('batch', 'model'),))


def test_state_shardings_fsdp_min_size_divisibility_and_moments():
  """FSDP shardings of the tiny network's train state, read from the layers' logical names (no compilation)."""
  config = m3svd.get_config('tiny')
  model, tx = train_lib.create_model(config), optim.make_optimizer(config)
  boxed = jax.eval_shape(lambda rng: train_lib.init_state(model, tx, rng, config, boxed=True), jax.random.key(0))
  mesh, min_size = AbstractMesh((4, 2), sharding.MESH_AXES), 2 ** 8
  shardings = sharding.state_shardings(boxed, mesh, sharding.FSDP_LOGICAL_AXIS_RULES, min_size)
  plain = nn.unbox(boxed)
  assert jax.tree.structure(shardings) == jax.tree.structure(plain)  # the plain state's tree, NamedSharding leaves
  params = jax.tree_util.tree_flatten_with_path(plain.params)[0]
  specs = jax.tree.leaves(shardings.params)
  assert len(specs) == len(params)
  kinds = set()
  for (path, leaf), named in zip(params, specs):
    sharded = [axis for axis in named.spec if axis is not None]
    if leaf.size < min_size:
      kind, expected = 'small', []
    elif leaf.ndim >= 4 and leaf.shape[-1] % 4:
      kind, expected = 'indivisible', []
    elif leaf.ndim >= 4:
      kind, expected = 'split', ['data']
    else:
      kind, expected = 'other', []
    kinds.add(kind)
    assert sharded == expected, (jax.tree_util.keystr(path), leaf.shape, named.spec)
    if expected:
      assert named.spec[-1] == 'data'  # along conv_out
  assert {'small', 'indivisible', 'split'} <= kinds
  # Adam's moments mirror the params, boxed with the same names: the same shardings.
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  adams = [s for s in jax.tree.leaves(shardings.opt_state, is_leaf=is_adam) if is_adam(s)]
  assert adams and all(moment == shardings.params for adam in adams for moment in (adam.mu, adam.nu))
  assert shardings.step.spec == P()


def test_activation_constraints_only_under_activation_rules():
  """The network's ``nn.with_logical_constraint`` is the identity outside `sharding.activation_rules`."""
  x = jnp.zeros((2, 2, 4, 4, 3))
  constrain = lambda x: nn.with_logical_constraint(x, layers.ACTIVATION_AXES)
  assert 'sharding_constraint' not in str(jax.make_jaxpr(constrain)(x))
  mesh = sharding.make_mesh({'data': 1, 'time': 1})
  with sharding.activation_rules(mesh):
    jaxpr = str(jax.make_jaxpr(constrain)(x))
  assert 'sharding_constraint' in jaxpr and "P('data', 'time', None, None, None)" in jaxpr
