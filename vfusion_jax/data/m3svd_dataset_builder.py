"""M3SVD (Tang et al., CVPR 2026): registered infrared/visible videos as sharded ArrayRecord files, without TF.

  vfusion-build-m3svd --manual_dir=... --data_dir=... [--chunk_frames=F] [--skip_bad_videos]   # installed
  python -m vfusion_jax.data.build --manual_dir=... --data_dir=... [--chunk_frames=F] [--skip_bad_videos]
  tfds build data/m3svd --manual_dir=<M3SVD folder> --data_dir=<records dir> [--num_shards=N]   # with TF
  tfds build data/m3svd --manual_dir=... --data_dir=... --config='{"name": "chunk16", "chunk_frames": 16}'

The builder lives in the package (``vfusion_jax.data.m3svd_dataset_builder``); data/m3svd/ in the repository
holds the module that the ``tfds`` command looks for, a subclass of this one.

Reading: ``tfds.data_source('m3svd', split='train', data_dir=...)`` (``'m3svd/<config>'`` for another
config). No TensorFlow is needed to build or to read; only the ``tfds`` command itself (tensorflow-datasets
4.9.10) imports TF at start-up, so without TF build with ``python -m vfusion_jax.data.build``.

An example is a chunk of ``chunk_frames`` consecutive frames of one video (see ``windows.window_starts``: the
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

import contextlib
import dataclasses
import functools
import multiprocessing
import os
from typing import Iterator, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import shard_utils

from vfusion_jax.data import sources

DEFAULT_CHUNK_FRAMES = 8
# A build without --num_shards writes at least this many shards per worker process: shards are the unit of
# work, and a few per worker even out videos of different lengths.
SHARDS_PER_WORKER = 4
SKIP_ENV_VAR = 'M3SVD_SKIP_BAD_VIDEOS'
_TRUE_STRINGS = ('1', 'true', 'yes')
# Example keys are (video ordinal << shift) + chunk ordinal: integers in generation order.
_KEY_SHIFT = 32
_ZLIB = 'zlib'

# The official split, 190 training / 30 test videos (the maintainers' recommendation, TemCoCo issue #10): the
# test videos are the release's test folder (M3SVD_Video/test/<stream>/<video>.mp4, which the release's
# video2img.py extracts to M3SVD/test/<stream>/<video>/000001.png ...). Of these 30, the public repository
# github.com/Linfeng-Tang/M3SVD holds 23 under Video/test/; ../shared/data has 0111_1716, 0114_1609, 0115_1834.
OFFICIAL_CONFIG_NAME = 'official'
OFFICIAL_TEST_VIDEOS = (
    '0111_1716', '0111_1753', '0111_1803', '0112_1705', '0112_1707', '0112_1722', '0112_1732', '0113_1647',
    '0113_1714', '0114_1537', '0114_1551', '0114_1609', '0114_1611', '0115_1829', '0115_1831', '0115_1834',
    '0115_1847', '0117_1605', '0117_1620', '0118_1803', '0118_1904', '0118_1913', '1204_1139', '1207_1712',
    '1207_1739', '1208_1654', '1208_1711', '1208_1717', '1230_1154', '1230_1202',
)
OFFICIAL_NUM_VIDEOS = 220

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
    degraded_frames: store the release's degraded frames (infrared_noise, visible_Blur); False stores none
      (shape (0, H, W, C)) and never decodes them: records for training with the synthetic degradation,
      half the bytes a training clip reads and half the build's decoding and compression (docs/data.md).
  """
  chunk_frames: int = DEFAULT_CHUNK_FRAMES
  val_videos: Sequence[str] = ()
  test_videos: Sequence[str] = ()
  val_percent: float = 0.0
  test_percent: float = 0.0
  ir_gray: str = 'auto'
  max_frames_per_video: int = 0
  degraded_frames: bool = True

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


def video_examples(video: sources.VideoPair, ordinal: int, chunk_frames: int, first: int = 0,
                   count: Optional[int] = None) -> Iterator[tuple[int, dict]]:
  """(key, example) of chunks first .. first+count-1 of ``video``, the ``ordinal``-th video of its split.

  Keys are (video ordinal << 32) + chunk ordinal: integers in generation order.
  """
  for chunk, (start, frames) in enumerate(video.iter_chunks(chunk_frames, first, count), start=first):
    frames_in_chunk = frames[sources.IR_GT].shape[0]
    example = {
        'video': video.name,
        'frame_index': start,
        'num_video_frames': video.num_frames,
        'frame_names': list(video.frame_names[start:start + frames_in_chunk]),
    }
    for key in sources.STREAMS:
      empty = np.zeros((0, video.height, video.width, sources.CHANNELS[key]), np.uint8)
      example[key] = frames.get(key, empty)
    yield (ordinal << _KEY_SHIFT) + chunk, example


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """One shard file of a parallel build: consecutive chunks (video, ordinal, first chunk, chunk count)."""
  path: str
  segments: tuple[tuple[sources.VideoPair, int, int, int], ...]
  chunk_frames: int


