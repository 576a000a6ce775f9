"""Sharded training and inference equal the single-device computation (8 CPU devices in a subprocess)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jax.sharding import PartitionSpec as P
from vfusion_jax import sharding

# Relative tolerance of the issue. Sharding changes only the order of float32 reductions (batch means, attention
# contractions over H*W split across devices), so losses agree to ~1e-7 and parameters after 3 AdamW steps to
# ~1e-7 of their norm; 1e-5 leaves two orders of magnitude while catching a wrong halo (a frame-boundary error
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


# The cases, split over two subprocesses that run at once (compilation is mostly single-threaded; 2 CI cores).
PROCESS_CASES = ('1x1,initial,8x1,4x2', '2x4,1x8,8x1_fsdp,forward')
MESH_CASES = ('8x1', '4x2', '2x4', '1x8', '8x1_fsdp')
# Updates (params after 3 steps - initial params) are ~1e-3 of the params; their relative difference checks the
# training signal itself, not only the (dominant) unchanged part of the params. Measured ~2e-6.
UPDATE_RTOL = 1e-4


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
    log, _ = process.communicate(timeout=3000)
    assert process.returncode == 0, log[-3000:]
  arrays = {}
  for out in outputs:
    with np.load(out) as part:
      arrays.update({k: part[k] for k in part.files})

  reference = arrays['1x1/losses']
  assert int(arrays['8x1/sharded_param_leaves']) == 0
  assert int(arrays['8x1_fsdp/sharded_param_leaves']) > 0  # FSDP really split kernels over 'data'
  for case in MESH_CASES:
    np.testing.assert_allclose(arrays[f'{case}/losses'], reference, rtol=RTOL, err_msg=case)
    assert _tree_rel(arrays, f'{case}/params/', '1x1/params/') <= RTOL, case
    assert _tree_rel(arrays, f'{case}/params/', '1x1/params/', subtract='initial/') <= UPDATE_RTOL, case
  # Time sharded 8 ways on a T=16 clip: Conv3D and BiCAM neighbours cross the shard boundaries exactly, as
  # halo exchanges (no op gathers the whole clip).
  assert int(arrays['forward/all_gathers']) == 0
  for key in ('fusion', 'ir', 'vi'):
    np.testing.assert_allclose(arrays[f'forward/sharded/{key}'], arrays[f'forward/single/{key}'], atol=1e-5,
                               rtol=0, err_msg=key)


def test_logical_rules_map_names_to_mesh_axes():
  mesh = jax.sharding.AbstractMesh((4, 2), sharding.MESH_AXES)
  rules = sharding.DEFAULT_LOGICAL_AXIS_RULES
  assert sharding.logical_to_spec(sharding.ACTIVATION_AXES, rules) == P('data', 'time', None, None, None)
  # Default rules replicate every parameter; FSDP splits a kernel's output channels over 'data' ...
  kernel = (3, 3, 32, 64)
  names = sharding.param_logical_axes(kernel)
  assert names == ('kernel_height', 'kernel_width', 'conv_in', 'conv_out')
  assert sharding.logical_to_spec(names, rules, kernel, mesh) == P(None, None, None, None)
  assert sharding.logical_to_spec(names, sharding.FSDP_LOGICAL_AXIS_RULES, kernel, mesh) == P(None, None, None,
                                                                                                'data')
  # ... unless the mesh axis does not divide them (one table for every parameter size).
  assert sharding.logical_to_spec(names, sharding.FSDP_LOGICAL_AXIS_RULES, (1, 1, 64, 6), mesh) == P(
      None, None, None, None)
  # A mesh axis is used once per array.
  assert sharding.logical_to_spec(('batch', 'channels'), (('batch', 'data'), ('channels', 'data'))) == P('data', None)


def test_logical_rules_errors():
  with pytest.raises(ValueError, match="no logical axis rule for \\['height'\\]"):
    sharding.logical_to_spec(('batch', 'height'), (('batch', 'data'),))
  with pytest.raises(ValueError, match='not a mesh axis'):
    sharding.logical_to_spec(('batch',), (('batch', 'model'),))
  with pytest.raises(ValueError, match='rank-3'):
    sharding.param_logical_axes((3, 3, 3))


def test_constrain_is_the_identity_outside_activation_rules():
  x = jnp.arange(2 * 2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 2, 4, 4, 3)
  assert sharding.constrain(x) is x
  mesh = sharding.make_mesh({'data': 1, 'time': 1})
  with sharding.activation_rules(mesh):
    jaxpr = jax.make_jaxpr(sharding.constrain)(x)
  assert 'sharding_constraint' in str(jaxpr)
