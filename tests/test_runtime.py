"""Process set-up of the entry points: allocator tunables (re-exec), XLA flags."""

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
