"""Device mesh over batch ('data') and time ('time'), shardings, and host-local -> global arrays.

The mesh uses Auto axes (``jax.sharding.Mesh``), the classic GSPMD style: ``jax.make_mesh`` defaults to
Explicit axes since jax 0.9 (STACK.md A.5), which this code does not use.
"""

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
TIME_AXIS = 'time'
MESH_AXES = (DATA_AXIS, TIME_AXIS)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, int]:
  """Resolves {'data': d, 'time': t} with at most one -1 ('all remaining devices') to a concrete shape."""
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1; got {dict(zip(MESH_AXES, sizes))}')
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if num_devices % known:
      raise ValueError(f'{num_devices} devices cannot be split into a mesh with fixed axes of size {known}')
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices; '
                     f'{num_devices} are available')
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Any = None) -> Mesh:
  """A ('data', 'time') mesh over ``devices`` (default: all devices of all processes)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, devices.size)
  return Mesh(devices.reshape(shape), MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def clip_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a (B, T, H, W, C) clip: batch over 'data', frames over 'time'."""
  return NamedSharding(mesh, P(DATA_AXIS, TIME_AXIS))


def check_batch_fits(mesh: Mesh, batch_size: int, num_frames: int) -> None:
  """Raises ValueError if the global batch or clip length does not divide over the mesh."""
  d, t = mesh.shape[DATA_AXIS], mesh.shape[TIME_AXIS]
  if batch_size % d:
    raise ValueError(f'batch_size {batch_size} is not divisible by the data axis ({d} devices)')
  if num_frames % t:
    raise ValueError(f'num_frames {num_frames} is not divisible by the time axis ({t} devices)')


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Builds global arrays from this process's slice of the batch (the whole batch on one host)."""
  sharding = clip_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
