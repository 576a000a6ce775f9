r"""Builds the M3SVD TFDS records (ArrayRecord shards) from a manual download folder.

  python -m vfusion_jax.data.build --manual_dir=M --data_dir=D [--num_shards=N] [--chunk_frames=F] \
      [--skip_bad_videos] [--val_videos=a,b] [--test_percent=10] [--config_name=NAME] [--num_workers=P]
  vfusion-build-m3svd ...   (the installed command, same flags)

--num_workers=P builds the shards in P processes (the same records; docs/data.md). --config_name=official is
the official 190 / 30 split (test: the 30 videos of the release's test folder).

Same result as ``tfds build data/m3svd --manual_dir=M --data_dir=D``, which needs TensorFlow installed: the
``tfds`` command of tensorflow-datasets 4.9.10 imports TF at start-up (its convert_format command), although
building and reading this dataset do not. With the default options the records go
to ``D/m3svd/default/1.0.0`` and read as ``tfds.data_source('m3svd', split=..., data_dir=D)``; other data
options need another config name (``--config_name``, else made from the options, e.g. 'chunk16'), read as
``tfds.data_source('m3svd/<name>', ...)``. The command prints the name to use.
"""

import functools
import hashlib
import os
import pathlib
import sys
import tempfile
from typing import Any, Optional, Sequence, Union

from absl import app
from absl import flags
from absl import logging

from vfusion_jax import io
from vfusion_jax.data import pipeline
from vfusion_jax.data import sources

PathLike = Union[str, os.PathLike]

BUILDER_MODULE = 'vfusion_jax.data.m3svd_dataset_builder'
DATASET_NAME = 'm3svd'
DEFAULT_CONFIG_NAME = 'default'
# Short names of the config fields in made-up config names.
_NAME_PARTS = {'chunk_frames': 'chunk', 'val_percent': 'val', 'test_percent': 'test', 'ir_gray': 'ir',
               'max_frames_per_video': 'frames', 'val_videos': 'vallist', 'test_videos': 'testlist',
               'degraded_frames': 'degraded'}
_LIST_HASH_DIGITS = 6
# Command-line flags that set M3svdConfig fields.
_CONFIG_FLAGS = ('chunk_frames', 'val_videos', 'test_videos', 'val_percent', 'test_percent', 'ir_gray',
                 'max_frames_per_video', 'degraded_frames')


