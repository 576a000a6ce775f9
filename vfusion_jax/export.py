r"""Training checkpoint -> inference checkpoint (``params/`` + ``config.json``).

  python -m vfusion_jax.export --workdir DIR --output DIR2 [--step N] [--overwrite]

Reads only the ``params`` item of ``DIR/checkpoints/<step>`` (the latest step by default) and writes the same
format as ``vfusion_jax.convert``, so evaluation and inference load either. Both may be ``gs://`` URLs.
"""

import sys

from absl import flags

from vfusion_jax import checkpoint
from vfusion_jax import io

_WORKDIR = flags.DEFINE_string('workdir', None, 'training workdir (holds checkpoints/)', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'inference checkpoint directory to create', required=True)
_STEP = flags.DEFINE_integer('step', None, 'step to export (default: the latest)')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'replace an existing output directory')


def export(workdir: io.PathLike, output: io.PathLike, step: int | None = None,
           overwrite: bool = False) -> io.Path:
  """Writes the inference checkpoint of ``step`` (default latest) of the run in ``workdir``; returns its path."""
  output = io.check_access(output)
  if output.exists() and not overwrite:  # Before reading the checkpoint.
    raise FileExistsError(f'{output} already exists; pass --overwrite to replace it')
  params, model_config, meta = checkpoint.restore_training_params(workdir, step)
  return checkpoint.save_inference_checkpoint(output, params, model_config, overwrite=overwrite,
                                              metadata={'source': str(io.path(workdir)), 'step': meta['step']})


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO.
  try:
    path = export(_WORKDIR.value, _OUTPUT.value, _STEP.value, _OVERWRITE.value)
  except (FileNotFoundError, FileExistsError, ValueError, io.StorageError) as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {path}')


def run():
  """Console script ``vfusion-export``."""
  from vfusion_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_program(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
