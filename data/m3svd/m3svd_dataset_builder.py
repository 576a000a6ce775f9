"""M3SVD (Tang et al., CVPR 2026): registered infrared/visible videos as sharded ArrayRecord files, without TF.

  tfds build data/m3svd --manual_dir=<M3SVD folder> --data_dir=<records dir> [--num_shards=N]
  tfds build data/m3svd --manual_dir=... --data_dir=... --config='{"name": "chunk16", "chunk_frames": 16}'
  python -m vfusion_jax.data.build --manual_dir=... --data_dir=... [--chunk_frames=F] [--skip_bad_videos]

Reading: ``tfds.data_source('m3svd', split='train', data_dir=...)`` (``'m3svd/<config>'`` for another
config). No TensorFlow is needed to build or to read; only the ``tfds`` command itself (tensorflow-datasets
4.9.10) imports TF at start-up, so without TF build with ``python -m vfusion_jax.data.build``.

An example is a chunk of ``chunk_frames`` consecutive frames of one video (see ``sources.chunk_starts``: the
last chunk of a video ends on its last frame and may overlap the one before; a video shorter than a chunk is
one shorter chunk), so a training clip is one random-access read. Features:

  video             text                         the video's name, e.g. '0111_1716'
  frame_index       int32                        index of the chunk's first frame in the video
  num_video_frames  int32                        frames in the whole video (as built)
  frame_names       sequence of text (F,)        the source file names ('0000.png' ...; made up for mp4)
  ir_gt             uint8 (F, H, W, 1)           clean infrared
  vi_gt             uint8 (F, H, W, 3)           clean visible, RGB
  ir_lq, vi_lq      uint8 (F, H, W, 1) / (.., 3) the release's degraded frames (infrared_noise,
                                                 visible_Blur); shape (0, H, W, C) when the release has none

Frames are stored at full resolution as zlib-compressed tensors (``tfds.features.Video`` and PNG encoding
need TF). Infrared is one channel: the release's 3-channel IR PNGs must have equal channels (else the build
fails, see ``ir_gray``); IR from mp4 is BT.601 luma. Records keep generation order (``disable_shuffling``):
videos in name order, chunks in frame order, so evaluation can read whole videos sequentially; training
shuffles anyway.

Splits come from ``train/``, ``val/``, ``test/`` folders when the manual folder has them; otherwise from the
video names (config ``val_videos``/``test_videos``, then ``val_percent``/``test_percent`` by a hash of the
name); by default every video is in 'train'. Only non-empty splits are written.

Every video is checked before it is written (``sources.scan``); a bad one fails the build with an error naming
the video and the file, or, with ``skip_bad_videos`` (kwarg, or environment variable M3SVD_SKIP_BAD_VIDEOS=1
for the tfds CLI), is logged and left out; skipped videos are listed in ``metadata.json``. TFDS writes into
an ``incomplete.*`` folder and renames it only on success, so a failed build leaves nothing that reads as
a dataset.
"""

import dataclasses
import os
import pathlib
import sys
from typing import Iterator, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

try:
  from vfusion_jax.data import sources
except ImportError:  # `tfds build data/m3svd` puts data/ on sys.path, not the repository root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  from vfusion_jax.data import sources  # pylint: disable=g-import-not-at-top

