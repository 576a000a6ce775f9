r"""train.py with the test hooks of tests/test_train_lib.py (they are not part of the production loop).

  python tests/train_with_hooks.py [--batch_digests] [--hang_after_checkpoint_step=N] --config=... --workdir=...

--batch_digests: append {'step', 'digest'} of every host batch to ``<workdir>/batch_digests.jsonl`` (through the
run's metric writer, so it reaches a gs:// workdir too), to check that a resumed run draws the same batches.
--hang_after_checkpoint_step=N: once the checkpoint of step N is committed, sleep forever, so the test can
SIGKILL the process at a known point.
"""

import hashlib
import time

import numpy as np

BATCH_DIGESTS_FILE = 'batch_digests.jsonl'


def batch_digest(batch: dict) -> str:
  """A short SHA-256 of the batch's arrays (keys in sorted order)."""
  digest = hashlib.sha256()
  for key in sorted(batch):
    digest.update(np.ascontiguousarray(batch[key]).tobytes())
  return digest.hexdigest()[:16]


def main():
  """Defines the hook flags beside train.py's and trains (imports here: tests import this module for its names)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top

  from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top
  from vfusion_jax.cli import train  # pylint: disable=g-import-not-at-top

  write_digests = flags.DEFINE_bool('batch_digests', False, f'write {BATCH_DIGESTS_FILE} in the workdir')
  hang_step = flags.DEFINE_integer('hang_after_checkpoint_step', 0, 'sleep after the checkpoint of this step')

  def before_step(step: int, host_batch: dict, writer) -> None:
    if write_digests.value:
      writer.append_jsonl(BATCH_DIGESTS_FILE, {'step': step, 'digest': batch_digest(host_batch)})

  def after_checkpoint(step: int, manager) -> None:
    if hang_step.value and step == hang_step.value:
      manager.wait_until_finished()
      logging.warning('hang_after_checkpoint_step=%d: checkpoint committed, sleeping.', step)
      while True:
        time.sleep(1)

  train.run(train_lib.LoopHooks(before_step=before_step, after_checkpoint=after_checkpoint))


if __name__ == '__main__':
  main()
