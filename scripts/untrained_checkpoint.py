r"""The untrained-network control of docs/cpu_study.md: the initial parameters of a training config, saved as an
inference checkpoint (the format of ``python -m vfusion_jax.export``).

  python scripts/untrained_checkpoint.py --config=configs/m3svd.py:cpu_study --output=/tmp/untrained

The parameters are those a training run of the config starts from (``train_lib.initial_params_key``, as
``train_and_evaluate`` uses it), so the control differs from a trained checkpoint only by training.
"""

import pathlib
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from vfusion_jax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def _define_flags():
  """Defined when run as a script only, so importing this file never clashes with another module's --output."""
  config_flags.DEFINE_config_file('config', None, 'training config (its model and seed)')
  flags.DEFINE_string('output', None, 'inference checkpoint directory to create', required=True)
  flags.DEFINE_bool('overwrite', False, 'replace an existing output directory')
  flags.mark_flag_as_required('config')


def main(argv):
  del argv
  args = flags.FLAGS
  config = args.config
  model = train_lib.create_model(config)
  params = jax.jit(lambda rng: train_lib.init_state(model, optim.make_optimizer(config), rng, config).params)(
      train_lib.initial_params_key(config))
  checkpoint.save_inference_checkpoint(args.output, jax.device_get(params), config.model, overwrite=args.overwrite,
                                       metadata={'untrained': True, 'seed': config.seed})
  print(f'wrote {args.output} (initial parameters of seed {config.seed})')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
