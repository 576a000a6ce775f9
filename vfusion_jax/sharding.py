"""Device mesh over batch ('data') and time ('time'), logical axis rules, shardings, host-local -> global arrays.

The mesh uses Auto axes (``jax.sharding.Mesh``), the classic GSPMD style: ``jax.make_mesh`` defaults to
Explicit axes since jax 0.9 (STACK.md A.5), which this code does not use.

Logical axes: the model names the axes of its activations (`ACTIVATION_AXES`) and of its parameters (by rank:
every kernel is (..., in, out), `param_logical_axes`); one rules table (``config.sharding.logical_axis_rules``,
`DEFAULT_LOGICAL_AXIS_RULES`) maps each logical name to a mesh axis or None. The default shards clips over
batch and time and replicates parameters; `FSDP_LOGICAL_AXIS_RULES` also splits every large kernel's output
channels over 'data' (and with them its Adam moments), for configs whose parameters and optimiser state
should not be held whole by every device.
"""

import contextlib
import contextvars
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
TIME_AXIS = 'time'
MESH_AXES = (DATA_AXIS, TIME_AXIS)

# Logical names of a (B, T, H, W, C) activation.
ACTIVATION_AXES = ('batch', 'time', 'height', 'width', 'channels')
# Logical names of parameters (and of the optimiser state that mirrors them), by rank.
PARAM_AXES_BY_RANK = {
    0: (),
    1: ('param_channels',),  # biases, LayerNorm scales, attention temperatures
    4: ('kernel_height', 'kernel_width', 'conv_in', 'conv_out'),  # 2-D, depthwise and 1x1 kernels
    5: ('kernel_time', 'kernel_height', 'kernel_width', 'conv_in', 'conv_out'),  # Conv3D kernels
}
DEFAULT_LOGICAL_AXIS_RULES = (
    ('batch', DATA_AXIS),
    ('time', TIME_AXIS),
    ('height', None),
    ('width', None),
    ('channels', None),
    ('param_channels', None),
    ('kernel_time', None),
    ('kernel_height', None),
    ('kernel_width', None),
    ('conv_in', None),
    ('conv_out', None),
)
# FSDP: kernels' output channels (and their Adam moments) split over 'data'; XLA gathers them where used.
FSDP_LOGICAL_AXIS_RULES = tuple((name, DATA_AXIS if name == 'conv_out' else axis)
                                for name, axis in DEFAULT_LOGICAL_AXIS_RULES)
# Parameters with fewer elements stay replicated under FSDP: gathering them costs more than holding them.
DEFAULT_FSDP_MIN_SIZE = 2 ** 14

Rules = Sequence[tuple[str, Optional[str]]]


class MeshError(ValueError):
  """The config's mesh does not fit the devices, the batch or the clip length; the message says how to fix it."""


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, int]:
  """Resolves {'data': d, 'time': t} with at most one -1 ('all remaining devices') to a concrete shape."""
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise MeshError(f'at most one mesh axis may be -1; got {dict(zip(MESH_AXES, sizes))}')
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if num_devices % known:
      raise MeshError(f'{num_devices} devices cannot be split into a mesh with fixed axes of size {known}')
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise MeshError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices; '
                     f'{num_devices} are available')
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Any = None) -> Mesh:
  """A ('data', 'time') mesh over ``devices`` (default: all devices of all processes)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, devices.size)
  return Mesh(devices.reshape(shape), MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def clip_sharding(mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> NamedSharding:
  """Sharding of a (B, T, H, W, C) clip: its 'batch' and 'time' axes by ``rules`` (default: over 'data', 'time')."""
  return NamedSharding(mesh, logical_to_spec(ACTIVATION_AXES[:2], rules))


def check_batch_fits(mesh: Mesh, batch_size: int, num_frames: int) -> None:
  """Raises MeshError if the global batch or clip length does not divide over the mesh."""
  d, t = mesh.shape[DATA_AXIS], mesh.shape[TIME_AXIS]
  if batch_size % d:
    raise MeshError(f'batch_size {batch_size} is not divisible by the data axis ({d} devices): set '
                    f'--config.batch_size to a multiple of {d}, or move devices to the time axis '
                    f'(--config.mesh.time=T --config.mesh.data=-1, with num_frames a multiple of T)')
  if num_frames % t:
    raise MeshError(f'num_frames {num_frames} is not divisible by the time axis ({t} devices): set '
                    f'--config.num_frames to a multiple of {t} or a smaller --config.mesh.time')


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh,
                         rules: Rules = DEFAULT_LOGICAL_AXIS_RULES) -> dict:
  """Builds global arrays from this process's slice of the batch (the whole batch on one host)."""
  sharding = clip_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def _rules_dict(rules: Rules) -> dict:
  table = {}
  for entry in rules:
    name, axis = tuple(entry)
    if axis is not None and axis not in MESH_AXES:
      raise ValueError(f'logical axis {name!r} maps to {axis!r}, which is not a mesh axis {MESH_AXES}')
    table.setdefault(name, axis)  # the first rule of a name wins
  return table


def logical_to_spec(names: Sequence[str], rules: Rules, shape: Optional[Sequence[int]] = None,
                    mesh: Optional[Mesh] = None) -> P:
  """The PartitionSpec of an array whose axes have logical ``names``, under ``rules``.

  Every name must have a rule (a clear error otherwise). A mesh axis is used at most once (later axes that map
  to it stay unsharded). With ``shape`` and ``mesh``, a dimension that the mesh axis does not divide stays
  unsharded, so one rules table serves every parameter size.
  """
  table = _rules_dict(rules)
  missing = [n for n in names if n not in table]
  if missing:
    raise ValueError(f'no logical axis rule for {missing}; the rules table names {sorted(table)}')
  used, spec = set(), []
  for i, name in enumerate(names):
    axis = table[name]
    if axis is not None and (axis in used or (shape is not None and mesh is not None
                                              and shape[i] % mesh.shape[axis])):
      axis = None
    if axis is not None:
      used.add(axis)
    spec.append(axis)
  return P(*spec)


def param_logical_axes(shape: Sequence[int]) -> tuple:
  """Logical axis names of a parameter (or optimiser-state) array of this shape, from its rank."""
  if len(shape) not in PARAM_AXES_BY_RANK:
    raise ValueError(f'no logical axis names for a rank-{len(shape)} parameter of shape {tuple(shape)}')
  return PARAM_AXES_BY_RANK[len(shape)]


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES,
                    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE) -> Any:
  """NamedShardings for every leaf of a params / train-state pytree (of arrays or ShapeDtypeStructs).

  Leaves get their `param_logical_axes` mapped by ``rules``; leaves with fewer than ``fsdp_min_size``
  elements are replicated whatever the rules say.
  """
  def one(leaf):
    shape = tuple(leaf.shape)
    if int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, logical_to_spec(param_logical_axes(shape), rules, shape, mesh))
  return jax.tree.map(one, abstract_state)


_ACTIVE_RULES: contextvars.ContextVar = contextvars.ContextVar('vfusion_jax_activation_rules', default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES):
  """While tracing inside this context, `constrain` pins activations to ``rules`` on ``mesh``."""
  _rules_dict(rules)  # validate early
  token = _ACTIVE_RULES.set((mesh, tuple(tuple(r) for r in rules)))
  try:
    yield
  finally:
    _ACTIVE_RULES.reset(token)


def constrain(x: jax.Array, names: Sequence[str] = ACTIVATION_AXES) -> jax.Array:
  """``with_sharding_constraint`` by logical names under the active `activation_rules`; identity outside."""
  active = _ACTIVE_RULES.get()
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules, x.shape, mesh)))
