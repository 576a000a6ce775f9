"""Device mesh over batch ('data') and time ('time'), Flax logical-axis rules -> shardings, host -> global arrays.

The mesh uses Auto axes (``jax.sharding.Mesh``), the classic GSPMD style: ``jax.make_mesh`` defaults to
Explicit axes since jax 0.9 (STACK.md A.5), which this code does not use.

Logical axes are Flax's logical partitioning. The layers declare each parameter with
``nn.with_logical_partitioning`` and the names of its axes (`vfusion_jax.models.layers`: conv kernels
('kernel_height', 'kernel_width', 'conv_in', 'conv_out'), Conv3D kernels with 'kernel_time' first, biases
('conv_out',), LayerNorm scales ('norm_channels',), attention temperatures ('heads',)), and the network pins
its (B, T, H, W, C) activations with ``nn.with_logical_constraint``. One rules table
(``config.sharding.logical_axis_rules``, `DEFAULT_LOGICAL_AXIS_RULES`) maps each name to a mesh axis or None:
through ``nn.logical_axis_rules`` while tracing (`activation_rules`), and through ``nn.get_partition_spec`` +
``nn.logical_to_mesh_axes`` for the train state (`state_shardings`), which adds two rules of its own: leaves
with fewer than ``fsdp_min_size`` elements stay replicated, and a dimension that its mesh axis does not divide
stays unsharded. The default table shards clips over batch and time and replicates parameters;
`FSDP_LOGICAL_AXIS_RULES` also splits large kernels' output channels over 'data', and with them their Adam
moments (``tx.init`` of the boxed params boxes the moments with the same names).
"""

import contextlib
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vfusion_jax.models import layers

DATA_AXIS = 'data'
TIME_AXIS = 'time'
MESH_AXES = (DATA_AXIS, TIME_AXIS)

# Logical names of a (B, T, H, W, C) activation, and every logical name the model declares.
ACTIVATION_AXES = layers.ACTIVATION_AXES
LOGICAL_AXES = ACTIVATION_AXES + layers.PARAM_AXES
DEFAULT_LOGICAL_AXIS_RULES = (
    ('batch', DATA_AXIS),
    ('time', TIME_AXIS),
    ('height', None),
    ('width', None),
    ('channels', None),
    ('kernel_time', None),
    ('kernel_height', None),
    ('kernel_width', None),
    ('conv_in', None),
    ('conv_out', None),
    ('norm_channels', None),
    ('heads', None),
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


def validate_rules(rules: Rules) -> tuple:
  """``rules`` as a tuple of (logical name, mesh axis or None) pairs, in Flax's order of precedence.

  Raises ValueError for a name the model does not declare (a typo would otherwise leave its axis silently
  unsharded) or a mesh axis other than 'data' and 'time'. A name without a rule stays unsharded (Flax's rule).
  """
  checked = []
  for entry in rules:
    name, axis = tuple(entry)
    if name not in LOGICAL_AXES:
      raise ValueError(f'logical axis rule {(name, axis)}: the model has no logical axis {name!r}; '
                       f'its names are {LOGICAL_AXES}')
    axis = tuple(axis) if isinstance(axis, list) else axis
    if any(a is not None and a not in MESH_AXES for a in (axis if isinstance(axis, tuple) else (axis,))):
      raise ValueError(f'logical axis {name!r} maps to {axis!r}, which is not a mesh axis {MESH_AXES}')
    checked.append((name, axis))
  return tuple(checked)


def _mesh_axis_size(mesh: Mesh, axis: Any) -> int:
  return int(np.prod([mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,))]))


def logical_to_spec(names: Sequence[Optional[str]], rules: Rules, shape: Optional[Sequence[int]] = None,
                    mesh: Optional[Mesh] = None) -> P:
  """The mesh PartitionSpec of an array whose axes have logical ``names``: Flax's ``nn.logical_to_mesh_axes``.

  Rules apply in order, a mesh axis is used at most once per array, and names without a rule are unsharded.
  With ``shape`` and ``mesh``, a dimension that its mesh axis does not divide stays unsharded too, so one
  rules table serves every parameter size.
  """
  spec = nn.logical_to_mesh_axes(tuple(names), validate_rules(rules))
  if shape is None or mesh is None:
    return spec
  return P(*(None if axis is not None and shape[i] % _mesh_axis_size(mesh, axis) else axis
             for i, axis in enumerate(spec)))


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES,
                    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE) -> Any:
  """NamedShardings for a params / train-state pytree that still holds its ``nn.LogicallyPartitioned`` boxes.

  ``abstract_state``: e.g. ``jax.eval_shape`` of an init that keeps the boxes (``train_lib.init_state(...,
  boxed=True)``). Boxed leaves get their logical names (``nn.get_partition_spec``) mapped by `logical_to_spec`
  with their shape; plain leaves (step counters) and leaves with fewer than ``fsdp_min_size`` elements are
  replicated whatever the rules say. Returns the structure of ``nn.unbox(abstract_state)``.
  """
  rules = validate_rules(rules)

  def one(names: P, leaf: Any) -> NamedSharding:
    shape = tuple(leaf.shape)
    if int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, logical_to_spec(tuple(names), rules, shape, mesh))

  return jax.tree.map(one, nn.get_partition_spec(abstract_state), nn.unbox(abstract_state))


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules = DEFAULT_LOGICAL_AXIS_RULES):
  """While tracing inside, the network's ``nn.with_logical_constraint`` pins activations by ``rules`` on ``mesh``.

  Enters ``jax.set_mesh(mesh)`` and Flax's ``nn.logical_axis_rules(rules)``; outside, the constraints are the
  identity (single-device inference needs neither).
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(validate_rules(rules)):
    yield
