"""Running a converted or trained model: on clips of any size (``fuse``) and on whole videos (``fuse_video``).

``fuse`` (also ``vfusion_jax.fuse``) fuses one registered clip held in memory. ``fuse_video`` fuses a registered
IR + visible pair of video files or PNG frame folders into a video or a frame folder, in bounded memory: frames
are decoded one by one into a ring buffer of one temporal window (``windows.stream_windows``), and each fused
frame is encoded as soon as no later window can change it. It is the library behind ``vfusion-infer``
(``vfusion_jax.infer``); ``evaluate`` reads checkpoints with its ``load_model``.

An output whose name ends in a video suffix (.mp4, .mkv, .mov, .avi, .webm) is encoded as a video, any other
name is a folder of PNG frames. Inputs, outputs and the checkpoint may be local or ``gs://`` (``vfusion_jax.io``).
Outputs are staged under hidden names and published when the whole run succeeded (a rename locally; an upload
or copy into place in a bucket): a failed run leaves nothing under the final names, and existing outputs are
never replaced without ``overwrite``. Fused frames are saved as the release saves them
(``metrics.fused_to_uint8``), restored frames as ``metrics.to_uint8``.
"""

import dataclasses
import functools
import itertools
import json
import time
from typing import Any, Iterator, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vfusion_jax import io
from vfusion_jax import logging_utils
from vfusion_jax import metrics
from vfusion_jax import windows
from vfusion_jax.data import video_io
from vfusion_jax.models import VideoFusion, validate_inputs
from vfusion_jax.models.network import SPATIAL_MULTIPLE, check_value_range
from vfusion_jax.windows import crop, pad_to_multiple

PathLike = io.PathLike

VIDEO_SUFFIXES = ('.mp4', '.mkv', '.mov', '.avi', '.webm')
DEFAULT_FPS = 30.0  # For video output from frame folders, which carry no frame rate.
FPS_TOLERANCE = 1e-3  # Relative difference of two frame rates that still counts as equal.
MIN_NAME_DIGITS = 4  # Output frame names when the input has none: 0000.png, ... (as M3SVD).
_PNG = '.png'


# ---------------------------------------------------------------------------------------------------------------
# Clips.


def _model_config(config: Any) -> dict:
  """Accepts a full experiment config (with ``.model``) or the model config itself."""
  if isinstance(config, Mapping) and 'model' in config:
    model_config = config['model']
  else:
    model_config = getattr(config, 'model', config)
  if hasattr(model_config, 'to_dict'):
    model_config = model_config.to_dict()
  return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()}


@functools.lru_cache(maxsize=8)
def _jitted_apply(frozen_config: str):
  model = VideoFusion(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(frozen_config).items()})
  return jax.jit(model.apply)


def fuse(params: Any, config: Any, ir: Any, vi: Any) -> dict:
  """Fuses a registered infrared/visible clip of any spatial size.

  Args:
    params: the Flax params of ``VideoFusion`` (e.g. from ``checkpoint.load_inference_checkpoint``).
    config: the experiment config (with ``.model``) or the model config.
    ir: float (B, T, H, W, 1 or 3) or (T, H, W, 1 or 3) in [0, 1].
    vi: float (B, T, H, W, 3) or (T, H, W, 3) in [0, 1], registered to ``ir``.

  Returns:
    {'fusion', 'ir', 'vi'} as numpy float32 arrays of the input's leading shape, (..., T, H, W, 3) in (0, 1).
    H and W need not be multiples of 4: the clip is reflect-padded at the bottom/right and the outputs cropped
    back, as the official test script does.
  """
  ir, vi = np.asarray(ir), np.asarray(vi)
  unbatched = ir.ndim == 4 and vi.ndim == 4
  if unbatched:
    ir, vi = ir[None], vi[None]
  model_config = _model_config(config)
  # Check everything but the size rule (handled by padding) on the caller's arrays, for clear messages.
  h, w = vi.shape[2:4] if vi.ndim == 5 else (0, 0)
  probe_h, probe_w = h + (-h % SPATIAL_MULTIPLE), w + (-w % SPATIAL_MULTIPLE)
  validate_inputs(jax.ShapeDtypeStruct(ir.shape[:2] + (probe_h, probe_w) + ir.shape[4:], ir.dtype),
                  jax.ShapeDtypeStruct(vi.shape[:2] + (probe_h, probe_w) + vi.shape[4:], vi.dtype),
                  model_config.get('in_channels', 3))
  check_value_range('ir', ir)
  check_value_range('vi', vi)
  ir_p, (h, w) = pad_to_multiple(ir.astype(np.float32))
  vi_p, _ = pad_to_multiple(vi.astype(np.float32))
  apply = _jitted_apply(json.dumps(model_config, sort_keys=True))
  out = apply({'params': params}, jnp.asarray(ir_p), jnp.asarray(vi_p))
  out = {k: crop(np.asarray(v), (h, w)) for k, v in out.items()}
  return {k: v[0] for k, v in out.items()} if unbatched else out


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints.


