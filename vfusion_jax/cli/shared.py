"""The flags ``vfusion-eval`` and ``vfusion-infer`` share, defined once.

Both programs run the network over videos with ``windows.stream_windows`` and save fused frames the same way,
so the options of that are one ConfigDict, ``fuse_config()``, set with ``--fuse.<field>=<value>`` as train.py
sets ``--config.<field>``:

  --fuse.window=7 --fuse.overlap=2 --fuse.rule=center --fuse.tile_size=512 --fuse.tile_overlap=32
  --fuse.fused_minmax=false --fuse.fps=25

``--checkpoint``, ``--config`` and ``--overwrite`` are plain flags of both programs. The fields were flags of
their own before (``--window=7``). They are not kept as aliases: config_flags defines a field's flag only when
the field appears on the command line, so ``flags.DEFINE_alias`` cannot point at it. ``flags_parser`` names the
new spelling when it meets an old one (`renamed_flag_error`).
"""

import dataclasses
import sys
import types
from typing import Callable

from absl import flags
from ml_collections import config_dict
from ml_collections import config_flags

from vfusion_jax import cli
from vfusion_jax import runtime
from vfusion_jax import windows

FUSE_FLAG = 'fuse'
FUSE_HELP = (
    'fusion options, set as --fuse.<field>=<value>: window (frames per model call, T >= 2), overlap (frames '
    'shared by consecutive windows), rule (how overlapping predictions combine: blend, center = each frame '
    'once, official = the later window wins), tile_size (frames larger than this, in pixels, are fused in '
    'tiles; a multiple of 4; 0 = never), tile_overlap (minimum overlap of tiles, pixels), fused_minmax (save '
    'fused frames with the per-frame min-max stretch of the release, METRICS.md 1; false = clip and round), '
    'fps (frame rate of video outputs; default: the input\'s, else 30)')


def fuse_config() -> config_dict.ConfigDict:
  """The fusion options and their defaults: ``windows.WindowConfig``'s fields, ``fused_minmax`` and ``fps``."""
  defaults = windows.WindowConfig()
  return config_dict.ConfigDict({
      'window': defaults.window,
      'overlap': defaults.overlap,
      'rule': defaults.rule,
      'tile_size': defaults.tile_size,
      'tile_overlap': defaults.tile_overlap,
      'fused_minmax': True,
      'fps': config_dict.placeholder(float),
  })


def window_config(fuse: config_dict.ConfigDict) -> windows.WindowConfig:
  """The ``windows.WindowConfig`` of the fusion options; ValueError for values out of range."""
  return windows.WindowConfig(fuse.window, fuse.overlap, fuse.rule, fuse.tile_size, fuse.tile_overlap)


@dataclasses.dataclass(frozen=True)
class SharedFlags:
  """Holders of the shared flags (``.value`` after parsing)."""
  checkpoint: flags.FlagHolder
  config: flags.FlagHolder
  overwrite: flags.FlagHolder
  fuse: flags.FlagHolder


def define_flags() -> SharedFlags:
  """Defines --checkpoint (required), --config, --overwrite and --fuse; call once, from a program's ``run()``.

  config_flags applies the ``--fuse.<field>`` overrides of ``sys.argv`` here: an unknown field exits.
  """
  checkpoint = flags.DEFINE_string('checkpoint', None, 'inference checkpoint directory (params/ + config.json)',
                                   required=True)
  config = config_flags.DEFINE_config_file('config', None, 'experiment config (configs/*.py[:variant]); the '
                                           'checkpoint must match its model section', lock_config=True)
  overwrite = flags.DEFINE_bool('overwrite', False, 'replace existing outputs (eval: write into a non-empty '
                                'output folder)')
  try:
    fuse = config_flags.DEFINE_config_dict(FUSE_FLAG, fuse_config(), FUSE_HELP)
  except AttributeError:
    sys.stderr.write(f'FATAL Flags parsing error: unknown --{FUSE_FLAG} field; the fields are '
                     f'{", ".join(fuse_config())}\n')
    sys.exit(1)
  return SharedFlags(checkpoint, config, overwrite, fuse)


def renamed_flag(arg: str) -> str:
  """The new spelling of ``arg`` if it is a fusion option given the old way (``--window=7``), else ''."""
  if not arg.startswith('-'):
    return ''
  name, sep, value = arg.lstrip('-').partition('=')
  fields = fuse_config()
  if name in fields:
    return f'--{FUSE_FLAG}.{name}{sep}{value}'
  if name.startswith('no') and isinstance(fields.get(name[2:]), bool):
    return f'--{FUSE_FLAG}.{name[2:]}=false'
  return ''


def renamed_flag_error(arg: str) -> str:
  """For `cli.run_program`: the error for a fusion option given the old way (``--window=7``), else ''."""
  new = renamed_flag(arg)
  return f'{arg.partition("=")[0]} is now a field of --{FUSE_FLAG}: pass {new}' if new else ''


def run_program(main: Callable, program: types.ModuleType) -> None:
  """``run()`` of eval and infer, after their flags are defined: process set-up before JAX starts (no tuned
  allocator: forward-only work), then `cli.run_program` with the shared flags' help and renamed-flag check."""
  runtime.setup_process(tuned_allocator=False)
  cli.run_program(main, program, help_modules=(sys.modules[__name__],), check_argument=renamed_flag_error)
