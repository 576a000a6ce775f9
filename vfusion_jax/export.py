r"""Training checkpoint -> inference checkpoint (``params/`` + ``config.json``).

  python -m vfusion_jax.export --workdir DIR --output DIR2 [--step N] [--overwrite]

Reads only the ``params`` item of ``DIR/checkpoints/<step>`` (the latest step by default) and writes the same
format as ``vfusion_jax.convert``, so evaluation and inference load either.
"""

import sys

from absl import app
from absl import flags

from vfusion_jax import checkpoint

_WORKDIR = flags.DEFINE_string('workdir', None, 'training workdir (holds checkpoints/)', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'inference checkpoint directory to create', required=True)
_STEP = flags.DEFINE_integer('step', None, 'step to export (default: the latest)')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'replace an existing output directory')


def export(workdir: str, output: str, step: int | None = None, overwrite: bool = False) -> str:
  """Writes the inference checkpoint of ``step`` (default latest) of the run in ``workdir``; returns its path."""
  params, model_config, meta = checkpoint.restore_training_params(workdir, step)
  return checkpoint.save_inference_checkpoint(output, params, model_config, overwrite=overwrite,
                                              metadata={'source': workdir, 'step': meta['step']})


def main(argv):
  del argv
  try:
    path = export(_WORKDIR.value, _OUTPUT.value, _STEP.value, _OVERWRITE.value)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {path}')


if __name__ == '__main__':
  sys.exit(app.run(main))
