"""Temporal windows, spatial pad/crop and tiles: the one place that decides which frames the model sees.

Evaluation (``evaluate.py``) and streaming inference (``inference.fuse_video``) both run the network through
``stream_windows``, so they cannot disagree about which window predicts which frame. ``window_starts`` is also
how the dataset builders cut videos into training chunks and how training previews are fused.

Temporal windows (REFERENCE.md 8.4, with an overlap O): windows of N frames start at 0, N - O, 2 (N - O), ...
while they fit, and if frames are left over one more window holds the **last N frames**; a video shorter than
N is one window. Each frame covered by several windows is resolved by a rule:

  'official'  the later window's prediction replaces the earlier one (the release's test script);
  'center'    every frame is predicted once: by the window in which it lies furthest from a window edge
              (ties go to the later window), so each frame keeps temporal context on both sides;
  'blend'     predictions are averaged with tent weights (distance to the nearer window edge, + 1), a linear
              cross-fade through each overlap.

Spatial handling: frames are reflect-padded at the bottom/right to multiples of 4 (the release's rule) and the
outputs cropped back. Frames larger than ``tile_size`` on either side are split into tiles of at most
``tile_size`` x ``tile_size`` overlapping by at least ``tile_overlap`` pixels and blended with linear ramps across
each overlap. The network's transposed attention pools over the whole frame, so tiles change the result;
tiling is off by default (``tile_size=0``).

This module is pure numpy (data workers import it without JAX): the model enters as an ``ApplyFn``.
"""

import collections
import dataclasses
from typing import Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

RULES = ('blend', 'center', 'official')
DEFAULT_WINDOW = 7  # The release tests with clips of 7 frames (REFERENCE.md 8.4).
DEFAULT_RULE = 'blend'
MIN_MODEL_FRAMES = 2  # BiCAM pairs each frame with its neighbours: the network needs T >= 2.
SPATIAL_MULTIPLE = 4  # Two pixel-unshuffles (models.network.SPATIAL_MULTIPLE).
DEFAULT_TILE_OVERLAP = 32
OUTPUT_KEYS = ('fusion', 'ir', 'vi')
UINT8_MAX = 255.0

# ir (T, h, w, 1|3), vi (T, h, w, 3): float32 in [0, 1], h and w multiples of 4, T >= 2
#   -> {'fusion', 'ir', 'vi'}: float32 (T, h, w, 3).
ApplyFn = Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Window:
  """Frames [start, stop) of one model call; ``weights[i]`` is frame start + i's share of its final value."""
  start: int
  stop: int
  weights: tuple[float, ...]

  @property
  def length(self) -> int:
    return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  """How a video is cut for the network.

  Attributes:
    window: frames per model call, N (>= 2).
    overlap: frames shared by consecutive windows, O (0 <= O < N).
    rule: 'blend', 'center' or 'official' (module docstring).
    tile_size: frames larger than this (either side, pixels) are processed in tiles of at most this size
      (a multiple of 4); 0 never tiles.
    tile_overlap: minimum overlap of neighbouring tiles, pixels.
  """
  window: int = DEFAULT_WINDOW
  overlap: int = 0
  rule: str = DEFAULT_RULE
  tile_size: int = 0
  tile_overlap: int = DEFAULT_TILE_OVERLAP

  def __post_init__(self):
    if self.window < MIN_MODEL_FRAMES:
      raise ValueError(f'window must be >= {MIN_MODEL_FRAMES} frames (the network needs T >= 2); '
                       f'got {self.window}')
    if not 0 <= self.overlap < self.window:
      raise ValueError(f'overlap must satisfy 0 <= overlap < window ({self.window}); got {self.overlap}')
    if self.rule not in RULES:
      raise ValueError(f'rule must be one of {RULES}; got {self.rule!r}')
    if self.tile_size < 0 or self.tile_size % SPATIAL_MULTIPLE:
      raise ValueError(f'tile_size must be 0 (no tiles) or a positive multiple of {SPATIAL_MULTIPLE}; '
                       f'got {self.tile_size}')
    if self.tile_size and not 0 <= self.tile_overlap < self.tile_size:
      raise ValueError(f'tile_overlap must satisfy 0 <= tile_overlap < tile_size ({self.tile_size}); '
                       f'got {self.tile_overlap}')


