"""Checkpoint formats.

The **inference checkpoint** is the one format that conversion, evaluation, inference and training's export
all read and write: a directory holding

  params/        an Orbax PyTree checkpoint of the Flax params (float32)
  config.json    the model config (the keyword arguments of ``VideoFusion``)
  metadata.json  provenance (source, step, versions); informational only

It is written as an ``io.StagedDirectory`` with ``config.json`` published last, so a failed write never leaves
something under the final name that loads (locally one rename; in a bucket the readers require config.json),
and an existing one is never replaced without ``overwrite``. Every path may be local or ``gs://``.
"""

import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vfusion_jax import io

PARAMS_DIR = 'params'
CONFIG_FILE = 'config.json'
METADATA_FILE = 'metadata.json'
FORMAT_VERSION = 1


def _jsonable(value):
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  if isinstance(value, Mapping):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, jnp.dtype) or isinstance(value, type):
    return jnp.dtype(value).name
  return value


def model_config_to_dict(model_config: Mapping[str, Any]) -> dict:
  """A JSON-serialisable copy of the model config (tuples become lists)."""
  if isinstance(model_config, ml_collections.ConfigDict):
    model_config = model_config.to_dict()
  return _jsonable(dict(model_config))


def model_config_from_dict(data: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The inverse of ``model_config_to_dict``: lists become tuples again."""
  return ml_collections.ConfigDict({k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def abstract_params(model_config: Mapping[str, Any]):
  """ShapeDtypeStructs of the params of ``VideoFusion(**model_config)`` on the default device (plain, unboxed)."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from vfusion_jax.models import VideoFusion  # pylint: disable=g-import-not-at-top

  model = VideoFusion(**dict(model_config))
  dummy = jax.ShapeDtypeStruct((1, 2, 4, 4, model.in_channels), jnp.float32)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), dummy, dummy)['params'])
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def save_inference_checkpoint(directory: io.PathLike, params: Any, model_config: Mapping[str, Any], *,
                              overwrite: bool = False, metadata: Mapping[str, Any] | None = None) -> io.Path:
  """Writes ``params`` (a Flax params tree) and ``model_config`` as an inference checkpoint at ``directory``.

  ``directory`` is a local path or a ``gs://`` URL. Raises FileExistsError if it exists and ``overwrite`` is
  False. Returns it as an epath.Path.
  """
  directory = io.check_access(directory)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  info = {'format_version': FORMAT_VERSION, 'jax_version': jax.__version__, **_jsonable(dict(metadata or {}))}
  with io.StagedDirectory(directory, overwrite=overwrite, commit_last=(CONFIG_FILE,)) as staged:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staged.path / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    checkpointer.close()
    io.write_text(staged.path / METADATA_FILE, json.dumps(info, indent=2, sort_keys=True))
    io.write_text(staged.path / CONFIG_FILE,
                  json.dumps(model_config_to_dict(model_config), indent=2, sort_keys=True))
  return directory


def load_model_config(directory: io.PathLike) -> ml_collections.ConfigDict:
  """Reads ``config.json`` of an inference checkpoint (local or ``gs://``)."""
  config_path = io.path(directory) / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f'{directory} is not an inference checkpoint: {CONFIG_FILE} is missing')
  return model_config_from_dict(json.loads(config_path.read_text()))