def load_model(checkpoint_dir: PathLike, model_config: Optional[Mapping[str, Any]] = None):
  """Loads an inference checkpoint (converter or training export) -> (apply_fn, params, model_config).

  ``apply_fn`` is a ``windows.ApplyFn``. If ``model_config`` is given, the checkpoint must have been written
  for the same network (ValueError naming the differing fields otherwise).
  """
  from vfusion_jax import checkpoint  # pylint: disable=g-import-not-at-top  # Orbax loads only when needed.

  path = io.check_access(checkpoint_dir)
  if not path.exists():
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  if not path.is_dir():
    raise ValueError(f'checkpoint {path} is not a directory (expected params/ and config.json inside)')
  try:
    params, stored_config = checkpoint.load_inference_checkpoint(str(path), model_config)
  except (FileNotFoundError, ValueError):
    raise
  except Exception as e:  # Orbax raises assorted types for unreadable or mismatched params.
    raise ValueError(f'cannot restore the params of checkpoint {path} with its config.json: {e}') from e

  def apply_fn(ir: np.ndarray, vi: np.ndarray) -> dict:
    return fuse(params, stored_config, ir, vi)

  return apply_fn, params, stored_config


# ---------------------------------------------------------------------------------------------------------------
# Inputs.


@dataclasses.dataclass(frozen=True)
class FrameInput:
  """A video file or a folder of PNG frames, read lazily.

  Attributes:
    path: the file or folder.
    num_frames: frames in it.
    fps: frame rate (None for a frame folder).
    height, width: frame size.
    frame_paths: the PNG files of a folder, in order (empty for a video).
  """
  path: io.Path
  num_frames: int
  fps: Optional[float]
  height: int
  width: int
  frame_paths: tuple[io.Path, ...] = ()

  @property
  def is_video(self) -> bool:
    return not self.frame_paths

  def frames(self, start: int = 0, count: Optional[int] = None) -> Iterator[np.ndarray]:
    """Yields uint8 (H, W, 3) RGB frames start .. start + count - 1, one at a time."""
    if self.is_video:
      return video_io.iter_video_frames(self.path, start, count)
    return self._folder_frames(start, count)

  def _folder_frames(self, start: int, count: Optional[int]) -> Iterator[np.ndarray]:
    stop = len(self.frame_paths) if count is None else start + count
    for path in self.frame_paths[start:stop]:
      frame = video_io.load_png(path)
      if frame.shape[:2] != (self.height, self.width):
        raise ValueError(f'{path} is {frame.shape[0]}x{frame.shape[1]}; the first frame of {self.path} is '
                         f'{self.height}x{self.width}')
      yield frame


def open_input(path: PathLike, what: str = 'input') -> FrameInput:
  """Opens a video file or PNG frame folder; ``what`` names it in errors ('IR', 'visible')."""
  path = io.check_access(path)
  if not path.exists():
    raise FileNotFoundError(f'{what} {path} does not exist')
  if path.is_dir():
    try:
      paths = video_io.read_frame_folder(path)
    except ValueError as e:
      raise ValueError(f'{what} folder {path} holds no PNG frames') from e
    first = video_io.load_png(paths[0])
    return FrameInput(path, len(paths), None, first.shape[0], first.shape[1], tuple(paths))
  try:
    info = video_io.probe_video(path)
  except ValueError as e:
    raise ValueError(f'{what} {path} is not a readable video: {e}') from e
  if info.num_frames < 1:
    raise ValueError(f'{what} video {path} has no frames')
  return FrameInput(path, info.num_frames, info.fps or None, info.height, info.width)


