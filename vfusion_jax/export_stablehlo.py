r"""Serialises the jitted inference function of a checkpoint with ``jax.export`` (StableHLO + weights).

  python -m vfusion_jax.export_stablehlo --checkpoint DIR --window 7,480,640 --output videofusion_T7_480x640.jaxexp

The file holds one function ``(ir, vi) -> {'fusion', 'ir', 'vi'}`` for fixed shapes ir (B, T, H, W, C_ir) and
vi (B, T, H, W, 3), float32 in [0, 1]; outputs float32 (B, T, H, W, 3) in (0, 1). The params are baked in as
constants, so the file runs with JAX alone, without this project or Flax::

  import jax
  exported = jax.export.deserialize(open(path, 'rb').read())
  out = exported.call(ir, vi)   # or jax.jit(exported.call)

H and W must be multiples of 4 (pad with ``windows.pad_to_multiple`` and crop back), T >= 2. A JSON sidecar
``<output>.json`` records the shapes, platforms, model config and versions. Both files are written atomically
(``vfusion_jax.io``; local or ``gs://``), and an existing output is only replaced with ``--overwrite``.
"""

import json
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from vfusion_jax import io
from vfusion_jax import windows

PathLike = io.PathLike

SIDECAR_SUFFIX = '.json'
DEFAULT_PLATFORMS = ('cpu',)
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def parse_window(text: str) -> tuple[int, int, int]:
  """'T,H,W' -> (T, H, W), checked: T >= 2, H and W positive multiples of 4."""
  try:
    t, h, w = (int(v) for v in text.split(','))
  except ValueError:
    raise ValueError(f'--window must be T,H,W (three integers), got {text!r}') from None
  if t < windows.MIN_MODEL_FRAMES:
    raise ValueError(f'the window needs T >= {windows.MIN_MODEL_FRAMES} frames, got {t}')
  if h <= 0 or w <= 0 or h % windows.SPATIAL_MULTIPLE or w % windows.SPATIAL_MULTIPLE:
    raise ValueError(f'H and W must be positive multiples of {windows.SPATIAL_MULTIPLE}, got {h}x{w} '
                     '(pad frames with windows.pad_to_multiple and crop the outputs back)')
  return t, h, w


def export_model(params: Any, model_config: Mapping[str, Any], window: Sequence[int], *, batch: int = 1,
                 ir_channels: int = 3, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
  """``jax.export`` of ``VideoFusion(**model_config).apply`` with ``params`` baked in, for one input shape.

  Args:
    params: the Flax params.
    model_config: the model config (checkpoint config.json).
    window: (T, H, W).
    batch: B.
    ir_channels: 1 or the model's in_channels (3): channels of the IR input.
    platforms: lowering platforms ('cpu', 'cuda', 'rocm', 'tpu').
  """
  from vfusion_jax.models import VideoFusion  # pylint: disable=g-import-not-at-top

  t, h, w = window
  unknown = set(platforms) - set(PLATFORMS)
  if unknown or not platforms:
    raise ValueError(f'platforms must be some of {PLATFORMS}, got {list(platforms)}')
  if batch < 1:
    raise ValueError(f'batch must be >= 1, got {batch}')
  config = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()}
  model = VideoFusion(**config)
  if ir_channels not in (1, model.in_channels):
    raise ValueError(f'ir_channels must be 1 or {model.in_channels}, got {ir_channels}')
  params = jax.tree.map(jnp.asarray, params)

  def infer_fn(ir, vi):
    return model.apply({'params': params}, ir, vi)

  ir_spec = jax.ShapeDtypeStruct((batch, t, h, w, ir_channels), jnp.float32)
  vi_spec = jax.ShapeDtypeStruct((batch, t, h, w, model.in_channels), jnp.float32)
  return jax.export.export(jax.jit(infer_fn), platforms=tuple(platforms))(ir_spec, vi_spec)


