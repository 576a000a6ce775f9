"""Grain input pipelines: training clips with on-the-fly degradation, and whole videos for evaluation.

A *source* is anything random-access (``len(source)``, ``source[i]``) whose examples are chunks of consecutive
frames of one video, the layout of the M3SVD TFDS records and of ``synthetic.SyntheticVideoSource``:

  video        str (or bytes)   the video's name
  frame_index  int              index of the chunk's first frame in the video
  ir_gt        uint8 (F,H,W,1)  clean infrared
  vi_gt        uint8 (F,H,W,3)  clean visible
  ir_lq, vi_lq uint8, optional  the dataset's own degraded frames (absent, or with 0 frames, if not released)
  num_video_frames int, optional  frames in the whole video; with it, a training clip may start anywhere in a
                                chunk and run on into the next chunk of the same video (record index + 1, as
                                the builder writes videos in frame order), i.e. one or two reads per clip

The training pipeline yields the batch contract of the train step: a dict ``ir_lq``, ``vi_lq``, ``ir_gt``,
``vi_gt`` of float32 in [0, 1], shaped (B, T, H, W, 1) for infrared and (B, T, H, W, 3) for visible, where B is
this process's share of the global batch.
"""

import dataclasses
import functools
import os
import pathlib
import threading
import time
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np

from vfusion_jax.data import degrade

UINT8_MAX = 255.0
DEGRADATION_MODES = ('synthetic', 'dataset')


FOLLOWING_KEY = '_read_following'


