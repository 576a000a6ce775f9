"""Process-wide JAX settings of the project's entry points."""

import os

import jax

CACHE_ENV = 'VFUSION_JAX_CACHE_DIR'
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'vfusion_jax', 'xla')
# XLA:CPU's default scheduler orders the HLO for concurrency, which keeps many backward-pass buffers alive at
# once: the VideoFusion train step needed 2.5x more temporary memory with it (and rematerialisation had no
# effect). The memory-optimised scheduler is as fast or faster on this 2-core CPU (docs/benchmarks.md).
CPU_XLA_FLAGS = ('--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',)

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


def configure_xla_flags() -> None:
  """Adds the project's XLA:CPU flags to $XLA_FLAGS (flags already there win).

  XLA reads $XLA_FLAGS when JAX starts its first backend, so call this before any array is created (entry
  points call it at import time).
  """
  current = os.environ.get('XLA_FLAGS', '')
  present = {f.split('=')[0] for f in current.split()}
  extra = [f for f in CPU_XLA_FLAGS if f.split('=')[0] not in present]
  if extra:
    os.environ['XLA_FLAGS'] = ' '.join([current] + extra).strip()
