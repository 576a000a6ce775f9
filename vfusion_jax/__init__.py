"""vfusion-jax: a JAX/Flax reimplementation of VideoFusion (Tang et al., CVPR 2026).

Heavy submodules are imported lazily so that data workers importing ``vfusion_jax.data`` do not pay for JAX.
"""

import importlib

__version__ = '0.1.0'

_LAZY = {'fuse': 'vfusion_jax.inference', 'VideoFusion': 'vfusion_jax.models'}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
