"""Official PyTorch VideoFusion weights -> Flax params and the project's inference checkpoint.

Library use::

  params = torch_to_flax(state_dict, model_config)   # state_dict: official name -> numpy array

Command line::

  python -m vfusion_jax.convert --torch_checkpoint net_g_latest.pth --config configs/m3svd.py --output DIR

reads a ``.pth`` (needs torch, which the project does not require) or an ``.npz`` holding ``param/<name>``
arrays (the layout of the shared fixtures) and writes the inference checkpoint (``params/`` + ``config.json``).

Name mapping: a Flax path is the PyTorch name split at the dots, with every numeric index glued to the name
before it (``transformer.0`` -> ``transformer_0``, ``blocks.0.3`` -> ``blocks_0_3``); LayerNorm's
``body.weight``/``body.bias`` become ``scale``/``bias``, a conv ``weight`` becomes ``kernel``.
Layouts: Conv2d OIHW -> HWIO, depthwise (C,1,3,3) -> (3,3,1,C), Conv3d OIDHW -> DHWIO, temperature
(h,1,1) -> (h,).
"""

import re
import sys
from typing import Any, Mapping

import numpy as np

# The release's Cross_TransformerBlock builds a LayerNorm `attn.norm` that forward never calls
# (REFERENCE.md section 3). These names are expected in a state_dict and skipped on purpose.
UNUSED_PARAM_PATTERN = re.compile(r'(^|\.)cross_transformer\.attn\.norm\.body\.(weight|bias)$')

# The official constructor's arguments that have no effect (REFERENCE.md section 3).
_DEAD_OFFICIAL_ARGS = ('embed_dim', 'groups')
_OFFICIAL_TO_PROJECT_ARGS = {'LayerNorm_type': 'layernorm_type'}


def model_config_from_official(options: Mapping[str, Any]) -> dict:
  """Maps the official ``VideoFusion_Trans`` constructor arguments (yml ``network_g``) to ours."""
  config = {}
  for key, value in options.items():
    if key in _DEAD_OFFICIAL_ARGS or key == 'type':
      continue
    key = _OFFICIAL_TO_PROJECT_ARGS.get(key, key)
    config[key] = tuple(value) if isinstance(value, list) else value
  return config


def torch_name_to_flax_path(name: str) -> tuple[str, ...]:
  """'fusion_enhance_1.transformer.0.norm1.body.weight' -> ('fusion_enhance_1', 'transformer_0', 'norm1', 'scale')."""
  parts: list[str] = []
  for segment in name.split('.'):
    if segment.isdigit():
      if not parts:
        raise ValueError(f'parameter name {name!r} starts with an index')
      parts[-1] = f'{parts[-1]}_{segment}'
    else:
      parts.append(segment)
  leaf = parts.pop()
  if parts and parts[-1] == 'body' and leaf in ('weight', 'bias'):  # LayerNorm(...).body
    parts.pop()
    leaf = 'scale' if leaf == 'weight' else 'bias'
  elif leaf == 'weight':
    leaf = 'kernel'
  return tuple(parts) + (leaf,)


def _to_flax_layout(name: str, value: np.ndarray) -> np.ndarray:
  """Moves a PyTorch parameter to the Flax layout (see module docstring)."""
  if name.endswith('temperature'):
    return value.reshape(value.shape[0])
  if value.ndim == 5:
    return value.transpose(2, 3, 4, 1, 0)
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value


def expected_param_shapes(model_config: Mapping[str, Any]) -> dict:
  """The Flax param tree of ``VideoFusion(**model_config)`` as {path tuple: shape}, without running it."""
  import jax  # pylint: disable=g-import-not-at-top
  from vfusion_jax import checkpoint  # pylint: disable=g-import-not-at-top

  leaves = jax.tree_util.tree_flatten_with_path(checkpoint.abstract_params(model_config))[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in leaves}