def _same_fps(a: float, b: float) -> bool:
  return abs(a - b) <= FPS_TOLERANCE * max(a, b)


@dataclasses.dataclass(frozen=True)
class FramePlan:
  """Which frames to fuse and at what rate: frames start .. start + num_frames - 1 of both inputs."""
  start: int
  num_frames: int
  fps: float
  height: int
  width: int
  notes: tuple[str, ...] = ()


def plan_frames(ir: FrameInput, vi: FrameInput, *, start_frame: int = 0, num_frames: Optional[int] = None,
                truncate: bool = False, ignore_fps_mismatch: bool = False,
                fps: Optional[float] = None) -> FramePlan:
  """Checks that the inputs are a registered pair and picks the frame range; ValueError explains a mismatch."""
  notes = []
  if (ir.height, ir.width) != (vi.height, vi.width):
    raise ValueError(f'resolution mismatch: IR {ir.path} is {ir.height}x{ir.width} but visible {vi.path} is '
                     f'{vi.height}x{vi.width}; the pair must be registered at the same size')
  total = vi.num_frames
  if ir.num_frames != vi.num_frames:
    if not truncate:
      raise ValueError(f'frame-count mismatch: IR {ir.path} has {ir.num_frames} frames, visible {vi.path} has '
                       f'{vi.num_frames}; pass --truncate to fuse the first {min(ir.num_frames, vi.num_frames)}')
    total = min(ir.num_frames, vi.num_frames)
    notes.append(f'frame counts differ (IR {ir.num_frames}, visible {vi.num_frames}): fusing the first {total}')
  if ir.fps and vi.fps and not _same_fps(ir.fps, vi.fps):
    if not ignore_fps_mismatch:
      raise ValueError(f'fps mismatch: IR {ir.path} runs at {ir.fps:g} fps, visible {vi.path} at {vi.fps:g}; '
                       'frame i of one must be registered to frame i of the other (pass '
                       '--ignore_fps_mismatch if they are, e.g. a wrong header)')
    notes.append(f'fps differ (IR {ir.fps:g}, visible {vi.fps:g}): the output uses {fps or vi.fps:g}')
  if not 0 <= start_frame < total:
    raise ValueError(f'--start_frame {start_frame} is outside the {total} frames of the input')
  available = total - start_frame
  if num_frames is None:
    num_frames = available
  elif not 0 < num_frames <= available:
    raise ValueError(f'--num_frames {num_frames} must lie in [1, {available}] (frames from {start_frame} on)')
  if fps is None:
    fps = vi.fps or ir.fps
    if fps is None:
      fps = DEFAULT_FPS
      notes.append(f'frame folders carry no frame rate: using {DEFAULT_FPS:g} fps (set --fuse.fps)')
  elif fps <= 0:
    raise ValueError(f'--fuse.fps must be positive; got {fps}')
  return FramePlan(start_frame, num_frames, float(fps), vi.height, vi.width, tuple(notes))


# ---------------------------------------------------------------------------------------------------------------
# Outputs: written under hidden names, renamed into place by commit().


def is_video_path(path: PathLike) -> bool:
  """True if ``path`` names a video file (a suffix of ``VIDEO_SUFFIXES``), False for a frame folder."""
  return io.path(path).suffix.lower() in VIDEO_SUFFIXES


def check_output(path: PathLike, overwrite: bool, inputs: Sequence[PathLike] = ()) -> io.Path:
  """Fails early (before any work) if ``path`` cannot be written: exists, missing parent, or is an input."""
  path = io.check_access(path)
  for other in inputs:
    if path.resolve() == io.path(other).resolve():
      raise ValueError(f'output {path} is also an input')
  if not io.is_remote(path) and not path.parent.is_dir():
    raise FileNotFoundError(f'output directory {path.parent} does not exist')
  if path.exists() and not overwrite:
    raise FileExistsError(f'{path} already exists; pass --overwrite to replace it')
  if path.exists() and is_video_path(path) == path.is_dir():
    raise ValueError(f'{path} exists and is a {"folder" if path.is_dir() else "file"}; an output named so is '
                     f'written as a {"video file" if is_video_path(path) else "frame folder"}')
  return path