def load_inference_checkpoint(directory: io.PathLike, model_config: Mapping[str, Any] | None = None):
  """Reads an inference checkpoint (local or ``gs://``) -> (params, model_config).

  If ``model_config`` is given it must describe the same network as the checkpoint's own config (every
  field that changes parameter shapes); the checkpoint's config is returned in any case.
  """
  directory = io.check_access(directory)
  if not directory.exists():
    raise FileNotFoundError(f'checkpoint {directory} does not exist')
  stored = load_model_config(directory)  # Published last: a checkpoint without it is incomplete.
  if not (directory / PARAMS_DIR).is_dir():
    raise FileNotFoundError(f'{directory} is not an inference checkpoint: {PARAMS_DIR}/ is missing')
  if model_config is not None:
    wanted = model_config_to_dict(model_config)
    have = model_config_to_dict(stored)
    diff = {k: (have.get(k), wanted.get(k)) for k in set(have) | set(wanted)
            if k not in ('dtype', 'layer_impl') and have.get(k) != wanted.get(k)}
    if diff:
      raise ValueError(f'checkpoint {directory} was written for another model config; '
                       f'(checkpoint, requested) differ in: {diff}')
  target = abstract_params(stored)
  checkpointer = ocp.StandardCheckpointer()
  params = checkpointer.restore(directory / PARAMS_DIR, target)
  checkpointer.close()
  return params, stored


# ---------------------------------------------------------------------------------------------------------------
# Training checkpoints: an Orbax CheckpointManager with separate items, so that inference and export can read
# the params alone.
# ---------------------------------------------------------------------------------------------------------------

TRAINING_DIR = 'checkpoints'
ITEM_PARAMS = 'params'
ITEM_OPT_STATE = 'opt_state'
ITEM_META = 'meta'  # JSON: step, config; not 'metrics', which Orbax reserves (STACK.md C.3)
ITEM_DATA_ITER = 'data_iter'


def training_manager(workdir: io.PathLike, *, max_to_keep: int = 3,
                     async_save: bool = True) -> ocp.CheckpointManager:
  """The checkpoint manager of a training run: ``<workdir>/checkpoints/<step>/{params,opt_state,meta,...}``.

  ``workdir`` is local or ``gs://``; on an object store Orbax marks a finished step with commit_success.txt
  (no rename there) and ignores steps without it.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                         create=True)
  return ocp.CheckpointManager(io.path(workdir) / TRAINING_DIR, options=options)


def save_training(manager: ocp.CheckpointManager, step: int, params: Any, opt_state: Any,
                  meta: Mapping[str, Any], data_iterator: Any = None) -> None:
  """Saves one training step (asynchronously if the manager is async; call ``wait_until_finished``)."""
  import grain  # pylint: disable=g-import-not-at-top

  items = dict(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
               meta=ocp.args.JsonSave(_jsonable(dict(meta))))
  if data_iterator is not None:
    items[ITEM_DATA_ITER] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore_training(manager: ocp.CheckpointManager, step: int, abstract_params: Any, abstract_opt_state: Any,
                     data_iterator: Any = None):
  """Restores (params, opt_state, meta) of ``step`` onto the shardings of the abstract targets.

  ``data_iterator``, if given, is set to the saved position in place.
  """
  import grain  # pylint: disable=g-import-not-at-top

  items = dict(params=ocp.args.StandardRestore(abstract_params),
               opt_state=ocp.args.StandardRestore(abstract_opt_state), meta=ocp.args.JsonRestore())
  if data_iterator is not None:
    items[ITEM_DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored[ITEM_PARAMS], restored[ITEM_OPT_STATE], restored[ITEM_META]


def restore_training_params(workdir: io.PathLike, step: int | None = None):
  """Reads the params and meta of a training checkpoint (latest step by default) onto one device."""
  directory = io.check_access(workdir) / TRAINING_DIR
  if not directory.is_dir():
    raise FileNotFoundError(f'no training checkpoint under {directory}')
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  steps = manager.all_steps()
  if not steps:
    manager.close()
    raise FileNotFoundError(f'no training checkpoint under {directory}')
  step = max(steps) if step is None else step
  if step not in steps:
    manager.close()
    raise ValueError(f'step {step} is not among the saved steps {sorted(steps)}')
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[ITEM_META]
  model_config = model_config_from_dict(meta['config']['model'])
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params(model_config))))
  manager.close()
  return restored[ITEM_PARAMS], model_config, meta
