"""Fusing clips of any size with a converted or trained model: ``vfusion_jax.fuse``."""

import functools
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vfusion_jax.models import VideoFusion, validate_inputs
from vfusion_jax.models.network import SPATIAL_MULTIPLE, check_value_range
from vfusion_jax.windows import crop, pad_to_multiple


def _model_config(config: Any) -> dict:
  """Accepts a full experiment config (with ``.model``) or the model config itself."""
  if isinstance(config, Mapping) and 'model' in config:
    model_config = config['model']
  else:
    model_config = getattr(config, 'model', config)
  if hasattr(model_config, 'to_dict'):
    model_config = model_config.to_dict()
  return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()}


@functools.lru_cache(maxsize=8)
def _jitted_apply(frozen_config: str):
  model = VideoFusion(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(frozen_config).items()})
  return jax.jit(model.apply)


def fuse(params: Any, config: Any, ir: Any, vi: Any) -> dict:
  """Fuses a registered infrared/visible clip of any spatial size.

  Args:
    params: the Flax params of ``VideoFusion`` (e.g. from ``checkpoint.load_inference_checkpoint``).
    config: the experiment config (with ``.model``) or the model config.
    ir: float (B, T, H, W, 1 or 3) or (T, H, W, 1 or 3) in [0, 1].
    vi: float (B, T, H, W, 3) or (T, H, W, 3) in [0, 1], registered to ``ir``.

  Returns:
    {'fusion', 'ir', 'vi'} as numpy float32 arrays of the input's leading shape, (..., T, H, W, 3) in (0, 1).
    H and W need not be multiples of 4: the clip is reflect-padded at the bottom/right and the outputs cropped
    back, as the official test script does.
  """
  ir, vi = np.asarray(ir), np.asarray(vi)
  unbatched = ir.ndim == 4 and vi.ndim == 4
  if unbatched:
    ir, vi = ir[None], vi[None]
  model_config = _model_config(config)
  # Check everything but the size rule (handled by padding) on the caller's arrays, for clear messages.
  h, w = vi.shape[2:4] if vi.ndim == 5 else (0, 0)
  probe_h, probe_w = h + (-h % SPATIAL_MULTIPLE), w + (-w % SPATIAL_MULTIPLE)
  validate_inputs(jax.ShapeDtypeStruct(ir.shape[:2] + (probe_h, probe_w) + ir.shape[4:], ir.dtype),
                  jax.ShapeDtypeStruct(vi.shape[:2] + (probe_h, probe_w) + vi.shape[4:], vi.dtype),
                  model_config.get('in_channels', 3))
  check_value_range('ir', ir)
  check_value_range('vi', vi)
  ir_p, (h, w) = pad_to_multiple(ir.astype(np.float32))
  vi_p, _ = pad_to_multiple(vi.astype(np.float32))
  apply = _jitted_apply(json.dumps(model_config, sort_keys=True))
  out = apply({'params': params}, jnp.asarray(ir_p), jnp.asarray(vi_p))
  out = {k: crop(np.asarray(v), (h, w)) for k, v in out.items()}
  return {k: v[0] for k, v in out.items()} if unbatched else out
