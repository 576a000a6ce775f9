r"""The released recipe on Cloud TPU v5e slices (see docs/tpu.md).

  python train.py --config=configs/tpu_v5e.py:v5e-8 --workdir=gs://BUCKET/runs/vfusion     # on every host
  python train.py --config=configs/tpu_v5e.py:v5e-32 --workdir=gs://BUCKET/runs/vfusion

Per chip the release's per-GPU batch of 3 clips (T=6, 128x128); the global batch grows with the slice
(24 on v5e-8, 96 on v5e-32) at the released learning rate, so the schedule is counted in optimiser steps
of a larger batch: fewer steps give the same number of epochs. bfloat16 compute, float32 params, optimiser
state and loss: the mixed-precision recipe of docs/precision.md (trains like float32, 0.6x its memory).
"""

from vfusion_jax.configs import m3svd

CLIPS_PER_CHIP = 3
# Input pipeline per host (docs/data.md, "Feeding a TPU slice"): grain worker processes, and clips drawn from
# each decoded chunk so that a worker supplies several times the clips it would with one read per clip.
WORKERS_PER_HOST = 64
CLIPS_PER_CHUNK = 8
SLICES = {'v5e-8': 8, 'v5e-32': 32}


def get_config(variant: str = 'v5e-8'):
  variant = variant or 'v5e-8'
  if variant not in SLICES:
    raise ValueError(f'unknown slice {variant!r}; choose one of {sorted(SLICES)}')
  chips = SLICES[variant]
  config = m3svd.get_config()
  config.variant = variant
  config.model.dtype = 'bfloat16'
  config.batch_size = CLIPS_PER_CHIP * chips
  config.mesh.data = -1
  config.mesh.time = 1
  epoch_steps_at_12 = 11_700
  config.total_steps = 10 * epoch_steps_at_12 * 12 // config.batch_size  # 10 epochs, as released
  config.data.num_workers = WORKERS_PER_HOST
  config.data.clips_per_chunk = CLIPS_PER_CHUNK
  config.distributed.enabled = 'auto'
  return config