def plan_shards(videos: Sequence[sources.VideoPair], chunk_frames: int, template, num_shards: Optional[int],
                max_examples: Optional[int] = None, min_shards: int = 1) -> list[ShardPlan]:
  """Cuts a split's examples into shards.

  With ``num_shards``: at TFDS's own boundaries (``shard_utils.get_shard_boundaries``), so the shard files hold
  what the serial build's do. Without: at video boundaries (a worker never decodes a video file from its start
  to reach its first chunk), groups of consecutive videos with about equal example counts, as many as TFDS's
  size rule on the uncompressed frames asks for and at least ``min_shards`` (as the videos allow), so that
  every worker has shards to write.
  """
  examples = [(video, ordinal, chunk) for ordinal, video in enumerate(videos)
              for chunk in range(video.num_chunks(chunk_frames))]
  if max_examples is not None:
    examples = examples[:max_examples]
  if not examples:
    raise sources.DataError('no examples to write')
  if num_shards is not None:
    if len(examples) < num_shards:
      raise ValueError(f'{len(examples)} examples cannot fill {num_shards} shards: every split needs at least '
                       'num_shards examples (chunks); lower --num_shards')
    boundaries = list(shard_utils.get_shard_boundaries(len(examples), num_shards))
  else:
    pixels = sum(min(chunk_frames, v.num_frames) * v.height * v.width * sum(
        sources.CHANNELS[k] for k in v.streams) for v, _, _ in examples)
    wanted = max(shard_utils.ShardConfig.calculate_number_shards(pixels, len(examples),
                                                                 uses_precise_sharding=False), min_shards)
    video_ends = [i + 1 for i in range(len(examples)) if i + 1 == len(examples)
                  or examples[i + 1][1] != examples[i][1]]
    boundaries = sorted({min(video_ends, key=lambda end, t=target: abs(end - t))
                         for target in shard_utils.get_shard_boundaries(len(examples),
                                                                        min(wanted, len(video_ends)))})
    boundaries[-1] = len(examples)
  plans, begin = [], 0
  for index, end in enumerate(boundaries):
    segments = []
    for video, ordinal, chunk in examples[begin:end]:
      if segments and segments[-1][1] == ordinal:
        segments[-1][3] += 1
      else:
        segments.append([video, ordinal, chunk, 1])
    plans.append(ShardPlan(os.fspath(template.sharded_filepath(shard_index=index, num_shards=len(boundaries))),
                           tuple(tuple(s) for s in segments), chunk_frames))
    begin = end
  return plans


def write_shard(plan: ShardPlan, features, writer) -> tuple[int, int]:
  """Decodes, encodes (zlib), serialises and writes one shard (in a worker process); (examples, bytes)."""
  serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
  sizes = []

  def serialized():
    for video, ordinal, first, count in plan.segments:
      for key, example in video_examples(video, ordinal, plan.chunk_frames, first, count):
        data = serializer.serialize_example(features.encode_example(example))
        sizes.append(len(data))
        yield key, data

  writer.write(plan.path, serialized())
  return len(sizes), sum(sizes)


def _verify(video: sources.VideoPair) -> str:
  """'' if every frame of ``video`` decodes, else the error (picklable, for worker processes)."""
  try:
    video.verify()
  except sources.DataError as e:
    return str(e)
  return ''


