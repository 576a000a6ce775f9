"""Readers of M3SVD-style infrared/visible video folders, with validation.

Three on-disk layouts are read, each optionally below split folders ``train/``, ``val/`` (or ``validation/``),
``test/``:

  release:  infrared_Enhance/ visible_Enhance/ [infrared_noise/] [visible_Blur/]   (M3SVD image release)
  video:    infrared/ visible/                                                      (M3SVD video release)
  plain:    ir/ vi/

Inside every stream folder, a video is either a sub-folder of PNG frames (``<video>/0000.png`` ...) or a video
file (``<video>.mp4``), so the release's four folders may also hold mp4 files. ``infrared_noise`` and
``visible_Blur`` are the dataset's degraded frames (LQ); they are optional, but a present LQ folder must hold
every video.

``scan`` finds the videos and checks, before any pixel is decoded, that for every video: each stream has
frames; frame files are numbered consecutively (``0000.png, 0001.png``, any start, any zero padding) and are
named alike in every stream; all streams have the same frame count and the same frame size; every frame's
header is readable. Decoding then checks the pixel data. Every problem raises ``DataError`` naming the video
and the file; with ``skip_bad_videos`` a bad video is logged and left out instead.

Frames come out as uint8 arrays: infrared (n, H, W, 1), visible (n, H, W, 3), RGB. M3SVD stores infrared
PNGs as three equal channels; how infrared becomes one channel is ``ir_gray``:
  'auto'  (default) PNG: 'equal'; video file: 'luma' (decoded 4:2:0 video has small chroma noise, so its
          channels of a grey video differ by a few levels, and BT.601 luma recovers the coded grey plane);
  'equal' the channels must be equal (else ``DataError``), channel 0 is kept;
  'first' channel 0, unchecked;
  'luma'  round(0.299 R + 0.587 G + 0.114 B), which is the channel value when the channels are equal.
"""

import collections
import dataclasses
import hashlib
import os
import pathlib
import re
from typing import Iterator, Mapping, Optional, Sequence, Union

from absl import logging
import numpy as np
from PIL import Image

from vfusion_jax import windows
from vfusion_jax.data import video_io

PathLike = Union[str, os.PathLike]

IR_GT, VI_GT, IR_LQ, VI_LQ = 'ir_gt', 'vi_gt', 'ir_lq', 'vi_lq'
STREAMS = (IR_GT, VI_GT, IR_LQ, VI_LQ)
GT_STREAMS = (IR_GT, VI_GT)
LQ_STREAMS = (IR_LQ, VI_LQ)
CHANNELS = {IR_GT: 1, VI_GT: 3, IR_LQ: 1, VI_LQ: 3}
# Folder names of each stream, one per layout; a layout root may hold only one name per stream.
STREAM_FOLDERS = {
    IR_GT: ('infrared_Enhance', 'infrared', 'ir'),
    VI_GT: ('visible_Enhance', 'visible', 'vi'),
    IR_LQ: ('infrared_noise',),
    VI_LQ: ('visible_Blur',),
}
# Split folder name -> split name.
SPLIT_FOLDERS = {'train': 'train', 'val': 'val', 'validation': 'val', 'test': 'test'}
SPLITS = ('train', 'val', 'test')
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mkv', '.mov', '.webm')
PNG_SUFFIX = '.png'
IR_GRAY_MODES = ('auto', 'equal', 'first', 'luma')
# ITU-R BT.601 luma weights, the matrix FFmpeg uses for standard-definition video.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# Frame names made up for video files: 0-based, at least this many digits (like the released 0000.png).
MIN_NAME_DIGITS = 4
PERCENT = 100
_HASH_HEX_DIGITS = 8


class DataError(ValueError):
  """A malformed video in a dataset folder; the message names the video and the file."""


@dataclasses.dataclass(frozen=True)
class Stream:
  """One stream (e.g. clean infrared) of one video: a folder of PNG frames or a video file.

  Attributes:
    path: the frame folder or the video file.
    frames: the PNG files in frame order; empty for a video file.
    num_frames: frame count (for a video file, from its header).
    height, width: frame size.
  """
  path: pathlib.Path
  frames: tuple[pathlib.Path, ...]
  num_frames: int
  height: int
  width: int

  @property
  def is_video_file(self) -> bool:
    return not self.frames