def torch_to_flax(state_dict: Mapping[str, Any], model_config: Mapping[str, Any]) -> dict:
  """Converts an official state_dict to the Flax params of ``VideoFusion(**model_config)``.

  Args:
    state_dict: official parameter name -> array (numpy, or anything ``np.asarray`` takes), PyTorch layouts.
      A leading ``module.`` (DDP) is stripped.
    model_config: the VideoFusion constructor arguments (a dict or ConfigDict).

  Returns:
    A nested dict of float32 numpy arrays, to be used as ``apply({'params': params}, ...)``.

  Raises:
    ValueError: listing every missing name, unexpected name and shape mismatch. The release's never-used
      ``cross_transformer.attn.norm`` LayerNorm parameters are the only names skipped.
  """
  expected = expected_param_shapes(model_config)
  params: dict = {}
  seen = set()
  unexpected, mismatched = [], []
  for raw_name, value in state_dict.items():
    name = raw_name[len('module.'):] if raw_name.startswith('module.') else raw_name
    if UNUSED_PARAM_PATTERN.search(name):
      continue
    path = torch_name_to_flax_path(name)
    if path not in expected:
      unexpected.append(name)
      continue
    array = _to_flax_layout(name, np.asarray(value, dtype=np.float32))
    if array.shape != expected[path]:
      mismatched.append(f'{name}: got {tuple(np.shape(value))} -> {array.shape}, expected {expected[path]}')
      continue
    seen.add(path)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = array
  missing = sorted('/'.join(p) for p in expected if p not in seen)
  if missing or unexpected or mismatched:
    lines = ['state_dict does not match the model config:']
    for title, items in (('missing', missing), ('unexpected', sorted(unexpected)),
                         ('shape mismatch', mismatched)):
      if items:
        lines.append(f'  {title} ({len(items)}):')
        lines.extend(f'    {item}' for item in items)
    raise ValueError('\n'.join(lines))
  return params


def load_state_dict(path: str) -> dict:
  """Reads official weights: a ``.pth`` (``{'params': state_dict}`` or a bare state_dict) or an ``.npz``.

  The ``.npz`` layout is that of the shared fixtures: arrays under ``param/<official name>``. ``path`` may be
  local or ``gs://`` (read through a local copy).
  """
  from vfusion_jax import io  # pylint: disable=g-import-not-at-top

  if not io.check_access(path).is_file():
    raise FileNotFoundError(f'weights {path} do not exist')
  with io.local_copy(path) as local:
    return _load_local_state_dict(str(path), str(local))


def _load_local_state_dict(path: str, local: str) -> dict:
  if path.endswith('.npz'):
    with np.load(local) as data:
      state = {k[len('param/'):]: data[k] for k in data.files if k.startswith('param/')}
    if not state:
      raise ValueError(f'{path} holds no param/<name> arrays')
    return state
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'reading {path} needs PyTorch, which vfusion-jax does not install: `pip install torch` (CPU is enough), '
        'or save the state_dict as an .npz with param/<name> keys and pass that instead') from e
  checkpoint = torch.load(local, map_location='cpu', weights_only=True)
  if isinstance(checkpoint, dict) and 'params' in checkpoint:
    checkpoint = checkpoint['params']
  return {k: v.detach().cpu().numpy() for k, v in checkpoint.items()}


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from vfusion_jax import checkpoint  # pylint: disable=g-import-not-at-top

  from vfusion_jax import io  # pylint: disable=g-import-not-at-top

  cfg = flags.FLAGS.config
  try:
    state_dict = load_state_dict(flags.FLAGS.torch_checkpoint)
    params = torch_to_flax(state_dict, cfg.model)
    checkpoint.save_inference_checkpoint(flags.FLAGS.output, params, cfg.model, overwrite=flags.FLAGS.overwrite,
                                         metadata={'source': flags.FLAGS.torch_checkpoint})
  except (FileNotFoundError, FileExistsError, ValueError, ImportError, io.StorageError) as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {flags.FLAGS.output} ({sum(np.size(x) for x in _leaves(params)):,} parameters)')


def _leaves(tree):
  for value in tree.values():
    if isinstance(value, dict):
      yield from _leaves(value)
    else:
      yield value


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string('torch_checkpoint', None, 'official net_g_*.pth, or an .npz with param/<name> arrays',
                      required=True)
  config_flags.DEFINE_config_file('config', None, 'config file whose `model` field describes the network, '
                                  'e.g. configs/m3svd.py or configs/m3svd.py:tiny', lock_config=True)
  flags.mark_flag_as_required('config')
  flags.DEFINE_string('output', None, 'inference checkpoint directory to create', required=True)
  flags.DEFINE_bool('overwrite', False, 'replace an existing output directory')


def run():
  """Console script ``vfusion-convert``: defines the flags (importing this module defines none) and runs."""
  from vfusion_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run_program(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