# ---------------------------------------------------------------------------------------------------------------
# Temporal windows.


def window_starts(num_frames: int, window: int, overlap: int = 0) -> list[int]:
  """First frames of the windows of REFERENCE.md 8.4 (generalised to any overlap), increasing.

  Windows of ``window`` frames (>= 1) start every ``window - overlap`` frames (0 <= overlap < window) while they
  fit; if frames are left over, one more window ends on the last frame, overlapping the one before it. A video
  of ``num_frames`` (>= 1) frames no longer than a window is one window. E.g. 20 frames in windows of 8 ->
  [0, 8, 12].
  """
  if num_frames < 1:
    raise ValueError(f'a video needs at least 1 frame; got {num_frames}')
  if window < 1 or not 0 <= overlap < window:
    raise ValueError(f'need window >= 1 and 0 <= overlap < window; got window {window}, overlap {overlap}')
  if num_frames <= window:
    return [0]
  stride = window - overlap
  starts = [i * stride for i in range((num_frames - overlap) // stride)]
  if (num_frames - overlap) % stride:
    starts.append(num_frames - window)
  return starts


def _edge_distance(frame: int, start: int, stop: int) -> int:
  """Frames between ``frame`` and the nearer edge of [start, stop), + 1 (1 at an edge)."""
  return min(frame - start + 1, stop - frame)


def temporal_windows(num_frames: int, window: int = DEFAULT_WINDOW, overlap: int = 0,
                     rule: str = DEFAULT_RULE) -> list[Window]:
  """The windows covering frames 0 .. num_frames - 1 and each frame's weight in each window.

  For every frame the weights over the windows that contain it sum to 1 (exactly 0 or 1 for 'official' and
  'center'). Windows are ordered by start; every frame < windows[k + 1].start is final once windows[k] ran.
  """
  WindowConfig(window=window, overlap=overlap, rule=rule)  # Validates the arguments.
  starts = window_starts(num_frames, window, overlap)
  spans = [(s, min(s + window, num_frames)) for s in starts]
  if rule == 'center':
    # The window holding each frame furthest from its edge; '>=' gives ties to the later window.
    best_distance = np.zeros(num_frames, np.int64)
    best_window = np.zeros(num_frames, np.int64)
    for k, (start, stop) in enumerate(spans):
      for f in range(start, stop):
        if _edge_distance(f, start, stop) >= best_distance[f]:
          best_distance[f], best_window[f] = _edge_distance(f, start, stop), k
  raw = []
  for k, (start, stop) in enumerate(spans):
    if rule == 'official':
      next_start = spans[k + 1][0] if k + 1 < len(spans) else num_frames
      raw.append([1.0 if f < next_start else 0.0 for f in range(start, stop)])
    elif rule == 'blend':
      raw.append([float(_edge_distance(f, start, stop)) for f in range(start, stop)])
    else:
      raw.append([1.0 if best_window[f] == k else 0.0 for f in range(start, stop)])
  totals = np.zeros(num_frames)
  for (start, stop), weights in zip(spans, raw):
    totals[start:stop] += weights
  return [Window(start, stop, tuple(float(w / totals[start + i]) for i, w in enumerate(weights)))
          for (start, stop), weights in zip(spans, raw)]


# ---------------------------------------------------------------------------------------------------------------
# Spatial padding and tiles.


def pad_to_multiple(x: np.ndarray, multiple: int = SPATIAL_MULTIPLE) -> tuple[np.ndarray, tuple[int, int]]:
  """Reflect-pads (..., H, W, C) at the bottom and right up to multiples of ``multiple``.

  Returns the padded array and the original (H, W). Raises ValueError if a side is too small to reflect.
  """
  h, w = x.shape[-3], x.shape[-2]
  pad_h, pad_w = -h % multiple, -w % multiple
  if (pad_h and pad_h >= h) or (pad_w and pad_w >= w):
    raise ValueError(f'frames of {h}x{w} are too small to reflect-pad to a multiple of {multiple}')
  if pad_h or pad_w:
    widths = [(0, 0)] * (x.ndim - 3) + [(0, pad_h), (0, pad_w), (0, 0)]
    x = np.pad(x, widths, mode='reflect')
  return x, (h, w)


def crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Crops (..., H', W', C) back to the top-left (H, W) = ``size``."""
  return x[..., :size[0], :size[1], :]


@dataclasses.dataclass(frozen=True)
class Tile:
  """Rows [top, bottom) x columns [left, right) of the padded frame and its blending weight (h, w) float32."""
  top: int
  bottom: int
  left: int
  right: int
  weight: np.ndarray = dataclasses.field(compare=False, repr=False)


def _axis_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
  """Tile spans along one axis: stride tile - overlap, the last one flush with the end."""
  if length <= tile:
    return [(0, length)]
  stride = tile - overlap
  starts = list(range(0, length - tile, stride)) + [length - tile]
  return [(s, s + tile) for s in starts]


def _axis_weights(spans: list[tuple[int, int]]) -> list[np.ndarray]:
  """Linear ramps over each overlap with a neighbour (none at the frame border); 1 elsewhere."""
  weights = []
  for k, (start, stop) in enumerate(spans):
    w = np.ones(stop - start, np.float32)
    if k > 0:
      ramp = spans[k - 1][1] - start
      w[:ramp] = np.minimum(w[:ramp], (np.arange(ramp) + 1.0) / (ramp + 1.0))
    if k + 1 < len(spans):
      ramp = stop - spans[k + 1][0]
      w[stop - start - ramp:] = np.minimum(w[stop - start - ramp:], (ramp - np.arange(ramp)) / (ramp + 1.0))
    weights.append(w)
  return weights


def spatial_tiles(height: int, width: int, tile_size: int = 0,
                  tile_overlap: int = DEFAULT_TILE_OVERLAP) -> list[Tile]:
  """Tiles covering a (height, width) frame (already padded to multiples of 4).

  One tile (the whole frame, weight 1) if ``tile_size`` is 0 or the frame fits in it; otherwise tiles of
  tile_size x tile_size (or the frame's size along a side that fits), each overlapping its neighbours by at
  least ``tile_overlap`` pixels. Weights are > 0 and blend the overlaps linearly.
  """
  if height % SPATIAL_MULTIPLE or width % SPATIAL_MULTIPLE:
    raise ValueError(f'tile the padded frame: {height}x{width} is not a multiple of {SPATIAL_MULTIPLE}')
  if not tile_size or (height <= tile_size and width <= tile_size):
    return [Tile(0, height, 0, width, np.ones((height, width), np.float32))]
  WindowConfig(tile_size=tile_size, tile_overlap=tile_overlap)  # Validates the arguments.
  rows, cols = _axis_spans(height, tile_size, tile_overlap), _axis_spans(width, tile_size, tile_overlap)
  row_w, col_w = _axis_weights(rows), _axis_weights(cols)
  return [Tile(top, bottom, left, right, np.outer(rw, cw))
          for (top, bottom), rw in zip(rows, row_w) for (left, right), cw in zip(cols, col_w)]


# ---------------------------------------------------------------------------------------------------------------
# Running the model over windows and tiles.


def apply_clip(ir: np.ndarray, vi: np.ndarray, apply_fn: ApplyFn, tile_size: int = 0,
               tile_overlap: int = DEFAULT_TILE_OVERLAP) -> dict[str, np.ndarray]:
  """Runs ``apply_fn`` on one clip of any size: pad, tile, blend, crop.

  Args:
    ir: float32 (T, H, W, 1 or 3) in [0, 1], T >= 1.
    vi: float32 (T, H, W, 3) in [0, 1].
    apply_fn: the model (see ``ApplyFn``).
    tile_size, tile_overlap: see ``WindowConfig``.

  Returns:
    {'fusion', 'ir', 'vi'}: float32 (T, H, W, 3). A 1-frame clip is run as two copies of its frame.
  """
  if ir.shape[:3] != vi.shape[:3]:
    raise ValueError(f'ir and vi clips must share (T, H, W); got {ir.shape[:3]} and {vi.shape[:3]}')
  num_frames = ir.shape[0]
  if num_frames < MIN_MODEL_FRAMES:
    reps = (MIN_MODEL_FRAMES - num_frames + 1, 1, 1, 1)
    ir, vi = np.tile(ir, reps)[:MIN_MODEL_FRAMES], np.tile(vi, reps)[:MIN_MODEL_FRAMES]
  ir_p, size = pad_to_multiple(ir)
  vi_p, _ = pad_to_multiple(vi)
  tiles = spatial_tiles(ir_p.shape[1], ir_p.shape[2], tile_size, tile_overlap)
  if len(tiles) == 1:
    out = apply_fn(ir_p, vi_p)
    return {k: np.asarray(crop(np.asarray(out[k]), size)[:num_frames], np.float32) for k in OUTPUT_KEYS}
  acc = {k: np.zeros(vi_p.shape[:3] + (3,), np.float32) for k in OUTPUT_KEYS}
  total = np.zeros(vi_p.shape[1:3], np.float32)
  for t in tiles:
    rows, cols = slice(t.top, t.bottom), slice(t.left, t.right)
    out = apply_fn(np.ascontiguousarray(ir_p[:, rows, cols]), np.ascontiguousarray(vi_p[:, rows, cols]))
    weight = t.weight[None, :, :, None]
    for k in OUTPUT_KEYS:
      acc[k][:, rows, cols] += weight * np.asarray(out[k], np.float32)
    total[rows, cols] += t.weight
  return {k: crop(v / total[None, :, :, None], size)[:num_frames] for k, v in acc.items()}


def stream_windows(frames: Iterable[tuple[np.ndarray, np.ndarray]], num_frames: int, apply_fn: ApplyFn,
                   config: Optional[WindowConfig] = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Fuses a video frame pair by frame pair, in bounded memory, yielding each frame as soon as it is final.

  Holds at most ``config.window`` input frames and ``config.window`` unfinished outputs, whatever the length.

  Args:
    frames: iterable of (ir, vi) per frame: float32 (H, W, 1 or 3) and (H, W, 3) in [0, 1] (uint8 frames are
      divided by 255). Read lazily; frames beyond ``num_frames`` are not read.
    num_frames: frames to fuse (the window plan depends on it).
    apply_fn: the model (see ``ApplyFn``).
    config: windows and tiles; defaults to ``WindowConfig()``.

  Yields:
    (index, {'fusion', 'ir', 'vi'}) for index = 0 .. num_frames - 1 in order; float32 (H, W, 3).

  Raises:
    ValueError: if ``frames`` ends before ``num_frames`` pairs.
  """
  config = config or WindowConfig()
  plan = temporal_windows(num_frames, config.window, config.overlap, config.rule)
  source = iter(frames)
  buffer = collections.deque()  # (ir, vi) of frames buffer_start, buffer_start + 1, ...
  buffer_start = 0
  pending = {}  # frame -> (weighted sums per output, total weight)
  next_out = 0
  for k, win in enumerate(plan):
    while buffer_start + len(buffer) < win.stop:
      try:
        ir, vi = next(source)
      except StopIteration:
        raise ValueError(f'the input ended after {buffer_start + len(buffer)} frames; expected '
                         f'{num_frames}') from None
      buffer.append((_as_float(ir, 'ir'), _as_float(vi, 'vi')))
    while buffer_start < win.start:
      buffer.popleft()
      buffer_start += 1
    if any(w > 0 for w in win.weights):
      clip = list(buffer)[win.start - buffer_start:win.stop - buffer_start]
      out = apply_clip(np.stack([p[0] for p in clip]), np.stack([p[1] for p in clip]), apply_fn,
                       config.tile_size, config.tile_overlap)
      for i, weight in enumerate(win.weights):
        if weight <= 0:
          continue
        frame = {key: out[key][i] for key in OUTPUT_KEYS}
        if win.start + i in pending:
          sums, total = pending[win.start + i]
          pending[win.start + i] = ({key: sums[key] + np.float32(weight) * frame[key] for key in OUTPUT_KEYS},
                                    total + weight)
        else:
          pending[win.start + i] = (frame if weight == 1.0 else
                                    {key: np.float32(weight) * frame[key] for key in OUTPUT_KEYS}, weight)
    final_until = plan[k + 1].start if k + 1 < len(plan) else num_frames
    while next_out < final_until:
      sums, total = pending.pop(next_out)
      yield next_out, (sums if total == 1.0 else {key: v / np.float32(total) for key, v in sums.items()})
      next_out += 1


def _as_float(x: np.ndarray, name: str) -> np.ndarray:
  """uint8 or float frame (H, W, C) -> float32 in [0, 1]."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(UINT8_MAX)
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'{name} frames must be uint8 or float in [0, 1]; got dtype {x.dtype}')
  return x.astype(np.float32, copy=False)
