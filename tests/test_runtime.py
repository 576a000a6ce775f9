"""Process set-up of the entry points: allocator tunables (re-exec), XLA flags."""

import fnmatch
import os
import subprocess
import sys

import pytest

from conftest import REPO
from vfusion_jax import runtime


def test_allocator_tunables_keep_the_users_settings():
  assert runtime.allocator_tunables('') == ':'.join(runtime.ALLOCATOR_TUNABLES)
  merged = runtime.allocator_tunables('glibc.malloc.hugetlb=0:glibc.cpu.x86_foo=1')
  items = merged.split(':')
  assert items[:2] == ['glibc.malloc.hugetlb=0', 'glibc.cpu.x86_foo=1']  # the user's value wins
  assert 'glibc.malloc.hugetlb=1' not in items
  assert set(runtime.ALLOCATOR_TUNABLES[1:]) <= set(items)


def _child_tunables(env_extra):
  code = ('import os, sys; from vfusion_jax import runtime; runtime.use_tuned_allocator(); '
          'print("TUNABLES=" + os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])')
  env = dict(os.environ, PYTHONPATH=str(REPO), **env_extra)
  env.pop('_VFUSION_JAX_ALLOCATOR_SET', None)
  out = subprocess.run([sys.executable, '-c', code, 'arg1', '--flag=2'], env=env, capture_output=True, text=True,
                       check=True).stdout
  line = [l for l in out.splitlines() if l.startswith('TUNABLES=')]
  assert len(line) == 1, out  # printed once: by the re-executed process only
  return line[0]


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc tunables are Linux-only')
def test_entry_points_re_execute_with_the_tunables_and_the_same_arguments():
  line = _child_tunables({'GLIBC_TUNABLES': ''})
  assert line.startswith('TUNABLES=' + ':'.join(runtime.ALLOCATOR_TUNABLES))
  assert line.endswith("['arg1', '--flag=2']")
  assert _child_tunables({runtime.ALLOCATOR_ENV: 'default', 'GLIBC_TUNABLES': ''}).startswith('TUNABLES= ')
  # On an accelerator nothing CPU-specific is applied: no re-execution, no tunables.
  assert _child_tunables({'JAX_PLATFORMS': 'tpu', 'GLIBC_TUNABLES': ''}).startswith('TUNABLES= ')


def _child_xla_flags(env_extra):
  code = 'import os; from vfusion_jax import runtime; runtime.configure_xla_flags(); print(os.environ["XLA_FLAGS"])'
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS='--xla_dump_to=/nowhere', **env_extra)
  return subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                        check=True).stdout.split()


def test_cpu_xla_flags_only_when_jax_runs_on_the_cpu():
  assert _child_xla_flags({'JAX_PLATFORMS': 'cpu'}) == ['--xla_dump_to=/nowhere', *runtime.CPU_XLA_FLAGS]
  for platform in ('cuda', 'tpu,cpu'):
    assert _child_xla_flags({'JAX_PLATFORMS': platform}) == ['--xla_dump_to=/nowhere']


@pytest.mark.parametrize('plugin, device_node, expected', [
    ('libtpu', '/dev/vfio/0', 'tpu'),
    ('jax_cuda12_plugin', '/dev/nvidiactl', 'gpu'),
    ('jax_cuda12_plugin', None, 'cpu'),  # plugin installed, no GPU on this machine
    (None, '/dev/nvidiactl', 'cpu'),  # a GPU, but JAX has no plugin for it
])
def test_expected_platform_without_jax_platforms(monkeypatch, plugin, device_node, expected):
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.setattr(runtime, '_importable', lambda module: module == plugin)
  monkeypatch.setattr(runtime.glob, 'glob',
                      lambda pattern: [device_node] if device_node and fnmatch.fnmatch(device_node, pattern) else [])
  assert runtime.expected_platform() == expected