def save_exported(exported: jax.export.Exported, path: PathLike, *, overwrite: bool = False,
                  metadata: Optional[Mapping[str, Any]] = None) -> io.Path:
  """Writes ``exported.serialize()`` to ``path`` and a JSON sidecar ``<path>.json``; returns ``path``."""
  path = io.check_access(path)
  sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
  if not io.is_remote(path) and not path.parent.is_dir():
    raise FileNotFoundError(f'output directory {path.parent} does not exist')
  for target in (path, sidecar):
    if target.exists() and not overwrite:
      raise FileExistsError(f'{target} already exists; pass --overwrite to replace it')
  info = {
      'inputs': {'ir': _aval(exported.in_avals[0]), 'vi': _aval(exported.in_avals[1])},
      'outputs': {k: _aval(a) for k, a in zip(('fusion', 'ir', 'vi'), exported.out_avals)},
      'platforms': list(exported.platforms),
      'calling_convention_version': exported.calling_convention_version,
      'jax_version': jax.__version__,
      'usage': "jax.export.deserialize(open(path, 'rb').read()).call(ir, vi) -> {'fusion', 'ir', 'vi'}",
      **dict(metadata or {}),
  }
  io.write_bytes(path, bytes(exported.serialize()))
  io.write_text(sidecar, json.dumps(info, indent=2, sort_keys=True, default=str) + '\n')
  return path


def _aval(aval) -> dict:
  return {'shape': [int(d) for d in aval.shape], 'dtype': str(aval.dtype)}


def load_exported(path: PathLike) -> jax.export.Exported:
  """Reads a file written by ``save_exported`` (needs only JAX)."""
  return jax.export.deserialize(bytearray(io.path(path).read_bytes()))


def export_checkpoint(checkpoint_dir: PathLike, output: PathLike, window: Sequence[int], *, batch: int = 1,
                      ir_channels: int = 3, platforms: Sequence[str] = DEFAULT_PLATFORMS,
                      model_config: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> io.Path:
  """Loads an inference checkpoint and writes its exported inference function to ``output``."""
  from vfusion_jax import checkpoint  # pylint: disable=g-import-not-at-top

  output = io.check_access(output)
  if output.exists() and not overwrite:  # Fail before the slow export.
    raise FileExistsError(f'{output} already exists; pass --overwrite to replace it')
  if not io.check_access(checkpoint_dir).is_dir():
    raise FileNotFoundError(f'checkpoint {checkpoint_dir} does not exist')
  params, stored = checkpoint.load_inference_checkpoint(str(checkpoint_dir), model_config)
  exported = export_model(params, stored, window, batch=batch, ir_channels=ir_channels, platforms=platforms)
  return save_exported(exported, output, overwrite=overwrite, metadata={
      'checkpoint': str(io.path(checkpoint_dir)),
      'model_config': checkpoint.model_config_to_dict(stored),
      'window': {'T': window[0], 'H': window[1], 'W': window[2]},
  })


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string('checkpoint', None, 'inference checkpoint directory', required=True)
  flags.DEFINE_string('window', None, 'input shape T,H,W (H, W multiples of 4)', required=True)
  flags.DEFINE_string('output', None, 'file to write (plus <output>.json)', required=True)
  flags.DEFINE_integer('batch', 1, 'batch size B of the exported function')
  flags.DEFINE_enum('ir_channels', '3', ['1', '3'], 'channels of the IR input')
  flags.DEFINE_list('platforms', list(DEFAULT_PLATFORMS), f'lowering platforms, some of {PLATFORMS}')
  flags.DEFINE_bool('overwrite', False, 'replace an existing output')


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise SystemExit(f'error: unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  if not f['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    path = export_checkpoint(f.checkpoint, f.output, parse_window(f.window), batch=f.batch,
                             ir_channels=int(f.ir_channels), platforms=f.platforms, overwrite=f.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError, io.StorageError) as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {path} ({path.stat().length:,} bytes) and {path.name}{SIDECAR_SUFFIX}')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main)