@functools.cache
def builder_module():
  """The module of the M3SVD builder, imported as `tfds build` does (not registered by name, so
  ``tfds.data_source('m3svd', data_dir=...)`` reads the records as written)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder_cls = tfds.core.community.builder_cls_from_module(BUILDER_MODULE)
  return sys.modules[builder_cls.__module__]


def config_name(**overrides: Any) -> str:
  """'default' for the default data options, else a readable name made from the changed ones."""
  module = builder_module()
  default = module.M3svdConfig(name=DEFAULT_CONFIG_NAME)
  parts = []
  for field in module.config_field_names():
    value = overrides.get(field, getattr(default, field))
    if isinstance(value, (list, tuple)):
      value = tuple(value)
    if value == getattr(default, field):
      continue
    if isinstance(value, tuple):
      value = hashlib.sha256(','.join(value).encode()).hexdigest()[:_LIST_HASH_DIGITS]
    elif isinstance(value, float) and value.is_integer():
      value = int(value)
    part = _NAME_PARTS.get(field, field)
    parts.append(('' if value else 'no') + part if isinstance(value, bool) else f'{part}{value}')
  return '_'.join(parts) or DEFAULT_CONFIG_NAME


def make_config(name: Optional[str] = None, **overrides: Any):
  """The builder config: the registered 'default' when nothing changes, else a custom M3svdConfig."""
  module = builder_module()
  unknown = set(overrides) - set(module.config_field_names())
  if unknown:
    raise ValueError(f'unknown M3SVD config fields {sorted(unknown)}; known: {module.config_field_names()}')
  name = name or config_name(**overrides)
  registered = module.Builder.builder_configs.get(name)
  if registered is not None:  # 'default', 'official'
    changed = {k: v for k, v in overrides.items() if _normalized(v) != _normalized(getattr(registered, k))}
    if changed:
      raise ValueError(f'the options {changed} change the data of the registered config {name!r}; give them '
                       'another config name')
    return registered
  return module.M3svdConfig(name=name, **overrides)


def _normalized(value: Any) -> Any:
  return tuple(value) if isinstance(value, (list, tuple)) else value


def build(manual_dir: PathLike, data_dir: PathLike, *, num_shards: Optional[int] = None,
          skip_bad_videos: bool = False, overwrite: bool = False, max_examples_per_split: Optional[int] = None,
          config: Optional[str] = None, num_workers: int = 1, **overrides: Any):
  """Builds (or reuses) the M3SVD records; returns the prepared TFDS builder.

  Args:
    manual_dir: the M3SVD folder (any layout of vfusion_jax.data.sources).
    data_dir: where the records go (``<data_dir>/m3svd/<config>/<version>``).
    num_shards: ArrayRecord files per split (TFDS default: from the size); every split needs at least this
      many examples.
    skip_bad_videos: log and leave out malformed videos instead of failing.
    overwrite: rebuild even if the records exist.
    max_examples_per_split: stop each split after this many chunks (quick builds).
    config: config name (default: 'default' or made from ``overrides``; 'official': the 190 / 30 split).
    num_workers: processes that decode, compress and write shards in parallel (1: TFDS's serial writer). The
      same examples in the same order either way; with ``num_shards`` given, the same shard files too.
    **overrides: M3svdConfig fields (chunk_frames, val_videos, test_videos, val_percent, test_percent,
      ir_gray, max_frames_per_video).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f'No such manual_dir: {manual_dir}')
  if num_shards is not None and num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}')
  builder_config = make_config(config, **overrides)
  if io.is_remote(data_dir):
    return _build_into_bucket(manual_dir, io.check_access(data_dir), builder_config, num_shards=num_shards,
                              skip_bad_videos=skip_bad_videos, overwrite=overwrite,
                              max_examples_per_split=max_examples_per_split, num_workers=num_workers)
  module = builder_module()
  builder = module.Builder(config=builder_config, data_dir=os.fspath(data_dir), skip_bad_videos=skip_bad_videos,
                           num_workers=num_workers)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), num_shards=num_shards,
                                                 max_examples_per_split=max_examples_per_split,
                                                 download_mode=mode)
  try:
    builder.download_and_prepare(download_config=download_config)
  except AssertionError as e:  # TFDS asserts that every split has at least num_shards examples.
    if 'number_of_shards' not in str(e):
      raise
    raise ValueError(f'{e}: every split needs at least num_shards examples (chunks); lower --num_shards') from e
  return builder


def _build_into_bucket(manual_dir: pathlib.Path, data_dir: io.Path, builder_config, *, overwrite: bool,
                       **options: Any):
  """Builds in a local temporary folder and uploads the version folder, ``dataset_info.json`` last.

  The ArrayRecord writer writes local files only, and TFDS reads a dataset only once its dataset_info.json
  exists, so a stopped upload never reads as a dataset. Returns the builder of the uploaded records.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  module = builder_module()
  probe = module.Builder(config=builder_config, data_dir=os.fspath(data_dir))
  relative = os.path.relpath(os.fspath(probe.data_dir), os.fspath(data_dir))  # <name>/<config>/<version>
  target = data_dir / relative
  if (target / pipeline.TFDS_INFO_FILE).exists() and not overwrite:
    logging.info('%s already holds the records; pass --overwrite to rebuild', target)
    return tfds.builder_from_directory(os.fspath(target))
  with tempfile.TemporaryDirectory(prefix='vfusion_build_') as local_dir:
    local = build(manual_dir, local_dir, config=builder_config.name, overwrite=True,
                  **options, **_config_overrides(builder_config))
    io.publish_directory(local.data_dir, target, overwrite=True, commit_last=(pipeline.TFDS_INFO_FILE,))
  return tfds.builder_from_directory(os.fspath(target))


def _config_overrides(builder_config) -> dict[str, Any]:
  """The M3svdConfig fields of ``builder_config`` that differ from the default config's."""
  module = builder_module()
  default = module.M3svdConfig(name=DEFAULT_CONFIG_NAME)
  return {field: getattr(builder_config, field) for field in module.config_field_names()
          if getattr(builder_config, field) != getattr(default, field)}


