"""Grain input pipelines: training clips with on-the-fly degradation, and whole videos for evaluation.

A *source* is anything random-access (``len(source)``, ``source[i]``) whose examples are chunks of consecutive
frames of one video, the layout of the M3SVD TFDS records and of ``synthetic.SyntheticVideoSource``:

  video        str (or bytes)   the video's name
  frame_index  int              index of the chunk's first frame in the video
  ir_gt        uint8 (F,H,W,1)  clean infrared
  vi_gt        uint8 (F,H,W,3)  clean visible
  ir_lq, vi_lq uint8, optional  the dataset's own degraded frames (absent, or with 0 frames, if not released)

The training pipeline yields the batch contract of the train step: a dict ``ir_lq``, ``vi_lq``, ``ir_gt``,
``vi_gt`` of float32 in [0, 1], shaped (B, T, H, W, 1) for infrared and (B, T, H, W, 3) for visible, where B is
this process's share of the global batch.
"""

import dataclasses
from typing import Any, Mapping

import grain
import numpy as np

from vfusion_jax.data import degrade

UINT8_MAX = 255.0
DEGRADATION_MODES = ('synthetic', 'dataset')


def _has_frames(example: Mapping[str, Any], key: str) -> bool:
  value = example.get(key)
  return value is not None and np.asarray(value).shape[0] > 0


@dataclasses.dataclass(frozen=True)
class ClipSampler(grain.transforms.RandomMap):
  """One training clip from a chunk: random T-frame window, random square crop, optional augmentation, LQ.

  Attributes:
    num_frames: T, frames per clip (6 in the release).
    crop_size: side of the random crop (128 in the release); 0 keeps the whole frame.
    degradation: 'synthetic' degrades the clean frames on the fly with ``degradation_config`` (new noise and
      blur for every clip); 'dataset' uses the chunk's own ``ir_lq``/``vi_lq`` frames.
    degradation_config: ranges of the synthetic degradation.
    flips: random horizontal/vertical flips; rot90: random 90-degree rotations (square crops only);
      temporal_reverse: random time reversal. Crops are square, so rot90 keeps the shape. All off by default, as released (REFERENCE.md 7).
  """

  num_frames: int
  crop_size: int
  degradation: str = 'synthetic'
  degradation_config: degrade.DegradationConfig = degrade.DegradationConfig()
  flips: bool = False
  rot90: bool = False
  temporal_reverse: bool = False

  def __post_init__(self):
    if self.degradation not in DEGRADATION_MODES:
      raise ValueError(f'degradation must be one of {DEGRADATION_MODES}, got {self.degradation!r}')

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict:
    ir, vi = np.asarray(element['ir_gt']), np.asarray(element['vi_gt'])
    frames, height, width = vi.shape[:3]
    if frames < self.num_frames:
      raise ValueError(f'chunk of video {element.get("video")!r} has {frames} frames; clips need '
                       f'{self.num_frames} (rebuild the dataset with longer chunks)')
    crop = self.crop_size or min(height, width)
    if crop > min(height, width):
      raise ValueError(f'crop_size {crop} exceeds the frames ({height}x{width})')
    start = int(rng.integers(0, frames - self.num_frames + 1))
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    window = (slice(start, start + self.num_frames), slice(top, top + crop), slice(left, left + crop))
    clip = {'ir_gt': ir[window], 'vi_gt': vi[window]}
    if self.degradation == 'dataset':
      for key in ('ir_lq', 'vi_lq'):
        if not _has_frames(element, key):
          raise ValueError(f'degradation="dataset" but video {element.get("video")!r} has no {key} frames; '
                           'use degradation="synthetic"')
        clip[key] = np.asarray(element[key])[window]
    clip = {k: v.astype(np.float32) / UINT8_MAX for k, v in clip.items()}
    if self.degradation == 'synthetic':
      clip['ir_lq'], clip['vi_lq'] = degrade.degrade_clip(clip['ir_gt'], clip['vi_gt'], rng,
                                                          self.degradation_config)
    return _augment(clip, rng, self.flips, self.rot90, self.temporal_reverse)


def _augment(clip: dict, rng: np.random.Generator, flips: bool, rot90: bool, temporal_reverse: bool) -> dict:
  """The same random flip / rotation / time reversal for every stream of the clip (T, H, W, C)."""
  ops = []
  if flips:
    if rng.random() < 0.5:
      ops.append(lambda x: x[:, :, ::-1])
    if rng.random() < 0.5:
      ops.append(lambda x: x[:, ::-1])
  if rot90:
    k = int(rng.integers(0, 4))
    ops.append(lambda x: np.rot90(x, k, axes=(1, 2)))
  if temporal_reverse and rng.random() < 0.5:
    ops.append(lambda x: x[::-1])
  for op in ops:
    clip = {key: op(value) for key, value in clip.items()}
  return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in clip.items()}


def train_dataset(source: Any, *, batch_size: int, num_frames: int, crop_size: int, seed: int,
                  degradation: str = 'synthetic',
                  degradation_config: degrade.DegradationConfig | None = None,
                  flips: bool = False, rot90: bool = False, temporal_reverse: bool = False,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Endless, shuffled, deterministic MapDataset of training batches for this process.

  ``batch_size`` is the global batch; this process gets ``batch_size // process_count`` clips per batch,
  drawn from its own slice of the stream. Element i is fully determined by (seed, i), so an iterator restored
  from its saved state yields the same batches.
  """
  if batch_size % process_count:
    raise ValueError(f'global batch_size {batch_size} is not divisible by {process_count} processes')
  if len(source) == 0:
    raise ValueError('the training source has no examples')
  sampler = ClipSampler(num_frames, crop_size, degradation, degradation_config or degrade.DegradationConfig(),
                        flips, rot90, temporal_reverse)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
  ds = ds.random_map(sampler)
  if process_count > 1:
    ds = ds[process_index::process_count]
  return ds.batch(batch_size // process_count, drop_remainder=True)


def make_iterator(dataset: grain.MapDataset, *, num_workers: int = 0, prefetch: int = 2):
  """A checkpointable iterator (``get_state``/``set_state``); ``num_workers`` > 0 uses worker processes."""
  ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(ds)
