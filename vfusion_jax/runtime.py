"""Process-wide settings of the project's entry points: allocator, XLA:CPU flags, compilation cache."""

import glob
import importlib.util
import os
import platform
import sys

import jax

CACHE_ENV = 'VFUSION_JAX_CACHE_DIR'
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'vfusion_jax', 'xla')
# XLA:CPU's default scheduler orders the HLO for concurrency, which keeps many backward-pass buffers alive at
# once: the VideoFusion train step needed 2.5x more temporary memory with it (and rematerialisation had no
# effect). The memory-optimised scheduler is as fast or faster on this 2-core CPU (docs/benchmarks.md).
CPU_XLA_FLAGS = ('--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',)

# glibc malloc settings for XLA:CPU's large, short-lived buffers (docs/performance.md). By default every buffer
# over 32 MiB is a fresh mmap whose 4 KiB pages fault in on first touch. hugetlb=1: transparent huge pages for
# malloc'd memory (the kernel's THP mode is 'madvise' here); mmap_max=0: large buffers come from the heap and
# are reused; trim_threshold: freed memory is kept for the next step. The released train step ran 1.38x faster
# with them (17.78 -> 12.87 s); the forward alone ran ~8 % slower on the AVX-512 EPYC (faster on the other CPUs
# measured), so only training uses them. glibc reads GLIBC_TUNABLES only at process start-up.
ALLOCATOR_TUNABLES = ('glibc.malloc.hugetlb=1', 'glibc.malloc.mmap_max=0', 'glibc.malloc.trim_threshold=68719476736')
ALLOCATOR_ENV = 'VFUSION_JAX_ALLOCATOR'  # 'default' keeps glibc's defaults
_REEXEC_MARK = '_VFUSION_JAX_ALLOCATOR_SET'

# What makes JAX pick an accelerator over the CPU when $JAX_PLATFORMS is unset: its plugin is installed and
# its device nodes exist (both checked, so a CPU machine with a plugin installed still counts as CPU).
ACCELERATOR_PLUGINS = {
    'gpu': (('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin', 'jax_rocm7_plugin'),
            ('/dev/nvidiactl', '/dev/nvidia[0-9]*', '/dev/kfd')),
    'tpu': (('libtpu',), ('/dev/accel[0-9]*', '/dev/vfio/[0-9]*')),
}

# Only compilations slower than this are cached (tiny helper jits are cheaper to recompile than to look up).
MIN_CACHED_COMPILE_SECONDS = 1.0


def enable_compilation_cache(cache_dir: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache, so a second run skips XLA compilation.

  The directory is ``cache_dir``, else $VFUSION_JAX_CACHE_DIR, else ~/.cache/vfusion_jax/xla; an empty
  $VFUSION_JAX_CACHE_DIR disables the cache. Returns the directory in use (None if disabled).
  """
  cache_dir = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR)
  if not cache_dir:
    return None
  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_CACHED_COMPILE_SECONDS)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return cache_dir


def expected_platform() -> str:
  """'cpu', 'gpu' or 'tpu': the platform JAX will run this process on, decided before any backend starts.

  XLA flags and glibc tunables must be set before JAX starts, so the answer cannot come from
  ``jax.devices()``. $JAX_PLATFORMS wins when set (its first entry; 'cuda' and 'rocm' count as 'gpu');
  otherwise a TPU, then a GPU, whose plugin is installed and whose device nodes exist; otherwise 'cpu'.
  """
  requested = os.environ.get('JAX_PLATFORMS', '').split(',')[0].strip().lower()
  if requested:
    return 'gpu' if requested in ('cuda', 'rocm') else requested
  for name in ('tpu', 'gpu'):
    plugins, device_nodes = ACCELERATOR_PLUGINS[name]
    if any(_importable(p) for p in plugins) and any(glob.glob(pattern) for pattern in device_nodes):
      return name
  return 'cpu'


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def configure_xla_flags() -> None:
  """Adds the project's XLA:CPU flags to $XLA_FLAGS (flags already there win); only when JAX will run on the
  CPU (`expected_platform`): nothing CPU-specific is applied on an accelerator.

  XLA reads $XLA_FLAGS when JAX starts its first backend, so call this before any array is created (entry
  points call it at import time).
  """
  if expected_platform() != 'cpu':
    return
  current = os.environ.get('XLA_FLAGS', '')
  present = {f.split('=')[0] for f in current.split()}
  extra = [f for f in CPU_XLA_FLAGS if f.split('=')[0] not in present]
  if extra:
    os.environ['XLA_FLAGS'] = ' '.join([current] + extra).strip()


def allocator_tunables(current: str = '') -> str:
  """``current`` GLIBC_TUNABLES plus `ALLOCATOR_TUNABLES` whose names it does not already set (the user's win)."""
  present = {item.split('=')[0] for item in current.split(':') if item}
  extra = [t for t in ALLOCATOR_TUNABLES if t.split('=')[0] not in present]
  return ':'.join(([current] if current else []) + extra)


def use_tuned_allocator() -> None:
  """Re-executes this process once with the project's glibc malloc tunables (`ALLOCATOR_TUNABLES`).

  glibc reads GLIBC_TUNABLES only at start-up, so an entry point calls this first thing; the re-executed
  process finds the tunables set and goes on. No-op off Linux/glibc, when JAX will not run on the CPU (the
  tunables were measured for XLA:CPU's buffers), when $VFUSION_JAX_ALLOCATOR=default, or when every tunable is
  already set.
  """
  if (sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc' or os.environ.get(_REEXEC_MARK)
      or os.environ.get(ALLOCATOR_ENV, 'tuned') == 'default' or expected_platform() != 'cpu'):
    return
  current = os.environ.get('GLIBC_TUNABLES', '')
  tunables = allocator_tunables(current)
  if tunables == current:
    return
  env = dict(os.environ, GLIBC_TUNABLES=tunables, **{_REEXEC_MARK: '1'})
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def setup_process(tuned_allocator: bool = True) -> None:
  """What every entry point does before importing the rest: allocator, XLA flags, compilation cache.

  ``tuned_allocator``: training wants it (the released train step ran 1.38x faster); forward-only work
  (eval, infer) goes without (its forward ran ~8 % slower with it on the AVX-512 EPYC, though faster on the Xeon
  and the AVX2 EPYC: docs/performance.md).
  """
  if tuned_allocator:
    use_tuned_allocator()
  configure_xla_flags()
  enable_compilation_cache()
