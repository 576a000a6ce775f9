r"""Whole-video evaluation of a VideoFusion checkpoint: fused/restored frames, metric tables, plots.

  python eval.py --config=configs/m3svd.py --checkpoint=ckpt/ --data=../shared/data/m3svd_sample \
      --setting=degraded --references=clean --output=/tmp/eval_degraded --fuse.window=7 --fuse.overlap=2

``--data`` is a dataset folder (M3SVD frame folders, mp4 pairs or ir/vi folders), a folder of TFDS records
(holding dataset_info.json), or a TFDS name together with ``--tfds_data_dir``. The ``--fuse.*`` options
(windows, tiles, fused-frame quantisation, mp4 frame rate), ``--checkpoint``, ``--config`` and ``--overwrite``
are shared with ``vfusion-infer`` (``vfusion_jax.cli.shared``). See ``vfusion_jax/evaluate.py`` for what is
written; docs/evaluation.md for examples.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from vfusion_jax import evaluate
from vfusion_jax import io
from vfusion_jax.cli import shared


def _define_flags() -> None:
  """Defines the program's flags (from ``run()``, so importing this module defines none)."""
  flags.DEFINE_string('data', None, 'dataset folder, TFDS records folder, or TFDS name', required=True)
  flags.DEFINE_string('tfds_data_dir', None, 'TFDS data_dir when --data is a TFDS name')
  flags.DEFINE_string('split', None, 'split to evaluate (TFDS split or split folder; default: all)')
  flags.DEFINE_string('output', None, 'output folder', required=True)
  flags.DEFINE_enum('setting', 'degraded', evaluate.SETTINGS, 'network inputs: degraded or clean frames')
  flags.DEFINE_enum('references', 'clean', evaluate.REFERENCES, 'source frames the fusion metrics compare against')
  flags.DEFINE_list('videos', None, 'only these videos')
  flags.DEFINE_integer('max_frames', None, 'only the first frames of each video')
  flags.DEFINE_bool('save_restored', True, 'save the restored IR/visible frames')
  flags.DEFINE_bool('save_mp4', False, 'also save each fused video as mp4 (frame rate: --fuse.fps)')
  flags.DEFINE_bool('baselines', True, 'add the pixel max / mean baselines')
  flags.DEFINE_bool('plots', True, 'write the temporal plots')
  flags.DEFINE_integer('slice_column', None, 'image column of the column-slice plot (default: middle)')
  flags.DEFINE_integer('degrade_seed', evaluate.DEFAULT_DEGRADE_SEED,
                       'seed of the degradation of data without degraded frames')
  shared.define_flags()
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  if not f['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  try:
    options = evaluate.EvalOptions(
        setting=f.setting, references=f.references, window=shared.window_config(f.fuse),
        fused_minmax=f.fuse.fused_minmax, save_restored=f.save_restored, save_mp4=f.save_mp4,
        baselines=f.baselines, plots=f.plots, slice_column=f.slice_column, degrade_seed=f.degrade_seed,
        fps=f.fuse.fps, split=f.split, videos=tuple(f.videos) if f.videos else None, max_frames=f.max_frames,
        overwrite=f.overwrite)
    model_config = f.config.model if f.config is not None else None
    evaluate.evaluate(f.data, f.output, checkpoint_dir=f.checkpoint, model_config=model_config, options=options,
                      tfds_data_dir=f.tfds_data_dir)
  except (FileNotFoundError, FileExistsError, ValueError, io.StorageError) as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {io.path(f.output) / "metrics.md"}')


def run():
  """Console script ``vfusion-eval``: defines the flags, sets the process up (before JAX starts), runs main."""
  _define_flags()
  shared.run_program(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