def _video_name(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _read_following(source: Any, index: int, video: str, end: int, keys: Sequence[str]) -> dict:
  """The ``keys`` frames from ``end`` on of record ``index``, which must be the next chunk of ``video``.

  Only ``keys`` are touched: the others may be undecoded (TFDS ``SkipDecoding`` leaves the LQ frames as bytes
  when the degradation is synthetic).
  """
  following = source[index]
  start = int(following['frame_index'])
  if _video_name(following['video']) != video or not start <= end < start + np.asarray(following['vi_gt']).shape[0]:
    raise ValueError(f'record {index} is not the chunk of video {video!r} that continues at frame {end}: the '
                     'records must hold each video\'s chunks consecutively, in frame order')
  return {key: np.asarray(following[key])[end - start:] for key in keys}


class ClipSource:
  """A chunk source whose examples can also read the chunk after them (same video), when it exists.

  ``len`` and indices are the wrapped source's. Example i gets a ``_read_following`` callable if its video
  goes on after it; the clip sampler calls it only when the clip it draws crosses the chunk's end.
  """

  def __init__(self, source: Any):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    example = dict(self._source[index])
    total = example.get('num_video_frames')
    end = int(example['frame_index']) + np.asarray(example['vi_gt']).shape[0]
    if total is not None and end < int(total) and index + 1 < len(self._source):
      example[FOLLOWING_KEY] = functools.partial(_read_following, self._source, index + 1,
                                                 _video_name(example['video']), end)
    return example


def _has_frames(example: Mapping[str, Any], key: str) -> bool:
  value = example.get(key)
  return value is not None and np.asarray(value).shape[0] > 0


@dataclasses.dataclass(frozen=True)
class ClipSampler(grain.transforms.RandomMap):
  """Training clips from a chunk: random T-frame window, random crop, optional augmentation, LQ frames.

  Attributes:
    num_frames: T, frames per clip (6 in the release).
    crop_size: side of the random square crop (128 in the release); 0 keeps the whole H x W frame.
    degradation: 'synthetic' degrades the clean frames on the fly with ``degradation_config`` (new noise and
      blur for every clip); 'dataset' uses the chunk's own ``ir_lq``/``vi_lq`` frames.
    degradation_config: ranges of the synthetic degradation.
    flips: random horizontal/vertical flips; rot90: random 90-degree rotations (square clips only);
      temporal_reverse: random time reversal. All off by default, as released (REFERENCE.md 7).
    clips_per_chunk: K independent clips (window, crop, degradation, augmentation) from one decoded chunk.
      1 returns one clip, (T, H, W, C) per stream, as the release samples; K > 1 returns (K, T, H, W, C)
      per stream, so the chunk's decompression, the dominant cost of a clip, is paid once for K clips.
    degradation_margin: the synthetic degradation is applied to the crop plus this many pixels on every side
      (within the frame), then cut to the crop, so the blur at the crop's border sees real neighbours, as
      when the whole frame is degraded, and not reflected crop content. The default is the blur's radius.
    clean_fraction: probability in [0, 1] that a clip's inputs are its clean frames (``ir_lq = ir_gt``,
      ``vi_lq = vi_gt``), the normal setting, so the network also learns to leave clean footage intact. 0 (the
      release) degrades every clip and draws nothing for it, so the random stream is the release's.
  """

  num_frames: int
  crop_size: int
  degradation: str = 'synthetic'
  degradation_config: degrade.DegradationConfig = degrade.DegradationConfig()
  flips: bool = False
  rot90: bool = False
  temporal_reverse: bool = False
  clips_per_chunk: int = 1
  degradation_margin: int = degrade.KERNEL_SIZE // 2
  clean_fraction: float = 0.0

  def __post_init__(self):
    if self.degradation not in DEGRADATION_MODES:
      raise ValueError(f'degradation must be one of {DEGRADATION_MODES}, got {self.degradation!r}')
    if self.clips_per_chunk < 1:
      raise ValueError(f'clips_per_chunk must be >= 1, got {self.clips_per_chunk}')
    if self.crop_size < 0 or self.degradation_margin < 0:
      raise ValueError(f'crop_size and degradation_margin must be >= 0, got {self.crop_size}, '
                       f'{self.degradation_margin}')
    if not 0.0 <= self.clean_fraction <= 1.0:
      raise ValueError(f'clean_fraction must be in [0, 1], got {self.clean_fraction}')

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict:
    frames, height, width = np.asarray(element['vi_gt']).shape[:3]
    read_following = element.get(FOLLOWING_KEY)
    if read_following is None:  # the clip must lie inside this chunk
      last_start = frames - self.num_frames
    else:  # the clip starts in this chunk and may run on into the next one
      last_start = min(frames - 1, int(element['num_video_frames']) - int(element['frame_index']) - self.num_frames)
    if last_start < 0:
      raise ValueError(f'chunk of video {element.get("video")!r} has {frames} frames; clips need '
                       f'{self.num_frames} (rebuild the dataset with longer chunks)')
    crop_h, crop_w = (self.crop_size, self.crop_size) if self.crop_size else (height, width)
    if crop_h > height or crop_w > width:
      raise ValueError(f'crop_size {self.crop_size} exceeds the frames ({height}x{width})')
    if self.rot90 and crop_h != crop_w:
      raise ValueError(f'rot90 needs square clips; crop_size=0 keeps the whole {height}x{width} frame')
    keys = ['ir_gt', 'vi_gt']
    if self.degradation == 'dataset':
      for key in ('ir_lq', 'vi_lq'):
        if not _has_frames(element, key):
          raise ValueError(f'degradation="dataset" but video {element.get("video")!r} has no {key} frames; '
                           'use degradation="synthetic"')
      keys += ['ir_lq', 'vi_lq']
    streams = _ChunkFrames({key: np.asarray(element[key]) for key in keys}, read_following)
    clips = [self._clip(streams, rng, last_start, (height, width), (crop_h, crop_w))
             for _ in range(self.clips_per_chunk)]
    if self.clips_per_chunk == 1:
      return clips[0]
    return {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}

  def _clip(self, streams: '_ChunkFrames', rng: np.random.Generator, last_start: int,
            frame_size: tuple[int, int], crop_size: tuple[int, int]) -> dict:
    """One clip: window, crop (with the degradation margin), to float, degradation, augmentation."""
    start = int(rng.integers(0, last_start + 1))
    top = int(rng.integers(0, frame_size[0] - crop_size[0] + 1))
    left = int(rng.integers(0, frame_size[1] - crop_size[1] + 1))
    clean = self.clean_fraction > 0 and rng.random() < self.clean_fraction
    margin = self.degradation_margin if self.degradation == 'synthetic' and not clean else 0
    rows = _with_margin(top, crop_size[0], margin, frame_size[0])
    cols = _with_margin(left, crop_size[1], margin, frame_size[1])
    window = streams.window(start, self.num_frames)
    clip = {key: value[:, rows, cols].astype(np.float32) / UINT8_MAX for key, value in window.items()}
    if clean:
      clip['ir_lq'], clip['vi_lq'] = clip['ir_gt'].copy(), clip['vi_gt'].copy()
    elif self.degradation == 'synthetic':
      clip['ir_lq'], clip['vi_lq'] = degrade.degrade_clip(clip['ir_gt'], clip['vi_gt'], rng,
                                                          self.degradation_config)
      inner = (slice(top - rows.start, top - rows.start + crop_size[0]),
               slice(left - cols.start, left - cols.start + crop_size[1]))
      clip = {key: value[:, inner[0], inner[1]] for key, value in clip.items()}
    return _augment(clip, rng, self.flips, self.rot90, self.temporal_reverse)


def _with_margin(start: int, size: int, margin: int, limit: int) -> slice:
  """The slice [start - margin, start + size + margin) clipped to [0, limit)."""
  return slice(max(start - margin, 0), min(start + size + margin, limit))


class _ChunkFrames:
  """A chunk's decoded streams, extended by the next chunk of the same video the first time a clip needs it."""

  def __init__(self, streams: dict, read_following: Any):
    self._streams = streams
    self._read_following = read_following
    self._extended = False

  def window(self, start: int, length: int) -> dict:
    if start + length > len(next(iter(self._streams.values()))) and not self._extended:
      following = self._read_following(list(self._streams))  # second read: the next chunk of the video
      self._streams = {key: np.concatenate([value, following[key]]) for key, value in self._streams.items()}
      self._extended = True
    return {key: value[start:start + length] for key, value in self._streams.items()}


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
                  clips_per_chunk: int = 1, clean_fraction: float = 0.0, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Endless, shuffled, deterministic MapDataset of training batches for this process.

  ``batch_size`` is the global batch; this process gets ``batch_size // process_count`` clips per batch,
  drawn from its own slice of the stream. Element i is fully determined by (seed, i), so an iterator restored
  from its saved state yields the same batches.

  With ``clips_per_chunk`` = K > 1 an element is a *block* of K batches, each stream shaped
  (K, B, T, H, W, C): the B chunks of a block are decoded once and give clip k of every one of the K batches,
  so every batch still holds B clips of B different chunks (the marginal distribution of a clip is the
  release's), while K consecutive batches share their chunks. ``make_iterator(batches_per_element=K)`` yields
  the block's batches one by one.
  """
  if batch_size % process_count:
    raise ValueError(f'global batch_size {batch_size} is not divisible by {process_count} processes')
  if len(source) == 0:
    raise ValueError('the training source has no examples')
  sampler = ClipSampler(num_frames, crop_size, degradation, degradation_config or degrade.DegradationConfig(),
                        flips, rot90, temporal_reverse, clips_per_chunk, clean_fraction=clean_fraction)
  ds = grain.MapDataset.source(ClipSource(source)).seed(seed).shuffle().repeat(None)
  ds = ds.random_map(sampler)
  if process_count > 1:
    ds = ds[process_index::process_count]
  batch_fn = _stack_blocks if clips_per_chunk > 1 else None
  return ds.batch(batch_size // process_count, drop_remainder=True, batch_fn=batch_fn)


def _stack_blocks(groups: Sequence[Mapping[str, np.ndarray]]) -> dict:
  """B groups of K clips, (K, T, H, W, C) per stream, to one block (K, B, T, H, W, C): K batches."""
  return {key: np.stack([group[key] for group in groups], axis=1) for key in groups[0]}


class _SplitBlocks(grain.experimental.FlatMapTransform):
  """A block (K, B, ...) per stream into its K batches (B, ...), in order."""

  def __init__(self, batches_per_block: int):
    self.max_fan_out = batches_per_block

  def flat_map(self, block: Mapping[str, np.ndarray]) -> list[dict]:
    return [{key: value[k] for key, value in block.items()} for k in range(self.max_fan_out)]


# Seconds between a worker's checks that the process that started it is still alive.
PARENT_CHECK_INTERVAL_S = 1.0


def _watch_parent(parent_pid: int, interval_s: float) -> None:
  while os.getppid() == parent_pid:
    time.sleep(interval_s)
  os._exit(1)  # pylint: disable=protected-access


def _exit_with_parent(parent_pid: int, worker_index: int, worker_count: int) -> None:
  """grain worker start-up: end this worker once its parent is gone.

  A training process killed by SIGKILL (the OOM killer, a crash, a test) cannot stop its grain workers, which
  would otherwise live on holding their memory, one set per restart.
  """
  del worker_index, worker_count
  threading.Thread(target=_watch_parent, args=(parent_pid, PARENT_CHECK_INTERVAL_S), daemon=True,
                   name='watch_parent').start()


def make_iterator(dataset: grain.MapDataset, *, num_workers: int = 0, prefetch: int = 2,
                  batches_per_element: int = 1):
  """A checkpointable iterator (``get_state``/``set_state``); ``num_workers`` > 0 uses worker processes.

  ``batches_per_element``: the K of a ``train_dataset(clips_per_chunk=K)``, whose elements are blocks of K
  batches; they are split into batches after the workers (grain's flat map, which saves its position inside
  a block, so a restored iterator resumes on the same batch).
  """
  ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                        worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
  if batches_per_element > 1:
    ds = grain.experimental.FlatMapIterDataset(ds, _SplitBlocks(batches_per_element))
  return iter(ds)


# Evaluation: whole videos, in order.

STREAM_KEYS = ('ir_gt', 'vi_gt', 'ir_lq', 'vi_lq')
TFDS_INFO_FILE = 'dataset_info.json'
# Names given to frames of a source that stores none (0-based, like the released 0000.png).
FRAME_NAME_DIGITS = 4


def eval_videos(source_or_path: Any, *, split: str | None = None, data_dir: str | None = None,
                videos: Sequence[str] | None = None, max_frames: int | None = None,
                ir_gray: str = 'auto') -> Iterator[dict]:
  """Yields whole videos in order, for evaluation and inference.

  Each item: ``video`` (str), ``frame_names`` (list of N str), ``ir_gt`` uint8 (N, H, W, 1), ``vi_gt`` uint8
  (N, H, W, 3), and ``ir_lq`` / ``vi_lq`` (same shapes) only when the data has the release's degraded
  frames. A whole video is held in memory (640x480: 2.5 MB per frame with LQ); ``max_frames`` keeps the
  first frames only.

  Args:
    source_or_path: one of
      * a random-access source of chunks in the layout at the top of this module (``tfds.data_source(...)``,
        ``synthetic.SyntheticVideoSource``); a video's chunks must be consecutive records in frame order, as
        the M3SVD builder writes them; chunks may overlap (the overlap is read once);
      * the folder of TFDS records (``<data_dir>/m3svd/<config>/<version>``, holding dataset_info.json);
      * a TFDS name such as 'm3svd' when ``data_dir`` is given;
      * a dataset folder in any layout of ``vfusion_jax.data.sources`` (frame folders or mp4 pairs).
    split: the TFDS split (needed when the records have several), or the split folder of a dataset folder
      (None: all videos).
    data_dir: TFDS data_dir, when ``source_or_path`` is a dataset name.
    videos: only these video names (all if None).
    max_frames: keep at most this many frames of each video.
    ir_gray: how infrared becomes one channel, for dataset folders (see ``sources``).

  Raises:
    ValueError: chunks of a video are not consecutive, start after frame 0 or leave a gap; an unknown split.
    sources.DataError: a malformed video in a dataset folder.
  """
  if max_frames is not None and max_frames < 1:
    raise ValueError(f'max_frames must be >= 1, got {max_frames}')
  if isinstance(source_or_path, (str, os.PathLike)):
    path = pathlib.Path(source_or_path)
    if data_dir is not None:
      source = _tfds_data_source(str(source_or_path), split, data_dir)
    elif (path / TFDS_INFO_FILE).is_file():
      source = _tfds_records(path, split)
    else:
      yield from _videos_from_folder(path, split, videos, max_frames, ir_gray)
      return
  else:
    source = source_or_path
  yield from _videos_from_chunks(source, videos, max_frames)


def _tfds_data_source(name: str, split: str | None, data_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if split is None:
    raise ValueError(f'eval_videos({name!r}, data_dir=...) needs a split')
  return tfds.data_source(name, split=split, data_dir=data_dir)


def _tfds_records(path: pathlib.Path, split: str | None):
  """The data source of one split of the TFDS records in ``path``."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(path)
  splits = list(builder.info.splits)
  if split is None:
    if len(splits) != 1:
      raise ValueError(f'{path} has splits {splits}; pass split=')
    split = splits[0]
  return builder.as_data_source(split=split)


def _videos_from_folder(path: pathlib.Path, split: str | None, videos: Sequence[str] | None,
                        max_frames: int | None, ir_gray: str) -> Iterator[dict]:
  from vfusion_jax.data import sources  # pylint: disable=g-import-not-at-top
  found = sources.scan(path, ir_gray=ir_gray, max_frames=max_frames, videos=videos).videos
  if split is not None:
    if all(video.split is None for video in found):
      raise ValueError(f'{path} has no split folders; pass split=None to read all its videos')
    found = [video for video in found if video.split == split]
  for video in found:
    yield dict(video=video.name, frame_names=list(video.frame_names), **video.read())


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


class _VideoAccumulator:
  """Concatenates the consecutive (possibly overlapping) chunks of one video."""

  def __init__(self, name: str, max_frames: int | None):
    self.name = name
    self.max_frames = max_frames
    self.num_frames = 0
    self.names: list[str] = []
    self.frames: dict[str, list[np.ndarray]] = {}

  def add(self, example: Mapping[str, Any], record: int):
    if self.max_frames is not None and self.num_frames >= self.max_frames:
      return
    start = int(example['frame_index'])
    if start > self.num_frames:
      raise ValueError(f'video {self.name!r}: record {record} starts at frame {start}, but frames '
                       f'{self.num_frames}..{start - 1} are in no earlier chunk (the source must hold each '
                       "video's chunks consecutively, in frame order)")
    count = np.asarray(example['ir_gt']).shape[0]
    stop = count if self.max_frames is None else min(count, self.max_frames - start)
    skip = self.num_frames - start  # Frames already read from the previous, overlapping chunk.
    if stop <= skip:
      return
    keys = [key for key in STREAM_KEYS if _has_frames(example, key)]
    if self.frames and set(keys) != set(self.frames):
      raise ValueError(f'video {self.name!r}: record {record} has streams {keys}, earlier chunks '
                       f'{sorted(self.frames)}')
    for key in keys:
      self.frames.setdefault(key, []).append(np.asarray(example[key])[skip:stop])
    names = example.get('frame_names')
    if names is None or len(names) != count:
      names = [f'{start + i:0{FRAME_NAME_DIGITS}d}.png' for i in range(count)]
    self.names.extend(_text(name) for name in list(names)[skip:stop])
    self.num_frames = start + stop

  def result(self) -> dict:
    return dict(video=self.name, frame_names=self.names,
                **{key: np.concatenate(parts) for key, parts in self.frames.items()})


def _videos_from_chunks(source: Any, videos: Sequence[str] | None, max_frames: int | None) -> Iterator[dict]:
  """Groups the consecutive chunks of each video of a random-access source into whole videos."""
  wanted = None if videos is None else set(videos)
  current, done = None, set()
  for record in range(len(source)):
    example = source[record]
    name = _text(example['video'])
    if wanted is not None and name not in wanted:
      continue
    if current is None or name != current.name:
      if current is not None:
        yield current.result()
        done.add(current.name)
      if name in done:
        raise ValueError(f'video {name!r}: record {record} is separated from its earlier chunks by another '
                         "video (the source must hold each video's chunks consecutively, in frame order)")
      if int(example['frame_index']) != 0:
        raise ValueError(f'video {name!r}: its first chunk (record {record}) starts at frame '
                         f'{int(example["frame_index"])}, not 0')
      current = _VideoAccumulator(name, max_frames)
    current.add(example, record)
  if current is not None:
    yield current.result()