class FrameSink:
  """Receives uint8 (H, W, 3) frames in order; ``commit()`` publishes them, ``abort()`` discards them."""

  def write(self, frame: np.ndarray, name: str) -> None:
    raise NotImplementedError

  def commit(self) -> None:
    raise NotImplementedError

  def abort(self) -> None:
    raise NotImplementedError


class VideoSink(FrameSink):
  """Encodes frames into a video file (``video_io.VideoWriter``); odd sizes are edge-padded to even."""

  def __init__(self, path: io.Path, fps: float, overwrite: bool):
    self._writer = video_io.VideoWriter(path, fps, overwrite=overwrite)
    self._warned = False

  def write(self, frame: np.ndarray, name: str) -> None:
    del name
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
      if not self._warned:
        logging.warning('%s: 4:2:0 video needs even sizes; padding %dx%d frames by one row/column',
                        self._writer.path, frame.shape[0], frame.shape[1])
        self._warned = True
      frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode='edge')
    self._writer.write(frame)

  def commit(self) -> None:
    self._writer.close()

  def abort(self) -> None:
    self._writer.abort()


class FolderSink(FrameSink):
  """Writes PNG frames into an ``io.StagedDirectory`` published as ``path`` on commit."""

  def __init__(self, path: io.Path, overwrite: bool):
    self._staged = io.StagedDirectory(path, overwrite=overwrite)

  def write(self, frame: np.ndarray, name: str) -> None:
    io.save_png(self._staged.path / name, frame)

  def commit(self) -> None:
    self._staged.commit()

  def abort(self) -> None:
    self._staged.abort()


def open_sink(path: io.Path, fps: float, overwrite: bool) -> FrameSink:
  """A ``VideoSink`` for a video name (encoded at ``fps``), else a ``FolderSink`` of PNG frames."""
  return VideoSink(path, fps, overwrite) if is_video_path(path) else FolderSink(path, overwrite)


# ---------------------------------------------------------------------------------------------------------------
# Whole videos.


@dataclasses.dataclass(frozen=True)
class InferResult:
  """What a ``fuse_video`` run wrote.

  Attributes:
    num_frames: frames fused.
    fps: frame rate of the video outputs.
    height, width: frame size.
    seconds: wall time of the whole run (checkpoint load and compilation included).
    frames_per_sec: steady rate, frames fused per second since the first finished frame
      (``logging_utils.ProgressLine.mean_rate``).
    outputs: output key ('fusion', 'ir', 'vi') -> path written.
    notes: warnings about the inputs (differing frame counts or rates, a default frame rate).
  """
  num_frames: int
  fps: float
  height: int
  width: int
  seconds: float
  frames_per_sec: float
  outputs: dict
  notes: tuple[str, ...] = ()


def _frame_name(vi: FrameInput, ir: FrameInput, index: int) -> str:
  for source in (vi, ir):
    if not source.is_video:
      return source.frame_paths[index].stem + _PNG
  digits = max(MIN_NAME_DIGITS, len(str(vi.num_frames - 1)))
  return f'{index:0{digits}d}{_PNG}'