DEFAULT_CHUNK_FRAMES = 8
SKIP_ENV_VAR = 'M3SVD_SKIP_BAD_VIDEOS'
_TRUE_STRINGS = ('1', 'true', 'yes')
# Example keys are (video ordinal << shift) + chunk ordinal: integers in generation order.
_KEY_SHIFT = 32
_ZLIB = 'zlib'

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
M3SVD cannot be downloaded automatically (https://github.com/Linfeng-Tang/M3SVD; the test split is public,
the full dataset is on request). Put it in a folder and pass it as --manual_dir, in any of these layouts,
optionally inside train/ val/ test/ folders (which then define the splits):
  infrared_Enhance/<video>/0000.png ...  visible_Enhance/<video>/...  [infrared_noise/...  visible_Blur/...]
  infrared/<video>.mp4  visible/<video>.mp4
  ir/<video>/*.png  vi/<video>/*.png
A stream folder may hold <video>.mp4 files instead of frame folders.
"""

_CITATION = """\
@inproceedings{tang2026videofusion,
  title={VideoFusion: A Spatio-Temporal Collaborative Network for Multi-modal Video Fusion and Restoration},
  author={Tang, Linfeng and Wang, Yeda and Gong, Meiqi and Li, Zizhuo and Deng, Yuxin and Yi, Xunpeng and
          Li, Chunyu and Xu, Han and Zhang, Hao and Ma, Jiayi},
  booktitle={CVPR},
  year={2026}
}
"""


@dataclasses.dataclass(eq=False)
class M3svdConfig(tfds.core.BuilderConfig):
  """What the records hold; every field changes the data, so a non-default config needs its own name.

  Attributes:
    chunk_frames: frames per example (the last chunk of a video may overlap the previous one).
    val_videos, test_videos: video names put in 'val'/'test' when there are no split folders.
    val_percent, test_percent: share of the other videos put in 'val'/'test' by a hash of their name.
    ir_gray: how infrared frames become one channel ('auto', 'equal', 'first', 'luma'; see sources.py).
    max_frames_per_video: keep only the first frames of each video (0 = all), for quick builds.
  """
  chunk_frames: int = DEFAULT_CHUNK_FRAMES
  val_videos: Sequence[str] = ()
  test_videos: Sequence[str] = ()
  val_percent: float = 0.0
  test_percent: float = 0.0
  ir_gray: str = 'auto'
  max_frames_per_video: int = 0

  def __post_init__(self):
    self.val_videos = tuple(self.val_videos)
    self.test_videos = tuple(self.test_videos)
    if self.chunk_frames < 1:
      raise ValueError(f'chunk_frames must be >= 1, got {self.chunk_frames}')
    if self.max_frames_per_video < 0:
      raise ValueError(f'max_frames_per_video must be >= 0, got {self.max_frames_per_video}')
    if self.ir_gray not in sources.IR_GRAY_MODES:
      raise ValueError(f'ir_gray must be one of {sources.IR_GRAY_MODES}, got {self.ir_gray!r}')
    overlap = set(self.val_videos) & set(self.test_videos)
    if overlap:
      raise ValueError(f'videos listed in both val_videos and test_videos: {sorted(overlap)}')
    if (min(self.val_percent, self.test_percent) < 0
        or self.val_percent + self.test_percent > sources.PERCENT):
      raise ValueError('need val_percent, test_percent >= 0 with a sum <= 100, got '
                       f'{self.val_percent}, {self.test_percent}')
    if not self.description:
      self.description = describe(self)


def describe(config: M3svdConfig) -> str:
  """One line listing the config's data fields (stored in dataset_info.json)."""
  fields = ', '.join(f'{f.name}={getattr(config, f.name)!r}' for f in dataclasses.fields(M3svdConfig)
                     if f.name in config_field_names())
  return f'M3SVD chunks: {fields}'


def config_field_names() -> tuple[str, ...]:
  """The fields M3svdConfig adds to tfds.core.BuilderConfig."""
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  return tuple(f.name for f in dataclasses.fields(M3svdConfig) if f.name not in base)


class Builder(tfds.core.GeneratorBasedBuilder):
  """M3SVD chunks of registered infrared/visible frames (see the module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Chunks of clean and degraded frames; zlib uint8 tensors; no TF needed.'}
  BUILDER_CONFIGS = [M3svdConfig(name='default')]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, skip_bad_videos: Optional[bool] = None, file_format=None, **kwargs):
    """Args: skip_bad_videos: log and leave out bad videos (None: $M3SVD_SKIP_BAD_VIDEOS); file_format:
    defaults to array_record (the tfrecord default needs TF); kwargs: as tfds.core.GeneratorBasedBuilder.
    """
    super().__init__(file_format=file_format or 'array_record', **kwargs)
    if skip_bad_videos is None:
      skip_bad_videos = os.environ.get(SKIP_ENV_VAR, '').strip().lower() in _TRUE_STRINGS
    self._skip_bad_videos = bool(skip_bad_videos)
    self._original_state['skip_bad_videos'] = skip_bad_videos  # Kept when TFDS pickles the builder.
    self._skipped = []

  def _info(self) -> tfds.core.DatasetInfo:
    def frames(channels):
      return tfds.features.Tensor(shape=(None, None, None, channels), dtype=np.uint8, encoding=_ZLIB)

    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'video': tfds.features.Text(),
            'frame_index': tfds.features.Scalar(dtype=np.int32),
            'num_video_frames': tfds.features.Scalar(dtype=np.int32),
            'frame_names': tfds.features.Sequence(tfds.features.Text()),
            'ir_gt': frames(1),
            'vi_gt': frames(3),
            'ir_lq': frames(1),
            'vi_lq': frames(3),
        }),
        homepage='https://github.com/Linfeng-Tang/M3SVD',
        citation=_CITATION,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    result = sources.scan(dl_manager.manual_dir, skip_bad_videos=self._skip_bad_videos,
                          ir_gray=config.ir_gray, max_frames=config.max_frames_per_video or None)
    self._skipped = list(result.skipped)
    by_split = {}
    for video in result.videos:
      split = video.split or sources.assign_split(
          video.name, val_videos=config.val_videos, test_videos=config.test_videos,
          val_percent=config.val_percent, test_percent=config.test_percent)
      by_split.setdefault(split, []).append(video)
    if not by_split:
      raise sources.DataError(f'no usable video in {dl_manager.manual_dir} ({len(self._skipped)} skipped)')
    logging.info('M3SVD videos per split: %s', {k: len(v) for k, v in by_split.items()})
    self._update_metadata()
    return {split: self._generate_examples(videos) for split, videos in by_split.items()}

  def _generate_examples(self, videos: Sequence[sources.VideoPair]) -> Iterator[tuple[int, dict]]:
    chunk_frames = self.builder_config.chunk_frames
    for ordinal, video in enumerate(videos):
      if self._skip_bad_videos:
        try:
          video.verify()  # A decode error must not leave some of the video's chunks in the dataset.
        except sources.DataError as e:
          logging.warning('Skipping video %s: %s', video.name, e)
          self._skipped.append((video.name, str(e)))
          self._update_metadata()
          continue
      for chunk, (start, frames) in enumerate(video.iter_chunks(chunk_frames)):
        count = frames[sources.IR_GT].shape[0]
        example = {
            'video': video.name,
            'frame_index': start,
            'num_video_frames': video.num_frames,
            'frame_names': list(video.frame_names[start:start + count]),
        }
        for key in sources.STREAMS:
          empty = np.zeros((0, video.height, video.width, sources.CHANNELS[key]), np.uint8)
          example[key] = frames.get(key, empty)
        yield (ordinal << _KEY_SHIFT) + chunk, example

  def _update_metadata(self):
    self.info.metadata['skipped_videos'] = [list(item) for item in self._skipped]
    self.info.metadata['config'] = {name: getattr(self.builder_config, name) for name in config_field_names()}
