"""The prepared device benchmark (benchmarks/device_suite.py): its CPU smoke run and its MFU peak table."""

import json
import math
import os
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
import device_suite  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_device_suite_smoke_runs_on_the_cpu(tmp_path):
  out = tmp_path / 'suite.json'
  # The smoke run checks that the script works, not how fast: XLA's optimisations off keeps compiles short.
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1', VFUSION_JAX_CACHE_DIR='')
  proc = subprocess.run([sys.executable, 'benchmarks/device_suite.py', '--smoke', '--no_torch', f'--json={out}'],
                        cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  assert [(r['case'], r['dtype']) for r in results] == list(device_suite.SMOKE_RUNS)
  for r in results:
    assert r['framework'] == 'jax' and r['platform'] == 'cpu' and not r.get('skipped'), r
    assert r['seconds'] > 0 and r['compile_s'] > 0 and r['flops'] > 1e6 and r['peak_gib'] > 0, r
    assert math.isclose(r['flops_per_s'], r['flops'] / r['seconds'])
  assert '| jax | train_b1 | bfloat16 | 1×2×32×32 |' in proc.stdout
  assert 'MFU n/a' in proc.stdout  # a CPU has no entry in the peak table


def test_peak_flops_picks_the_most_specific_chip():
  assert device_suite.peak_flops('NVIDIA H200', 'bfloat16') == 989e12
  assert device_suite.peak_flops('NVIDIA H100 PCIe', 'float32') == 378e12  # not the SXM part's
  assert device_suite.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert device_suite.peak_flops('TPU v5 lite', 'bfloat16') == 197e12  # v5e, not v5p
  assert device_suite.peak_flops('TPU v5p', 'bfloat16') == 459e12
  assert device_suite.peak_flops('cpu', 'float32') is None