def fuse_video(ir: PathLike, vi: PathLike, output: PathLike, *, checkpoint_dir: Optional[PathLike] = None,
               apply_fn: Optional[windows.ApplyFn] = None, model_config: Optional[Mapping[str, Any]] = None,
               output_ir: Optional[PathLike] = None, output_vi: Optional[PathLike] = None,
               window_config: Optional[windows.WindowConfig] = None, start_frame: int = 0,
               num_frames: Optional[int] = None, truncate: bool = False, ignore_fps_mismatch: bool = False,
               fps: Optional[float] = None, overwrite: bool = False, fused_minmax: bool = True,
               ir_to_gray: bool = True, progress: bool = True) -> InferResult:
  """Fuses a registered IR/visible pair into ``output`` (and optionally the restored IR/visible).

  Args:
    ir, vi: video files or PNG frame folders of one registered pair: 8-bit RGB or grey frames of one size (any
      H x W; odd sizes too).
    output: fused video file (video suffix) or frame folder (any other name).
    checkpoint_dir: inference checkpoint; or pass a ready ``apply_fn`` (``load_model``) instead.
    apply_fn: the model as a ``windows.ApplyFn``.
    model_config: if given, the checkpoint must be for this network.
    output_ir, output_vi: optional outputs for the restored IR and visible frames.
    window_config: temporal windows and spatial tiles (``windows.WindowConfig``).
    start_frame, num_frames: fuse frames start_frame .. start_frame + num_frames - 1 (default: to the end).
    truncate: if the inputs have different frame counts, fuse the shorter length instead of failing.
    ignore_fps_mismatch: accept inputs whose frame rates differ.
    fps: frame rate of video outputs (default: the visible input's, else the IR's, else 30).
    overwrite: replace existing outputs.
    fused_minmax: save fused frames with the release's per-frame min-max stretch (else clip and round).
    ir_to_gray: feed IR as one MATLAB-grey channel (the network repeats it to three, as the release feeds
      grey IR). Exact for grey frames; removes the chroma noise of decoded grey video. False feeds RGB IR as
      it is.
    progress: print progress to stderr (``logging_utils.ProgressLine.frames``).

  Returns:
    an ``InferResult``.
  """
  started = time.monotonic()
  ir_in, vi_in = open_input(ir, 'IR'), open_input(vi, 'visible')
  plan = plan_frames(ir_in, vi_in, start_frame=start_frame, num_frames=num_frames, truncate=truncate,
                     ignore_fps_mismatch=ignore_fps_mismatch, fps=fps)
  targets = {'fusion': output, 'ir': output_ir, 'vi': output_vi}
  targets = {k: check_output(v, overwrite, (ir, vi)) for k, v in targets.items() if v is not None}
  if len({p.resolve() for p in targets.values()}) < len(targets):
    raise ValueError(f'outputs must be distinct; got {sorted(str(p) for p in targets.values())}')
  if apply_fn is None:
    if checkpoint_dir is None:
      raise ValueError('pass checkpoint_dir (--checkpoint) or apply_fn')
    apply_fn, _, _ = load_model(checkpoint_dir, model_config)
  for note in plan.notes:
    logging.warning('%s', note)

  def pairs():
    ir_frames = ir_in.frames(plan.start, plan.num_frames)
    vi_frames = vi_in.frames(plan.start, plan.num_frames)
    for index, (ir_frame, vi_frame) in enumerate(itertools.zip_longest(ir_frames, vi_frames)):
      for source, frame in ((ir_in, ir_frame), (vi_in, vi_frame)):
        if frame is None:
          raise ValueError(f'{source.path} ended after {plan.start + index} frames; its header says '
                           f'{source.num_frames}')
      yield (metrics.rgb_to_gray(ir_frame)[..., None] if ir_to_gray else ir_frame), vi_frame

  sinks = {}
  try:
    for key, path in targets.items():
      sinks[key] = open_sink(path, plan.fps, overwrite)
    bar = logging_utils.ProgressLine.frames(plan.num_frames, enabled=progress)
    stream = windows.stream_windows(pairs(), plan.num_frames, apply_fn, window_config)
    for index, out in stream:
      name = _frame_name(vi_in, ir_in, plan.start + index)
      for key, sink in sinks.items():
        frame = metrics.fused_to_uint8(out[key], fused_minmax) if key == 'fusion' else metrics.to_uint8(out[key])
        sink.write(frame, name)
      bar(index + 1)
    for sink in sinks.values():
      sink.commit()
  except BaseException:
    for sink in sinks.values():
      sink.abort()
    raise
  return InferResult(plan.num_frames, plan.fps, plan.height, plan.width, time.monotonic() - started,
                     bar.mean_rate, {k: str(v) for k, v in targets.items()}, plan.notes)
