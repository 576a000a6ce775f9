"""Sharded training and inference equal the single-device computation (8 CPU devices in a subprocess)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
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


@pytest.mark.slow
def test_meshes_give_the_same_training_and_forward():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, str(REPO / 'tests' / 'sharding_equivalence.py')], env=env,
                          capture_output=True, text=True, check=True, timeout=3000)
  line = [l for l in result.stdout.splitlines() if l.startswith('REPORT ')][-1]
  report = json.loads(line[len('REPORT '):])
  assert set(report['meshes']) == {'8x1', '4x2', '2x4', '1x8'}
  for mesh, r in report['meshes'].items():
    assert r['max_rel_loss_diff'] <= RTOL, mesh
    assert r['rel_param_diff'] <= RTOL, mesh
    np.testing.assert_allclose(r['losses'], report['reference_losses'], rtol=RTOL)
  # Time sharded 8 ways on a T=16 clip: Conv3D and BiCAM neighbours cross the shard boundaries exactly.
  for key, err in report['forward_time_sharded_max_abs_diff'].items():
    assert err <= 1e-5, key