@dataclasses.dataclass(frozen=True)
class VideoPair:
  """A registered infrared/visible video: its clean streams and, when released, its degraded ones.

  Attributes:
    name: the video's name (its folder or file stem), e.g. '0111_1716'.
    split: 'train'/'val'/'test' from a split folder, or None when the layout has none.
    streams: stream key (ir_gt, vi_gt, and optionally ir_lq, vi_lq) -> Stream.
    num_frames: frames read (all of them unless ``scan(max_frames=...)`` cut the video short).
    height, width: frame size, shared by all streams.
    frame_names: one file name per frame ('0000.png' ...); made up for video files.
    ir_gray: how infrared frames become one channel (see the module docstring).
  """
  name: str
  split: Optional[str]
  streams: Mapping[str, Stream]
  num_frames: int
  height: int
  width: int
  frame_names: tuple[str, ...]
  ir_gray: str = 'auto'

  @property
  def lq_streams(self) -> tuple[str, ...]:
    """The degraded streams this video has."""
    return tuple(key for key in LQ_STREAMS if key in self.streams)

  def iter_frames(self, start: int = 0, stop: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields frames start .. stop-1 as dicts stream key -> uint8 (H, W, C); streams video files once."""
    stop = self.num_frames if stop is None else min(stop, self.num_frames)
    if not 0 <= start <= stop:
      raise ValueError(f'video {self.name}: need 0 <= start <= stop, got {start}, {stop}')
    readers = {key: self._iter_stream(key, start, stop) for key in self.streams}
    for _ in range(start, stop):
      yield {key: next(reader) for key, reader in readers.items()}

  def read(self, start: int = 0, count: Optional[int] = None) -> dict[str, np.ndarray]:
    """Frames start .. start+count-1 (all if count is None) as stream key -> uint8 (n, H, W, C)."""
    stop = self.num_frames if count is None else start + count
    buffers = collections.defaultdict(list)
    for frame in self.iter_frames(start, stop):
      for key, value in frame.items():
        buffers[key].append(value)
    return {key: _stack(buffers[key], self.height, self.width, CHANNELS[key]) for key in self.streams}

  def num_chunks(self, chunk_frames: int) -> int:
    """How many chunks `iter_chunks` yields."""
    return len(windows.window_starts(self.num_frames, chunk_frames))

  def iter_chunks(self, chunk_frames: int, first: int = 0,
                  count: Optional[int] = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yields (first frame index, stream key -> uint8 (F, H, W, C)) for the chunks of ``chunk_frames`` frames.

    The chunks are ``windows.window_starts`` without overlap: the last one ends on the last frame, overlapping
    the one before it, as in the released test split (REFERENCE.md 8.4); a video shorter than a chunk is one
    chunk. ``first``, ``count``: only chunks first .. first+count-1 (all from ``first`` if count is None).
    Reads each needed frame once, holding at most ``chunk_frames`` frames.
    """
    starts = windows.window_starts(self.num_frames, chunk_frames)[first:None if count is None else first + count]
    if not starts:
      return
    size = min(chunk_frames, self.num_frames)
    window = collections.deque(maxlen=size)
    pending = collections.deque(starts)
    for index, frame in enumerate(self.iter_frames(starts[0], starts[-1] + size), start=starts[0]):
      window.append(frame)
      while pending and index + 1 - size == pending[0]:
        yield pending.popleft(), {key: np.stack([f[key] for f in window]) for key in self.streams}

  def verify(self):
    """Decodes every frame of every stream; raises DataError for the first bad one."""
    for _ in self.iter_frames():
      pass

  def _iter_stream(self, key: str, start: int, stop: int) -> Iterator[np.ndarray]:
    stream = self.streams[key]
    if stream.is_video_file:
      frames = self._iter_video_file(stream, start, stop)
    else:
      frames = (self._load_png(path) for path in stream.frames[start:stop])
    gray_mode = _gray_mode(self.ir_gray, stream) if CHANNELS[key] == 1 else None
    for index, rgb in enumerate(frames, start):
      where = stream.path if stream.is_video_file else stream.frames[index]
      if rgb.shape[:2] != (self.height, self.width):
        raise DataError(f'video {self.name}: frame {index} of {where} is {rgb.shape[1]}x{rgb.shape[0]}, '
                        f'expected {self.width}x{self.height}')
      yield to_gray(rgb, gray_mode, f'video {self.name}: {where}') if gray_mode else rgb

  def _iter_video_file(self, stream: Stream, start: int, stop: int) -> Iterator[np.ndarray]:
    decoded = start
    try:
      for rgb in video_io.iter_video_frames(stream.path, start, stop - start):
        yield rgb
        decoded += 1
    except ValueError as e:
      raise DataError(f'video {self.name}: frame {decoded} of {stream.path} cannot be decoded: {e}') from e
    if decoded < stop:
      raise DataError(f'video {self.name}: {stream.path} ended after {decoded} frames; its header says '
                      f'{stream.num_frames}')

  def _load_png(self, path: pathlib.Path) -> np.ndarray:
    try:
      return video_io.load_png(path)
    except (ValueError, OSError) as e:
      raise DataError(f'video {self.name}: cannot decode frame {path}: {e}') from e


@dataclasses.dataclass(frozen=True)
class ScanResult:
  """What ``scan`` found: the valid videos (natural order within each split) and the skipped ones.

  Attributes:
    videos: the videos, split folders in SPLITS order, then by name.
    skipped: (video name, reason) of the videos left out by ``skip_bad_videos``.
    layout_roots: (split or None, folder holding the stream folders).
  """
  videos: tuple[VideoPair, ...]
  skipped: tuple[tuple[str, str], ...]
  layout_roots: tuple[tuple[Optional[str], pathlib.Path], ...]


def to_gray(rgb: np.ndarray, mode: str, where: str = 'frame') -> np.ndarray:
  """uint8 (..., 3) RGB -> uint8 (..., 1) by ``mode`` ('equal', 'first' or 'luma'); ``where`` names it in errors."""
  if mode == 'first':
    return rgb[..., :1].copy()
  if mode == 'equal':
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
      raise DataError(f'{where}: infrared frame has unequal colour channels (max difference '
                      f'{int(np.abs(rgb.astype(np.int16) - rgb[..., :1]).max())}); use ir_gray="luma" '
                      'or "first" to convert it')
    return rgb[..., :1].copy()
  if mode == 'luma':
    luma = rgb.astype(np.float32) @ LUMA_WEIGHTS
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
  raise ValueError(f'ir gray mode must be one of {IR_GRAY_MODES[1:]}, got {mode!r}')


def _gray_mode(ir_gray: str, stream: Stream) -> str:
  if ir_gray == 'auto':
    return 'luma' if stream.is_video_file else 'equal'
  return ir_gray


def _stack(frames: Sequence[np.ndarray], height: int, width: int, channels: int) -> np.ndarray:
  if frames:
    return np.stack(frames)
  return np.zeros((0, height, width, channels), np.uint8)


def assign_split(name: str, *, val_videos: Sequence[str] = (), test_videos: Sequence[str] = (),
                 val_percent: float = 0.0, test_percent: float = 0.0) -> str:
  """The split of a video of a layout without split folders, from its name alone.

  Listed names go to their split; the others by a hash of the name: ``test_percent`` % to 'test',
  ``val_percent`` % to 'val', the rest to 'train'. The hash (SHA-256) does not depend on the other videos,
  so adding videos never moves one.
  """
  if name in val_videos and name in test_videos:
    raise ValueError(f'video {name} is listed in both val_videos and test_videos')
  if name in test_videos:
    return 'test'
  if name in val_videos:
    return 'val'
  if not 0 <= val_percent + test_percent <= PERCENT or min(val_percent, test_percent) < 0:
    raise ValueError(f'need 0 <= val_percent, test_percent and a sum <= 100, got {val_percent}, {test_percent}')
  digest = hashlib.sha256(name.encode('utf-8')).hexdigest()[:_HASH_HEX_DIGITS]
  position = int(digest, 16) / 16**_HASH_HEX_DIGITS * PERCENT
  if position < test_percent:
    return 'test'
  if position < test_percent + val_percent:
    return 'val'
  return 'train'


def natural_key(name: str):
  """Sort key comparing digit runs as numbers: 2 < 10, 0009 < 0010."""
  return [(0, int(part), part) if part.isdigit() else (1, 0, part.lower()) for part in re.split(r'(\d+)', name)]


def _visible_entries(folder: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in folder.iterdir() if not p.name.startswith('.')]


def find_layout_roots(root: PathLike) -> list[tuple[Optional[str], pathlib.Path]]:
  """(split or None, folder holding the stream folders) of a dataset root, split folders in SPLITS order."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'No such dataset folder: {root}')
  entries = {p.name: p for p in _visible_entries(root) if p.is_dir()}
  stream_names = [name for names in STREAM_FOLDERS.values() for name in names if name in entries]
  split_dirs = [(SPLIT_FOLDERS[name], path) for name, path in entries.items() if name in SPLIT_FOLDERS]
  if stream_names and split_dirs:
    raise DataError(f'{root} holds both stream folders ({", ".join(stream_names)}) and split folders '
                    f'({", ".join(p.name for _, p in split_dirs)}); keep one or the other')
  if not split_dirs:
    if not stream_names:
      raise DataError(f'{root} holds no dataset: expected {_expected_layouts()}, optionally inside '
                      f'{"/, ".join(SPLIT_FOLDERS)}/ split folders')
    return [(None, root)]
  seen = {}
  for split, path in split_dirs:
    if split in seen:
      raise DataError(f'{root}: {seen[split].name}/ and {path.name}/ are both the {split} split')
    seen[split] = path
  return [(split, seen[split]) for split in SPLITS if split in seen]


def _expected_layouts() -> str:
  layouts = zip(*(STREAM_FOLDERS[key] for key in GT_STREAMS))
  return ' or '.join(f'{ir}/ + {vi}/' for ir, vi in layouts)


def _stream_folders(layout_root: pathlib.Path) -> dict[str, pathlib.Path]:
  """Stream key -> its folder in a layout root; both clean streams must be there."""
  folders = {}
  for key, names in STREAM_FOLDERS.items():
    present = [layout_root / name for name in names if (layout_root / name).is_dir()]
    if len(present) > 1:
      raise DataError(f'{layout_root} has several {key} folders ({", ".join(p.name for p in present)}); '
                      'keep one')
    if present:
      folders[key] = present[0]
  missing = [key for key in GT_STREAMS if key not in folders]
  if missing:
    raise DataError(f'{layout_root} has no {" or ".join("/".join(STREAM_FOLDERS[k]) for k in missing)} folder '
                    f'(found {", ".join(p.name for p in folders.values()) or "none"})')
  return folders


def list_videos(folder: PathLike) -> dict[str, pathlib.Path]:
  """Video name -> frame folder or video file, for one stream folder (e.g. infrared_Enhance/)."""
  folder = pathlib.Path(folder)
  videos = {}
  for path in _visible_entries(folder):
    if path.is_dir():
      name = path.name
    elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
      name = path.stem
    else:
      continue
    if name in videos:
      raise DataError(f'video {name}: both {videos[name]} and {path} exist; keep one')
    videos[name] = path
  return videos


def _frame_number(name: str, path: pathlib.Path) -> int:
  if not path.stem.isdigit():
    raise DataError(f'video {name}: frame {path} is not named by its number (expected e.g. 0000.png or '
                    '000001.png)')
  return int(path.stem)


def _scan_frame_folder(name: str, folder: pathlib.Path) -> Stream:
  """Lists and checks a frame folder: PNGs numbered without gaps, one frame size, readable headers."""
  frames = [p for p in _visible_entries(folder) if p.suffix.lower() == PNG_SUFFIX]
  if not frames:
    raise DataError(f'video {name}: no PNG frames in {folder} (empty video)')
  frames.sort(key=lambda p: natural_key(p.name))
  numbers = [_frame_number(name, p) for p in frames]
  for previous, current, path, before in zip(numbers, numbers[1:], frames[1:], frames):
    if current != previous + 1:
      raise DataError(f'video {name}: gap in frame numbering in {folder}: {before.name} is followed by '
                      f'{path.name}')
  size = None
  for path in frames:
    try:
      with Image.open(path) as image:
        frame_size = image.size
    except (OSError, SyntaxError, ValueError) as e:
      raise DataError(f'video {name}: cannot read frame {path}: {e}') from e
    if size is None:
      size = frame_size
    elif frame_size != size:
      raise DataError(f'video {name}: frame {path} is {frame_size[0]}x{frame_size[1]}, but {frames[0].name} '
                      f'is {size[0]}x{size[1]}')
  return Stream(path=folder, frames=tuple(frames), num_frames=len(frames), height=size[1], width=size[0])


def _scan_video_file(name: str, path: pathlib.Path) -> Stream:
  try:
    info = video_io.probe_video(path)
  except (ValueError, OSError) as e:
    raise DataError(f'video {name}: cannot read {path}: {e}') from e
  if info.num_frames <= 0:
    raise DataError(f'video {name}: {path} has no frames (empty video)')
  return Stream(path=path, frames=(), num_frames=info.num_frames, height=info.height, width=info.width)


def scan_video(name: str, paths: Mapping[str, pathlib.Path], *, split: Optional[str] = None,
               ir_gray: str = 'auto', max_frames: Optional[int] = None) -> VideoPair:
  """Checks one video's streams (stream key -> frame folder or video file) and returns it; see ``scan``.

  Any non-empty subset of the streams may be given (``scan`` always gives both clean ones).
  """
  if ir_gray not in IR_GRAY_MODES:
    raise ValueError(f'ir_gray must be one of {IR_GRAY_MODES}, got {ir_gray!r}')
  unknown = set(paths) - set(STREAMS)
  if unknown or not paths:
    raise ValueError(f'paths must map some of {STREAMS} to files or folders, got keys {sorted(paths)}')
  streams = {}
  for key in STREAMS:
    if key in paths:
      path = pathlib.Path(paths[key])
      streams[key] = _scan_video_file(name, path) if path.is_file() else _scan_frame_folder(name, path)
  reference = next(iter(streams.values()))
  for key, stream in streams.items():
    if stream.num_frames != reference.num_frames:
      raise DataError(f'video {name}: frame counts differ: {reference.path} has {reference.num_frames}, '
                      f'{stream.path} has {stream.num_frames}')
    if (stream.height, stream.width) != (reference.height, reference.width):
      raise DataError(f'video {name}: frame sizes differ: {reference.path} is {reference.width}x'
                      f'{reference.height}, {stream.path} is {stream.width}x{stream.height}')
  folders = [stream for stream in streams.values() if not stream.is_video_file]
  if folders:
    names = tuple(p.name for p in folders[0].frames)
    for stream in folders[1:]:
      for mine, theirs in zip(names, stream.frames):
        if mine != theirs.name:
          raise DataError(f'video {name}: frame names differ: {folders[0].path / mine} vs {theirs}')
  else:
    digits = max(MIN_NAME_DIGITS, len(str(reference.num_frames - 1)))
    names = tuple(f'{i:0{digits}d}{PNG_SUFFIX}' for i in range(reference.num_frames))
  num_frames = reference.num_frames if max_frames is None else min(max_frames, reference.num_frames)
  if num_frames < 1:
    raise ValueError(f'max_frames must be >= 1, got {max_frames}')
  return VideoPair(name=name, split=split, streams=streams, num_frames=num_frames, height=reference.height,
                   width=reference.width, frame_names=names[:num_frames], ir_gray=ir_gray)


def scan(root: PathLike, *, skip_bad_videos: bool = False, ir_gray: str = 'auto',
         max_frames: Optional[int] = None, videos: Optional[Sequence[str]] = None) -> ScanResult:
  """Finds and checks every video under a dataset root (any layout of the module docstring).

  Args:
    root: the dataset folder (holding split folders or stream folders).
    skip_bad_videos: log and leave out a malformed video instead of raising ``DataError``.
    ir_gray: how infrared frames become one channel ('auto', 'equal', 'first', 'luma').
    max_frames: keep only the first ``max_frames`` frames of each video (quick builds and tests).
    videos: keep only these video names (all if None).

  Returns:
    The valid videos and the skipped ones. Errors that are not about one video (no dataset, ambiguous
    folders) always raise.
  """
  found, skipped = [], []
  layout_roots = find_layout_roots(root)
  for split, layout_root in layout_roots:
    folders = _stream_folders(layout_root)
    listed = {key: list_videos(folder) for key, folder in folders.items()}
    names = set().union(*(set(v) for v in listed.values()))
    if videos is not None:
      names &= set(videos)
    for name in sorted(names, key=natural_key):
      try:
        missing = [folders[key] for key in folders if name not in listed[key]]
        if missing:
          present = next(listed[key][name] for key in folders if name in listed[key])
          raise DataError(f'video {name}: {present} exists, but {missing[0]} has no {name} frame folder or '
                          'video file')
        found.append(scan_video(name, {key: listed[key][name] for key in folders}, split=split,
                                ir_gray=ir_gray, max_frames=max_frames))
      except DataError as e:
        if not skip_bad_videos:
          raise
        logging.warning('Skipping video %s: %s', name, e)
        skipped.append((name, str(e)))
  return ScanResult(videos=tuple(found), skipped=tuple(skipped), layout_roots=tuple(layout_roots))