def _check_listed_splits(config: M3svdConfig, by_split: dict) -> None:
  """Split folders decide the splits; a config that lists val/test videos must agree with them."""
  for split, listed in (('val', config.val_videos), ('test', config.test_videos)):
    wrong = sorted(v.name for name, videos in by_split.items() if name != split for v in videos
                   if v.name in listed)
    if wrong:
      raise sources.DataError(
          f'config {config.name!r} puts {wrong} in {split!r}, but the split folders of the manual_dir put them in '
          f'another split; move them or use a config without a {split} list')


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
  BUILDER_CONFIGS = [
      M3svdConfig(name='default'),
      M3svdConfig(name=OFFICIAL_CONFIG_NAME, test_videos=OFFICIAL_TEST_VIDEOS,
                  description='M3SVD chunks, the official 190 / 30 split: test = the release\'s test folder'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, skip_bad_videos: Optional[bool] = None, num_workers: int = 1, file_format=None,
               **kwargs):
    """Args: skip_bad_videos: log and leave out bad videos (None: $M3SVD_SKIP_BAD_VIDEOS); num_workers:
    processes that decode, compress and write shards (1: TFDS's own serial writer; the records are the same);
    file_format: defaults to array_record (the tfrecord default needs TF); kwargs: as
    tfds.core.GeneratorBasedBuilder.
    """
    super().__init__(file_format=file_format or 'array_record', **kwargs)
    if skip_bad_videos is None:
      skip_bad_videos = os.environ.get(SKIP_ENV_VAR, '').strip().lower() in _TRUE_STRINGS
    if num_workers < 1:
      raise ValueError(f'num_workers must be >= 1, got {num_workers}')
    self._skip_bad_videos = bool(skip_bad_videos)
    self._num_workers = int(num_workers)
    self._original_state.update(skip_bad_videos=skip_bad_videos, num_workers=num_workers)  # kept when pickled
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
    return {split: self._generate_examples(videos) for split, videos in self._videos_by_split(dl_manager).items()}

  def _videos_by_split(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[sources.VideoPair]]:
    """Scans the manual folder: the usable videos of each split, in generation order."""
    config = self.builder_config
    result = sources.scan(dl_manager.manual_dir, skip_bad_videos=self._skip_bad_videos,
                          ir_gray=config.ir_gray, max_frames=config.max_frames_per_video or None)
    self._skipped = list(result.skipped)
    by_split = {}
    for video in result.videos:
      if not config.degraded_frames:
        video = dataclasses.replace(video, streams={key: stream for key, stream in video.streams.items()
                                                    if key not in sources.LQ_STREAMS})
      split = video.split or sources.assign_split(
          video.name, val_videos=config.val_videos, test_videos=config.test_videos,
          val_percent=config.val_percent, test_percent=config.test_percent)
      by_split.setdefault(split, []).append(video)
    if not by_split:
      raise sources.DataError(f'no usable video in {dl_manager.manual_dir} ({len(self._skipped)} skipped)')
    _check_listed_splits(config, by_split)
    if config.name == OFFICIAL_CONFIG_NAME and len(result.videos) != OFFICIAL_NUM_VIDEOS:
      logging.warning('The official split is of %d videos; %s has %d (per split: %s).', OFFICIAL_NUM_VIDEOS,
                      dl_manager.manual_dir, len(result.videos), {k: len(v) for k, v in by_split.items()})
    logging.info('M3SVD videos per split: %s', {k: len(v) for k, v in by_split.items()})
    self._update_metadata()
    return by_split

  def _generate_examples(self, videos: Sequence[sources.VideoPair]) -> Iterator[tuple[int, dict]]:
    """TFDS's per-split generator (with ``_split_generators``, the hooks its own writer calls): the examples
    that ``_generate_splits`` writes, in the same order, for TFDS tools that iterate a builder directly."""
    for ordinal, video in enumerate(videos):
      if self._skip_bad_videos:
        error = _verify(video)  # A decode error must not leave some of the video's chunks in the dataset.
        if error:
          self._skip(video, error)
          continue
      yield from video_examples(video, ordinal, self.builder_config.chunk_frames)

  def _skip(self, video: sources.VideoPair, error: str) -> None:
    logging.warning('Skipping video %s: %s', video.name, error)
    self._skipped.append((video.name, error))
    self._update_metadata()

  def _generate_splits(self, dl_manager: tfds.download.DownloadManager,
                       download_config: tfds.download.DownloadConfig) -> list:
    """Writes each split's shards itself (TFDS's extension point, as its Hugging Face builder does), in this
    process or, with ``num_workers`` > 1, in a pool of processes: the same examples in the same order either
    way, and with ``num_shards`` set the same shards. TFDS's own serial writer is not used: it sorts the
    examples through a shuffler that spills to disk with TensorFlow's GFile once a split passes 1 GB of
    serialised examples, so without TensorFlow it cannot write a split of the full release."""
    by_split = self._videos_by_split(dl_manager)
    features, writer = self.info.features, self._example_writer()
    split_infos = []
    with contextlib.ExitStack() as stack:
      if self._num_workers > 1:
        pool = stack.enter_context(multiprocessing.get_context('spawn').Pool(self._num_workers))
        map_in_order = functools.partial(pool.map, chunksize=1)
      else:
        map_in_order = lambda function, items: list(map(function, items))
      if self._skip_bad_videos:
        by_split = {split: self._verified(videos, map_in_order) for split, videos in by_split.items()}
      for split, videos in by_split.items():
        shards = plan_shards(videos, self.builder_config.chunk_frames, self._get_filename_template(split),
                             download_config.num_shards, download_config.max_examples_per_split,
                             min_shards=SHARDS_PER_WORKER * self._num_workers)
        written = map_in_order(functools.partial(write_shard, features=features, writer=writer), shards)
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[n for n, _ in written],
                                               num_bytes=sum(b for _, b in written),
                                               filename_template=self._get_filename_template(split)))
    return split_infos

  def _verified(self, videos: Sequence[sources.VideoPair], map_in_order) -> list[sources.VideoPair]:
    """The videos whose every frame decodes (checked through ``map_in_order``); the others are skipped and
    recorded."""
    kept = []
    for video, error in zip(videos, map_in_order(_verify, videos)):
      if error:
        self._skip(video, error)
      else:
        kept.append(video)
    return kept

  def _update_metadata(self):
    self.info.metadata['skipped_videos'] = [list(item) for item in self._skipped]
    self.info.metadata['config'] = {name: getattr(self.builder_config, name) for name in config_field_names()}
