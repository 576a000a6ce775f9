"""Two JAX processes (2 CPU devices each, coordinator on 127.0.0.1) train like one process with 4 devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from vfusion_jax import checkpoint

STEPS = 2
# Both runs see the same 4 clips per step, in another order inside the global batch (each process reads its
# own slice of the stream), so only the summation order of the batch mean differs. The whole param tree must
# agree to 1e-5 of its norm. Element-wise, Adam divides by sqrt(v), which turns a float32 rounding difference of
# a near-zero gradient into an update difference of up to a few 1e-7 (seen: 2.3e-7); ATOL is 1 % of one
# update at the demo's learning rate of 1e-3.
RTOL = 1e-5
ATOL = 1e-5

COMMON = [f'--config.total_steps={STEPS}', f'--config.checkpoint_every_steps={STEPS}', '--config.batch_size=4',
          '--config.num_frames=3', '--config.crop_size=32', '--config.log_every_steps=1',
          '--config.preview_every_steps=0', '--config.preview_video_frames=0', '--config.mesh.data=-1']


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices):
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', VFUSION_JAX_CACHE_DIR='',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def _train(workdir, extra, env):
  return subprocess.Popen([sys.executable, str(REPO / 'train.py'), '--config=' + str(REPO / 'configs' / 'demo.py'),
                           f'--workdir={workdir}'] + COMMON + extra, env=env, cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  single = _train(tmp_path / 'single', [], _env(4))
  single_out, _ = single.communicate(timeout=2400)
  assert single.returncode == 0, single_out[-3000:]

  port = _free_port()
  procs = [_train(tmp_path / 'multi', ['--config.distributed.enabled=True',
                                       f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                                       '--config.distributed.num_processes=2',
                                       f'--config.distributed.process_id={i}'], _env(2)) for i in range(2)]
  outputs = [p.communicate(timeout=2400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert 'process 1 of 2' in outputs[1]

  params_single, _, meta_single = checkpoint.restore_training_params(str(tmp_path / 'single'))
  params_multi, _, meta_multi = checkpoint.restore_training_params(str(tmp_path / 'multi'))
  assert meta_single['step'] == meta_multi['step'] == STEPS
  leaves_multi = [np.asarray(a, np.float64) for a in jax.tree.leaves(params_multi)]
  leaves_single = [np.asarray(b, np.float64) for b in jax.tree.leaves(params_single)]
  diff = sum(float(np.sum((a - b) ** 2)) for a, b in zip(leaves_multi, leaves_single)) ** 0.5
  norm = sum(float(np.sum(b ** 2)) for b in leaves_single) ** 0.5
  assert diff / norm <= RTOL
  for a, b in zip(leaves_multi, leaves_single):
    np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
  # Logs come from process 0 only: one metrics file with one line per step.
  lines = (tmp_path / 'multi' / 'metrics.jsonl').read_text().strip().splitlines()
  assert len(lines) == STEPS
