r"""Trains VideoFusion.

  python train.py --config=configs/demo.py --workdir=/tmp/vfusion_demo        # embedded demo, no download
  python train.py --config=configs/m3svd.py --workdir=DIR                      # the released recipe on M3SVD
  python train.py --config=configs/m3svd.py --config.batch_size=6 --workdir=DIR

--workdir may be a local folder or a bucket (gs://BUCKET/run; docs/tpu.md). Re-running the same command resumes
from the latest checkpoint in --workdir. SIGTERM/SIGINT save at the next step boundary and exit; with several
processes, a signal to any one of them makes all of them save the same step and exit.
"""

import functools
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from vfusion_jax import cli
from vfusion_jax import io
from vfusion_jax import runtime
from vfusion_jax import sharding
from vfusion_jax import train_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file (configs/*.py[:variant])',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'directory for checkpoints, logs and previews')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv, hooks: train_lib.LoopHooks = train_lib.LoopHooks()):
  """Trains ``--config`` in ``--workdir``; ``hooks`` lets tests and tools watch the loop."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    train_lib.run(_CONFIG.value, _WORKDIR.value, hooks)
  except (train_lib.DataNotFoundError, io.StorageError, sharding.MeshError) as e:
    raise SystemExit(f'error: {e}') from None


def run(hooks: train_lib.LoopHooks = train_lib.LoopHooks()):
  """Console script ``vfusion-train``: process set-up before any JAX backend starts, then the flags and `main`."""
  runtime.setup_process()  # tuned allocator (re-executes once), XLA flags, compilation cache
  cli.run_program(functools.partial(main, hooks=hooks), sys.modules[__name__])


if __name__ == '__main__':
  run()