def _define_flags():
  flags.DEFINE_string('manual_dir', None, 'the M3SVD folder (frame folders or mp4 files)', required=True)
  flags.DEFINE_string('data_dir', None, 'where the TFDS records go', required=True)
  flags.DEFINE_integer('num_shards', None, 'ArrayRecord files per split (default: by size)')
  flags.DEFINE_integer('chunk_frames', None, 'frames per example (default 8)')
  flags.DEFINE_bool('skip_bad_videos', False, 'log and leave out malformed videos instead of failing')
  flags.DEFINE_list('val_videos', None, "videos for 'val' when there are no split folders")
  flags.DEFINE_list('test_videos', None, "videos for 'test' when there are no split folders")
  flags.DEFINE_float('val_percent', None, "% of the other videos for 'val' (by a hash of the name)")
  flags.DEFINE_float('test_percent', None, "% of the other videos for 'test' (by a hash of the name)")
  flags.DEFINE_enum('ir_gray', None, list(sources.IR_GRAY_MODES),
                    'how infrared becomes one channel (see vfusion_jax/data/sources.py)')
  flags.DEFINE_integer('max_frames_per_video', None, 'keep only the first frames of each video')
  flags.DEFINE_bool('degraded_frames', None, 'store the release\'s degraded frames (default); --nodegraded_frames: '
                    'clean streams only, for training with the synthetic degradation (half the bytes)')
  flags.DEFINE_integer('max_examples_per_split', None, 'stop each split after N chunks')
  flags.DEFINE_string('config_name', None, "config name (default: made from the options); 'official': the "
                      'official 190 / 30 split (test = the 30 videos of the release\'s test folder)')
  flags.DEFINE_bool('overwrite', False, 'rebuild even if the records exist')
  flags.DEFINE_integer('num_workers', 1, 'processes that decode, compress and write shards (same records)')


def _overrides_from_flags() -> dict[str, Any]:
  values = {name: flags.FLAGS[name].value for name in _CONFIG_FLAGS}
  return {key: value for key, value in values.items() if value is not None}


def main(argv: Sequence[str]):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  try:
    builder = build(args.manual_dir, args.data_dir, num_shards=args.num_shards,
                    skip_bad_videos=args.skip_bad_videos, overwrite=args.overwrite,
                    max_examples_per_split=args.max_examples_per_split, config=args.config_name,
                    num_workers=args.num_workers,
                    **_overrides_from_flags())
  except (FileNotFoundError, FileExistsError, ValueError, io.StorageError) as e:  # DataError is a ValueError.
    raise SystemExit(f'error: {e}') from None
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  name = DATASET_NAME if builder.builder_config.name == DEFAULT_CONFIG_NAME else (
      f'{DATASET_NAME}/{builder.builder_config.name}')
  skipped = (builder.info.metadata or {}).get('skipped_videos', [])
  logging.info('Built %s in %s: examples per split %s; %d videos skipped', name, builder.data_dir, splits,
               len(skipped))
  print(f'{builder.data_dir}\nexamples per split: {splits}\nskipped videos: {len(skipped)}\n'
        f"read with: tfds.data_source('{name}', split='train', data_dir='{args.data_dir}')")


def run():
  """Console script ``vfusion-build-m3svd``: defines the flags (importing this module defines none) and runs."""
  from vfusion_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run_program(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
