"""When to stop for a maintenance event, a preemption or Ctrl-C: a step every process agrees on.

A checkpoint save needs every process, so a stop must happen at the same step everywhere. A Cloud TPU
maintenance event sends SIGTERM, and one host may get it before the others (or alone, as a test does).

* Several processes (``jax.distributed``): JAX's coordination service catches SIGTERM on any host and runs its
  preemption sync protocol; ``CheckpointManager.reached_preemption(step)`` (Orbax over
  ``multihost_utils.reached_preemption_sync_point``) then returns True on every process at the same step. It
  talks to the coordination service only, never to the devices, and must be asked at every step. No Python
  SIGTERM handler is installed, since it would replace the service's; SIGINT is forwarded to SIGTERM so that
  Ctrl-C on one host also stops all of them together.
* One process: a Python handler turns SIGTERM/SIGINT into a flag read at step boundaries.
"""

import os
import signal

from absl import logging
import jax
import orbax.checkpoint as ocp


class StopSignal:
  """Context manager; ``should_stop(step)`` after each step says whether every process saves now and stops."""

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._multi_process = jax.process_count() > 1
    self.signal = None  # the signal this process received, if any
    self._previous = {}

  def __enter__(self) -> 'StopSignal':
    if self._multi_process:
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_to_sigterm)
    else:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._record)
    return self

  def _record(self, signum, frame):
    del frame
    self.signal = signum

  def _forward_to_sigterm(self, signum, frame):
    del frame
    self.signal = signum
    os.kill(os.getpid(), signal.SIGTERM)  # to the coordination service's handler

  def should_stop(self, step: int) -> bool:
    """True on every process at the same ``step`` once any process got a stop signal. Call at every step."""
    if self._multi_process:
      stop = self._manager.reached_preemption(step)
      if stop:
        logging.warning('Preemption notice: all %d processes stop at step %d.', jax.process_count(), step)
      return stop
    return self.signal is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
