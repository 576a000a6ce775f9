r"""Whole-video evaluation of a VideoFusion checkpoint: fused/restored frames, metric tables, plots.

  python eval.py --config=configs/m3svd.py --checkpoint=ckpt/ --data=../shared/data/m3svd_sample \
      --setting=degraded --references=clean --output=/tmp/eval_degraded

``--data`` is a dataset folder (M3SVD frame folders, mp4 pairs or ir/vi folders), a folder of TFDS records
(holding dataset_info.json), or a TFDS name together with ``--tfds_data_dir``. See ``vfusion_jax/evaluate.py``
for what is written; docs/evaluation.md for examples.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vfusion_jax import runtime

runtime.setup_process(tuned_allocator=False)  # XLA flags, compilation cache: before JAX starts

from vfusion_jax import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax import io  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax import windows  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config; the checkpoint must match its '
                                          'model section', lock_config=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'inference checkpoint directory (params/ + config.json)',
                                  required=True)
_DATA = flags.DEFINE_string('data', None, 'dataset folder, TFDS records folder, or TFDS name', required=True)
_TFDS_DATA_DIR = flags.DEFINE_string('tfds_data_dir', None, 'TFDS data_dir when --data is a TFDS name')
_SPLIT = flags.DEFINE_string('split', None, 'split to evaluate (TFDS split or split folder; default: all)')
_OUTPUT = flags.DEFINE_string('output', None, 'output folder', required=True)
_SETTING = flags.DEFINE_enum('setting', 'degraded', evaluate.SETTINGS, 'network inputs: degraded or clean frames')
_REFERENCES = flags.DEFINE_enum('references', 'clean', evaluate.REFERENCES,
                                'source frames the fusion metrics compare against')
_WINDOW = flags.DEFINE_integer('window', windows.DEFAULT_WINDOW, 'frames per model call (T)')
_OVERLAP = flags.DEFINE_integer('overlap', 0, 'frames shared by consecutive windows')
_RULE = flags.DEFINE_enum('rule', windows.DEFAULT_RULE, windows.RULES,
                          'overlapping predictions: blend, center (each frame once) or official (later wins)')
_TILE_SIZE = flags.DEFINE_integer('tile_size', 0, 'tile frames larger than this (pixels); 0 = never')
_TILE_OVERLAP = flags.DEFINE_integer('tile_overlap', windows.DEFAULT_TILE_OVERLAP, 'minimum tile overlap (pixels)')
_VIDEOS = flags.DEFINE_list('videos', None, 'only these videos')
_MAX_FRAMES = flags.DEFINE_integer('max_frames', None, 'only the first frames of each video')
_FUSED_MINMAX = flags.DEFINE_bool('fused_minmax', True, 'quantise fused frames with the per-frame min-max '
                                  'stretch of the release (METRICS.md 1)')
_SAVE_RESTORED = flags.DEFINE_bool('save_restored', True, 'save the restored IR/visible frames')
_SAVE_MP4 = flags.DEFINE_bool('save_mp4', False, 'also save each fused video as mp4')
_FPS = flags.DEFINE_float('fps', None, 'frame rate of the mp4 (default: the data\'s, else 30)')
_BASELINES = flags.DEFINE_bool('baselines', True, 'add the pixel max / mean baselines')
_PLOTS = flags.DEFINE_bool('plots', True, 'write the temporal plots')
_SLICE_COLUMN = flags.DEFINE_integer('slice_column', None, 'image column of the column-slice plot (default: middle)')
_DEGRADE_SEED = flags.DEFINE_integer('degrade_seed', evaluate.DEFAULT_DEGRADE_SEED,
                                     'seed of the degradation of data without degraded frames')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'write into a non-empty output folder')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  try:
    options = evaluate.EvalOptions(
        setting=_SETTING.value, references=_REFERENCES.value,
        window=windows.WindowConfig(_WINDOW.value, _OVERLAP.value, _RULE.value, _TILE_SIZE.value,
                                    _TILE_OVERLAP.value),
        fused_minmax=_FUSED_MINMAX.value, save_restored=_SAVE_RESTORED.value, save_mp4=_SAVE_MP4.value,
        baselines=_BASELINES.value, plots=_PLOTS.value, slice_column=_SLICE_COLUMN.value,
        degrade_seed=_DEGRADE_SEED.value, fps=_FPS.value, split=_SPLIT.value,
        videos=tuple(_VIDEOS.value) if _VIDEOS.value else None, max_frames=_MAX_FRAMES.value,
        overwrite=_OVERWRITE.value)
    model_config = _CONFIG.value.model if _CONFIG.value is not None else None
    evaluate.evaluate(_DATA.value, _OUTPUT.value, checkpoint_dir=_CHECKPOINT.value, model_config=model_config,
                      options=options, tfds_data_dir=_TFDS_DATA_DIR.value)
  except (FileNotFoundError, FileExistsError, ValueError, io.StorageError) as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {io.path(_OUTPUT.value) / "metrics.md"}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
