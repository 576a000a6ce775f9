"""Whole-video evaluation: fused and restored frames, fusion metrics, baselines, tables and temporal plots.

``evaluate`` runs the network over every video of a dataset with the windows of ``vfusion_jax.windows`` (the
same code as streaming inference), frame by frame and in bounded memory for frame folders and video files:

* **setting** 'degraded' feeds the dataset's degraded frames (``infrared_noise``, ``visible_Blur``); data without
  them is degraded here with ``data.degrade`` and a fixed seed per video (frame t's degradation does not depend
  on ``max_frames``). 'normal' feeds the clean frames.
* **references** 'clean' or 'degraded': the source frames the fusion metrics compare against (METRICS.md 11).
* Fused frames are quantised exactly as METRICS.md 1 says (``metrics.quantize_fused``: per-frame min-max
  stretch, round half to even) and saved as PNG; the metrics are computed from those uint8 frames. Restored
  IR/visible are saved as ``round(255 * clip(x, 0, 1))`` (``metrics.to_uint8``, REFERENCE.md 9.2).
* Metrics (``vfusion_jax.metrics``): EN, MI, MI_nomerge, SF, SD, VIF, SSIM, SSIM_toolboxL1, Qabf per frame;
  flowD_fb (Farneback flow on the clean visible frames, METRICS.md 10.2) and tdiff per consecutive pair
  (``metrics.flowd_fb_term`` and ``metrics.tdiff_term``, the terms ``metrics.flowd_fb`` and ``metrics.tdiff``
  average); BiSWE_fb (with its diagnostic BiSWE_fb_valid_frac) and MS2R_fb per centre frame of the clamped
  triplet (t-1, t, t+1), with the source flows on the reference frames (METRICS_VFBENCH.md Part B:
  ``metrics.biswe_fb_term`` and ``metrics.ms2r_fb_term``, the terms ``metrics.biswe_fb`` and ``metrics.ms2r_fb``
  average; Farneback substitutes, not VF-Bench's BiSWE / MS2R); the mean grey level per frame. Per video = mean
  over its frames (pairs), overall = mean over videos.
* The same rows for the baselines, each quantised exactly as the fused frames (``metrics.fused_to_uint8`` with
  the same ``fused_minmax``): the pixel-wise max and mean of the network's inputs and, in the degraded setting
  only, ``restored_max``: the pixel max of the inputs restored by fixed classical filters
  (``vfusion_jax.baselines``).
* Degraded setting with clean frames: PSNR (BasicSR: uint8 RGB, peak 255) and SSIM (MATLAB SSIM of METRICS.md 6
  per RGB channel, averaged) of the restored IR/visible, of the degraded inputs and (with the baselines) of the
  classical restorations against the clean frames.

Output folder::

  fusion/<video>/<frame>.png      fused frames (what the metrics read)
  ir/<video>/<frame>.png          restored infrared (``save_restored``)
  vi/<video>/<frame>.png          restored visible
  videos/<video>_fusion.mp4       optional (``save_mp4``)
  metrics_per_frame.csv, metrics_per_video.csv, metrics_mean.csv
  restoration_per_frame.csv, restoration_per_video.csv   (degraded setting with clean frames)
  metrics.json, metrics.md        everything, and the Markdown tables naming the setting and references
  plots/<video>_intensity.png     mean grey level over time (VideoFusion Fig. 6 / 9j)
  plots/<video>_column.png        one image column over time per method (the paper's Fig. 6 slices)

The output folder and the checkpoint may be ``gs://`` URLs (``vfusion_jax.io``); every file is written
atomically, and metrics.json/metrics.md last, so a folder without them is an unfinished run. ``data`` is read
from local disk (a bucket through a gcsfuse mount, docs/tpu.md).
"""

import collections
import csv
import dataclasses
import datetime
import io as _pyio
import json
import math
import os
import pathlib
import time
import zlib
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from absl import logging
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vfusion_jax import baselines
from vfusion_jax import inference
from vfusion_jax import io
from vfusion_jax import logging_utils
from vfusion_jax import metrics
from vfusion_jax import windows
from vfusion_jax.data import video_io

PathLike = Union[str, os.PathLike]

SETTINGS = ('degraded', 'normal')
REFERENCES = ('clean', 'degraded')
MODEL = 'VideoFusion'
PIXEL_MAX, PIXEL_MEAN, RESTORED_MAX = 'pixel_max', 'pixel_mean', 'restored_max'
BASELINES = (PIXEL_MAX, PIXEL_MEAN)
# Baselines of the degraded setting only: restoring clean inputs (e.g. removing the IR offset) would damage them.
DEGRADED_BASELINES = (RESTORED_MAX,)
IR_GT, VI_GT, IR_LQ, VI_LQ = 'ir_gt', 'vi_gt', 'ir_lq', 'vi_lq'
INPUT_STREAMS = {'degraded': (IR_LQ, VI_LQ), 'normal': (IR_GT, VI_GT)}
REFERENCE_STREAMS = {'degraded': (IR_LQ, VI_LQ), 'clean': (IR_GT, VI_GT)}
# Folder names of the release (REFERENCE.md 8.1), for the tables.
STREAM_NAMES = {IR_GT: 'infrared_Enhance', VI_GT: 'visible_Enhance', IR_LQ: 'infrared_noise',
                VI_LQ: 'visible_Blur'}
BISWE_FB, BISWE_FB_VALID, MS2R_FB = 'BiSWE_fb', 'BiSWE_fb_valid_frac', 'MS2R_fb'
TEMPORAL_KEYS = ('flowD_fb', 'tdiff', BISWE_FB, MS2R_FB, BISWE_FB_VALID)
INTENSITY = 'intensity'
FRAME_KEYS = metrics.METRIC_KEYS + (INTENSITY,)
TABLE_KEYS = ('EN', 'MI', 'SF', 'SD', 'VIF', 'SSIM', 'Qabf', 'flowD_fb', 'tdiff', BISWE_FB, MS2R_FB, 'MI_nomerge',
              'SSIM_toolboxL1')
LOWER_IS_BETTER = ('flowD_fb', BISWE_FB, MS2R_FB)
NO_DIRECTION = ('tdiff',)
CLASSICAL = 'classical'  # baselines.restore_ir / restore_vi, in the restoration tables.
RESTORATION_KINDS = ('input', 'restored', CLASSICAL)  # Degraded input, network output, classical filters.
RESTORATION_KEYS = tuple(f'{metric}_{key}_{kind}' for key in ('ir', 'vi') for metric in ('PSNR', 'SSIM')
                         for kind in RESTORATION_KINDS)
UINT8_MAX = 255.0  # PSNR peak.
DEFAULT_DEGRADE_SEED = 0
TABLE_DIGITS = 4

# Plots.
PLOT_SIZE = (720, 360)  # width, height in pixels
PLOT_MARGINS = (60, 30, 160, 40)  # left, top, right (legend), bottom
PLOT_TICKS = 5
PLOT_FONT_SIZE = 12
SLICE_MIN_WIDTH = 240  # The time axis of a column slice is stretched to at least this many pixels.
SLICE_LABEL_HEIGHT = 18
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """What to evaluate and what to write.

  Attributes:
    setting: 'degraded' (degraded inputs) or 'normal' (clean inputs).
    references: 'clean' or 'degraded' source frames for the fusion metrics.
    window: temporal windows and spatial tiles (``windows.WindowConfig``).
    fused_minmax: quantise fused frames with the per-frame min-max stretch (METRICS.md 1); else clip + round.
    save_restored: write the restored IR/visible frames.
    save_mp4: also write the fused video as mp4.
    baselines: add the pixel max / mean rows and, in the degraded setting, restored_max and the classical
      restoration's PSNR / SSIM.
    plots: write the temporal plots.
    slice_column: image column of the column-slice plot (default: the middle one).
    degrade_seed: seed of the degradation of data without degraded frames.
    fps: frame rate of the mp4 (default: the visible video's, else 30).
    split: split of the dataset (TFDS split, or split folder of a dataset folder).
    videos: only these videos (default: all).
    max_frames: only the first frames of each video.
    overwrite: write into an existing, non-empty output folder.
  """
  setting: str = 'degraded'
  references: str = 'clean'
  window: windows.WindowConfig = windows.WindowConfig()
  fused_minmax: bool = True
  save_restored: bool = True
  save_mp4: bool = False
  baselines: bool = True
  plots: bool = True
  slice_column: Optional[int] = None
  degrade_seed: int = DEFAULT_DEGRADE_SEED
  fps: Optional[float] = None
  split: Optional[str] = None
  videos: Optional[tuple[str, ...]] = None
  max_frames: Optional[int] = None
  overwrite: bool = False

  def __post_init__(self):
    if self.setting not in SETTINGS:
      raise ValueError(f'setting must be one of {SETTINGS}; got {self.setting!r}')
    if self.references not in REFERENCES:
      raise ValueError(f'references must be one of {REFERENCES}; got {self.references!r}')
    if self.max_frames is not None and self.max_frames < 1:
      raise ValueError(f'max_frames must be >= 1; got {self.max_frames}')


# ---------------------------------------------------------------------------------------------------------------
# Reading videos.


@dataclasses.dataclass
class EvalVideo:
  """One video to evaluate.

  Attributes:
    name: the video's name.
    frame_names: one PNG name per frame.
    streams: the stream keys present (ir_gt, vi_gt and, if released, ir_lq, vi_lq).
    frames: callable returning an iterator of per-frame dicts stream key -> uint8 (H, W, 1) IR or
      (H, W, 3) visible.
    fps: frame rate if known.
    notes: what was done to the video (e.g. synthetic degradation).
  """
  name: str
  frame_names: tuple[str, ...]
  streams: tuple[str, ...]
  frames: Any
  fps: Optional[float] = None
  notes: list = dataclasses.field(default_factory=list)

  @property
  def num_frames(self) -> int:
    return len(self.frame_names)


def _is_tfds_dir(path: pathlib.Path) -> bool:
  from vfusion_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  return (path / pipeline.TFDS_INFO_FILE).is_file()


def open_videos(data: Any, *, split: Optional[str] = None, videos: Optional[Sequence[str]] = None,
                max_frames: Optional[int] = None, tfds_data_dir: Optional[str] = None) -> Iterator[EvalVideo]:
  """Yields the videos of ``data``, each readable frame by frame.

  ``data`` is a dataset folder in a layout of ``data.sources`` (M3SVD frame folders, mp4 pairs, ir/vi; streamed
  from disk), a folder of TFDS records (holding dataset_info.json), a TFDS name with ``tfds_data_dir``, or a
  random-access source of chunks (``data.pipeline``); the last three hold one video in memory at a time.
  """
  from vfusion_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vfusion_jax.data import sources  # pylint: disable=g-import-not-at-top

  if isinstance(data, (str, os.PathLike)) and tfds_data_dir is None:
    path = pathlib.Path(data)
    if not path.exists():
      raise FileNotFoundError(f'data {path} does not exist')
    if not _is_tfds_dir(path):
      found = sources.scan(path, videos=videos, max_frames=max_frames).videos
      if split is not None:
        found = [v for v in found if v.split == split]
      if not found:
        raise ValueError(f'no videos in {path}' + (f' (split {split!r})' if split else ''))
      for pair in found:
        fps = None
        stream = pair.streams[VI_GT]
        if stream.is_video_file:
          fps = video_io.probe_video(stream.path).fps or None
        yield EvalVideo(pair.name, tuple(pair.frame_names), tuple(pair.streams), pair.iter_frames, fps)
      return
  count = 0
  for item in pipeline.eval_videos(data, split=split, data_dir=tfds_data_dir, videos=videos,
                                   max_frames=max_frames):
    arrays = {k: item[k] for k in (IR_GT, VI_GT, IR_LQ, VI_LQ) if k in item}
    count += 1
    yield EvalVideo(item['video'], tuple(item['frame_names']), tuple(arrays), _array_frames(arrays))
  if not count:
    raise ValueError(f'no videos in {data}' + (f' (split {split!r})' if split else ''))


def _array_frames(arrays: Mapping[str, np.ndarray]):
  def frames():
    for t in range(len(next(iter(arrays.values())))):
      yield {k: v[t] for k, v in arrays.items()}
  return frames


def _seed_for(seed: int, video: str) -> np.random.SeedSequence:
  return np.random.SeedSequence([seed, zlib.crc32(video.encode('utf-8'))])


def add_synthetic_degradation(video: EvalVideo, seed: int = DEFAULT_DEGRADE_SEED) -> EvalVideo:
  """Adds ir_lq / vi_lq made from the clean frames with ``data.degrade`` (one draw per video, seeded by name).

  The degradation's fixed patterns span the whole video, so the video is held in memory. Frame t's degradation
  depends on (seed, video name, frame size, t) only, so ``max_frames`` does not change it.
  """
  from vfusion_jax.data import degrade  # pylint: disable=g-import-not-at-top

  clean = list(video.frames())
  ir = np.stack([f[IR_GT] for f in clean])
  vi = np.stack([f[VI_GT] for f in clean])
  if ir.shape[-1] == 3:
    ir = np.stack([metrics.rgb_to_gray(f) for f in ir])[..., None]
  ir_lq, vi_lq = degrade.degrade_clip(ir, vi, np.random.default_rng(_seed_for(seed, video.name)))
  arrays = {IR_GT: ir, VI_GT: vi, IR_LQ: metrics.to_uint8(ir_lq), VI_LQ: metrics.to_uint8(vi_lq)}
  notes = video.notes + [f'no released degraded frames: degraded with vfusion_jax.data.degrade '
                         f'(DegradationConfig defaults, seed {seed} + crc32 of the name)']
  return EvalVideo(video.name, video.frame_names, tuple(arrays), _array_frames(arrays), video.fps, notes)


# ---------------------------------------------------------------------------------------------------------------
# Per-frame quantities.


def as_rgb(frame: np.ndarray) -> np.ndarray:
  """A grey (H, W) or (H, W, 1) or an RGB (H, W, 3) frame as (H, W, 3), values and dtype unchanged."""
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = frame[..., None]
  return np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame


def baseline_frames(ir: np.ndarray, vi: np.ndarray, minmax: bool = True,
                    classical: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
  """Baseline fused frames of uint8 IR (H, W, 1|3) and visible (H, W, 3) -> uint8 (H, W, 3) each.

  pixel_max / pixel_mean: the pixel-wise max / mean of the inputs as float32 in [0, 1] (IR widened to RGB); with
  ``classical`` ({'ir', 'vi'}: ``baselines.restore_ir`` / ``restore_vi`` of the inputs) also restored_max, their
  pixel max. Each is quantised exactly as the network's fused output: ``metrics.fused_to_uint8(x, minmax)``.
  """
  floats = {PIXEL_MAX: baselines.pixel_max(ir, vi), PIXEL_MEAN: baselines.pixel_mean(ir, vi)}
  if classical is not None:
    floats[RESTORED_MAX] = baselines.pixel_max(classical['ir'], classical['vi'])
  return {k: metrics.fused_to_uint8(x, minmax) for k, x in floats.items()}


def psnr(x: np.ndarray, y: np.ndarray) -> float:
  """BasicSR ``calculate_psnr`` of two uint8 frames (all channels, peak 255, no crop); inf if equal."""
  mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)
  return float('inf') if mse == 0 else float(10.0 * np.log10(UINT8_MAX ** 2 / mse))


def ssim_rgb(x: np.ndarray, y: np.ndarray) -> float:
  """Mean over the RGB channels of the MATLAB SSIM (METRICS.md 6, L = 255) of two uint8 (H, W, 3) frames."""
  return float(np.mean([metrics.ssim_pair(x[..., c], y[..., c]) for c in range(x.shape[-1])]))


def baseline_methods(options: EvalOptions) -> tuple[str, ...]:
  """The baseline rows ``options`` asks for: none, pixel max / mean, and restored_max in the degraded setting."""
  if not options.baselines:
    return ()
  return BASELINES + (DEGRADED_BASELINES if options.setting == 'degraded' else ())


def restoration_metrics(restored: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                        clean: Mapping[str, np.ndarray],
                        classical: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, float]:
  """PSNR/SSIM against clean frames of restored, input and (if given) classically restored frames.

  Each argument maps 'ir' and 'vi' to uint8 frames (IR widened to RGB); the keys of a missing ``classical`` are
  None.
  """
  row = dict.fromkeys(k for k in RESTORATION_KEYS if k.endswith(f'_{CLASSICAL}'))
  for key in ('ir', 'vi'):
    reference = as_rgb(clean[key])
    frames = (('input', inputs[key]), ('restored', restored[key]))
    if classical is not None:
      frames += ((CLASSICAL, classical[key]),)
    for kind, frame in frames:
      frame = as_rgb(frame)
      row[f'PSNR_{key}_{kind}'] = psnr(frame, reference)
      row[f'SSIM_{key}_{kind}'] = ssim_rgb(frame, reference)
  return row


# ---------------------------------------------------------------------------------------------------------------
# Evaluation.


class _Writer:
  """Makes the output folder's sub-folders on demand (a bucket has none to make)."""

  def __init__(self, root: io.Path):
    self.root = root

  def folder(self, *parts: str) -> io.Path:
    return io.makedirs(self.root.joinpath(*parts))


def _mean(values: Sequence[float]) -> float:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else float('nan')


def evaluate_video(video: EvalVideo, apply_fn: windows.ApplyFn, options: EvalOptions, writer: _Writer,
                   progress: bool = True) -> dict:
  """Fuses, saves and measures one video; returns its per-frame rows, per-video means and plot data."""
  ir_key, vi_key = INPUT_STREAMS[options.setting]
  ref_ir_key, ref_vi_key = REFERENCE_STREAMS[options.references]
  for key in (ir_key, vi_key, ref_ir_key, ref_vi_key):
    if key not in video.streams:
      raise ValueError(f'video {video.name} has no {STREAM_NAMES[key]} frames')
  methods = (MODEL,) + baseline_methods(options)
  restoration = options.setting == 'degraded' and IR_GT in video.streams and VI_GT in video.streams
  fifo = collections.deque()  # Frame dicts read for the model and not yet measured.

  def pairs():
    for frame in video.frames():
      if len(fifo) > options.window.window + 1:
        raise RuntimeError('window bookkeeping error: frames are read too far ahead of the outputs')
      fifo.append(frame)
      yield frame[ir_key], frame[vi_key]

  fusion_dir = writer.folder('fusion', video.name)
  restored_dirs = ({k: writer.folder(k, video.name) for k in ('ir', 'vi')} if options.save_restored else {})
  mp4 = None
  if options.save_mp4:
    mp4 = video_io.VideoWriter(writer.folder('videos') / f'{video.name}_fusion.mp4',
                               options.fps or video.fps or inference.DEFAULT_FPS, overwrite=options.overwrite)
  rows = {m: [] for m in methods}
  restoration_rows = []
  column = {}  # name -> list of (H, 3) columns over time
  input_intensity = {'IR input': [], 'visible input': []}
  prev = None  # (guide grey, {method: fused uint8}) of the previous frame
  vfbench = _VfbenchFb(methods, (ref_ir_key, ref_vi_key), rows)
  bar = logging_utils.ProgressLine.frames(video.num_frames, enabled=progress)
  try:
    for t, out in windows.stream_windows(pairs(), video.num_frames, apply_fn, options.window):
      frame = fifo.popleft()
      name = video.frame_names[t]
      fused = {MODEL: metrics.fused_to_uint8(out['fusion'], options.fused_minmax)}
      classical = None
      if RESTORED_MAX in methods:
        classical = {'ir': baselines.restore_ir(frame[ir_key]), 'vi': baselines.restore_vi(frame[vi_key])}
      if options.baselines:
        fused.update(baseline_frames(frame[ir_key], frame[vi_key], options.fused_minmax, classical))
      io.save_png(fusion_dir / name, fused[MODEL])
      restored = {k: metrics.to_uint8(out[k]) for k in ('ir', 'vi')}
      for k, folder in restored_dirs.items():
        io.save_png(folder / name, restored[k])
      if mp4 is not None:
        mp4.write(fused[MODEL])
      vfbench.push(frame, fused)  # fills the rows of frame t - 1
      guide = metrics.rgb_to_gray(frame[VI_GT])
      flow = None
      if prev is not None:  # FB(guide_t, guide_t-1), from the visible source's stream when that is the guide
        flow = vfbench.backward_flow(VI_GT)
        if flow is None:
          flow = metrics.farneback_backward_flow(guide, prev[0])
      for method, f8 in fused.items():
        row = {'method': method, 'video': video.name, 'frame': t, 'frame_name': name}
        row.update(metrics.fusion_metrics(f8, frame[ref_ir_key], frame[ref_vi_key]))
        row[INTENSITY] = float(np.mean(metrics.rgb_to_gray(f8)))
        row['flowD_fb'] = metrics.flowd_fb_term(f8, prev[1][method], flow) if prev is not None else None
        row['tdiff'] = metrics.tdiff_term(f8, prev[1][method]) if prev is not None else None
        row.update(dict.fromkeys((BISWE_FB, MS2R_FB, BISWE_FB_VALID)))  # Filled in once frame t + 1 is known.
        rows[method].append(row)
      if restoration:
        row = {'video': video.name, 'frame': t, 'frame_name': name}
        row.update(restoration_metrics(restored, {'ir': frame[ir_key], 'vi': frame[vi_key]},
                                       {'ir': frame[IR_GT], 'vi': frame[VI_GT]},
                                       None if classical is None else {k: metrics.to_uint8(v)
                                                                       for k, v in classical.items()}))
        restoration_rows.append(row)
      col = options.slice_column if options.slice_column is not None else f8.shape[1] // 2
      if not 0 <= col < f8.shape[1]:
        raise ValueError(f'slice_column {col} is outside the {f8.shape[1]} columns of video {video.name}')
      panels = {'IR input': as_rgb(frame[ir_key]), 'visible input': frame[vi_key], **fused}
      for key, image in panels.items():
        column.setdefault(key, []).append(image[:, col])
      input_intensity['IR input'].append(float(np.mean(metrics.rgb_to_gray(frame[ir_key]))))
      input_intensity['visible input'].append(float(np.mean(metrics.rgb_to_gray(frame[vi_key]))))
      prev = (guide, fused)
      bar(t + 1)
    vfbench.finish()
    if mp4 is not None:
      mp4.close()
  except BaseException:
    if mp4 is not None:
      mp4.abort()
    raise
  per_video = {}
  for method, method_rows in rows.items():
    summary = {'method': method, 'video': video.name, 'num_frames': len(method_rows)}
    for key in FRAME_KEYS + TEMPORAL_KEYS:
      summary[key] = _mean([r[key] for r in method_rows])
    per_video[method] = summary
  restoration_video = None
  if restoration_rows:
    restoration_video = {'video': video.name, 'num_frames': len(restoration_rows)}
    restoration_video.update({k: _mean([r[k] for r in restoration_rows]) for k in RESTORATION_KEYS})
  return dict(rows=rows, per_video=per_video, restoration_rows=restoration_rows,
              restoration=restoration_video, column=column, slice_column=col, input_intensity=input_intensity)


class _VfbenchFb:
  """Fills BiSWE_fb, BiSWE_fb_valid_frac and MS2R_fb into the rows of centre t - 1 once frame t is known.

  Keeps the fused frames of the last two frames per method and one ``metrics.TripletFlowStream`` per fused
  video and per reference stream; a 1-frame video keeps None (the metrics need T >= 2).
  """

  def __init__(self, methods: Sequence[str], source_keys: Sequence[str], rows: Mapping[str, list]):
    self.source_keys = source_keys
    self.rows = rows
    self.sources = [metrics.TripletFlowStream() for _ in source_keys]
    self.fused = {m: metrics.TripletFlowStream() for m in methods}
    self.frames = collections.deque(maxlen=2)  # {method: fused uint8} of frames t - 2 and t - 1.
    self.count = 0

  def push(self, frame: Mapping[str, np.ndarray], fused: Mapping[str, np.ndarray]) -> None:
    source_flows = [s.push(frame[k]) for s, k in zip(self.sources, self.source_keys)]
    fused_flows = {m: s.push(fused[m]) for m, s in self.fused.items()}
    if self.count:
      self._measure(source_flows, fused_flows, fused)
    self.frames.append(fused)
    self.count += 1

  def backward_flow(self, source_key: str) -> Optional[np.ndarray]:
    """FB(S_t, S_{t-1}) of source ``source_key`` from the last push, or None if it is not a source here."""
    if source_key not in self.source_keys:
      return None
    return self.sources[list(self.source_keys).index(source_key)].last_backward

  def finish(self) -> None:
    if self.count > 1:
      self._measure([s.finish() for s in self.sources], {m: s.finish() for m, s in self.fused.items()},
                    self.frames[-1])

  def _measure(self, source_flows: list, fused_flows: Mapping[str, Any],
               next_fused: Mapping[str, np.ndarray]) -> None:
    """Centre count - 1, between the kept frames (t - 2 clamped to 0, t - 1) and ``next_fused``."""
    prev, curr = self.frames[0], self.frames[-1]
    masks = metrics.source_masks(source_flows)
    for method, flows in fused_flows.items():
      row = self.rows[method][self.count - 1]
      row[BISWE_FB], row[BISWE_FB_VALID] = metrics.biswe_fb_term(prev[method], curr[method], next_fused[method],
                                                                 flows, masks)
      row[MS2R_FB] = metrics.ms2r_fb_term(flows, source_flows)


def _check_output_dir(output_dir: io.Path, overwrite: bool) -> None:
  if output_dir.exists():
    if not output_dir.is_dir():
      raise ValueError(f'output {output_dir} exists and is not a folder')
    if any(output_dir.iterdir()) and not overwrite:
      raise FileExistsError(f'output folder {output_dir} is not empty; pass --overwrite to write into it')
  elif not io.is_remote(output_dir) and not output_dir.parent.is_dir():
    raise FileNotFoundError(f'the parent of output folder {output_dir} does not exist')


def evaluate(data: Any, output_dir: PathLike, *, checkpoint_dir: Optional[PathLike] = None,
             apply_fn: Optional[windows.ApplyFn] = None, model_config: Optional[Mapping[str, Any]] = None,
             options: Optional[EvalOptions] = None, tfds_data_dir: Optional[str] = None,
             progress: bool = True) -> dict:
  """Evaluates a checkpoint (or ``apply_fn``) on every video of ``data``; writes ``output_dir``.

  Args:
    data: see ``open_videos``.
    output_dir: the output folder (created; must be empty unless ``options.overwrite``).
    checkpoint_dir: inference checkpoint (converter or training export).
    apply_fn: the model as ``windows.ApplyFn``, instead of ``checkpoint_dir``.
    model_config: if given, the checkpoint must be for this network.
    options: ``EvalOptions``.
    tfds_data_dir: TFDS data_dir when ``data`` is a TFDS name.
    progress: print per-video progress to stderr.

  Returns:
    the summary written to metrics.json.
  """
  options = options or EvalOptions()
  for local_only in (data, tfds_data_dir):
    if isinstance(local_only, (str, os.PathLike)) and io.is_remote(local_only):
      raise ValueError(f'data {local_only}: evaluation reads datasets from local disk; mount the bucket with '
                       'gcsfuse (docs/tpu.md) and pass the mounted folder')
  output_dir = io.check_access(output_dir)
  _check_output_dir(output_dir, options.overwrite)
  if apply_fn is None:
    if checkpoint_dir is None:
      raise ValueError('pass checkpoint_dir (--checkpoint) or apply_fn')
    apply_fn, _, _ = inference.load_model(checkpoint_dir, model_config)
  writer = _Writer(output_dir)
  writer.folder()
  started = time.monotonic()
  results, notes = [], []
  for video in open_videos(data, split=options.split, videos=options.videos, max_frames=options.max_frames,
                           tfds_data_dir=tfds_data_dir):
    needs_lq = options.setting == 'degraded' or options.references == 'degraded'
    if needs_lq and not (IR_LQ in video.streams and VI_LQ in video.streams):
      video = add_synthetic_degradation(video, options.degrade_seed)
    notes.extend(f'{video.name}: {n}' for n in video.notes)
    logging.info('evaluating %s (%d frames)', video.name, video.num_frames)
    if progress:
      print(f'video {video.name} ({video.num_frames} frames)', flush=True)
    result = evaluate_video(video, apply_fn, options, writer, progress)
    results.append(result)
    if options.plots:
      _write_plots(writer.folder('plots'), video.name, result)
  summary = _summarise(results, options, data, checkpoint_dir, notes, time.monotonic() - started)
  _write_tables(output_dir, results, summary)
  return summary


# ---------------------------------------------------------------------------------------------------------------
# Tables.


def _json_value(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None if math.isnan(value) else ('inf' if value > 0 else '-inf')
  return value


def _summarise(results: list, options: EvalOptions, data: Any, checkpoint_dir, notes: list,
               seconds: float) -> dict:
  methods = list(results[0]['per_video'])
  mean = {}
  for method in methods:
    videos = [r['per_video'][method] for r in results]
    mean[method] = {'num_videos': len(videos), 'num_frames': int(sum(v['num_frames'] for v in videos))}
    mean[method].update({k: _mean([v[k] for v in videos]) for k in FRAME_KEYS + TEMPORAL_KEYS})
  restoration = [r['restoration'] for r in results if r['restoration'] is not None]
  ir_key, vi_key = INPUT_STREAMS[options.setting]
  ref_ir, ref_vi = REFERENCE_STREAMS[options.references]
  return {
      'setting': options.setting,
      'references': options.references,
      'inputs': [STREAM_NAMES[ir_key], STREAM_NAMES[vi_key]],
      'reference_frames': [STREAM_NAMES[ref_ir], STREAM_NAMES[ref_vi]],
      'data': str(data),
      'checkpoint': None if checkpoint_dir is None else str(checkpoint_dir),
      'window': dataclasses.asdict(options.window),
      'fused_minmax': options.fused_minmax,
      'baselines': {
          'methods': [m for m in methods if m != MODEL],
          'quantisation': 'as the fused frames: metrics.fused_to_uint8 with fused_minmax',
          RESTORED_MAX: baselines.constants() if RESTORED_MAX in methods else None,
      },
      'flowD_fb_guide': 'MATLAB-grey clean visible frames (visible_Enhance), METRICS.md 10.2',
      'vfbench_fb_sources': [STREAM_NAMES[ref_ir], STREAM_NAMES[ref_vi]],
      'videos': [r['per_video'][MODEL]['video'] for r in results],
      'mean': mean,
      'per_video': {m: [r['per_video'][m] for r in results] for m in methods},
      'restoration': {
          'per_video': restoration,
          'mean': ({k: _mean([v[k] for v in restoration]) for k in RESTORATION_KEYS} if restoration else None),
      },
      'notes': notes,
      'seconds': seconds,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  buffer = _pyio.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator='\n', extrasaction='ignore')
  writer.writeheader()
  for row in rows:
    writer.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in columns})
  return buffer.getvalue()


def _fmt(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '–'
  if isinstance(value, float) and math.isinf(value):
    return '∞' if value > 0 else '-∞'
  return f'{value:.{TABLE_DIGITS}f}' if isinstance(value, float) else str(value)


def _header(key: str) -> str:
  if key in NO_DIRECTION:
    return key
  return f'{key} {"↓" if key in LOWER_IS_BETTER else "↑"}'


def markdown_report(summary: Mapping[str, Any]) -> str:
  """The Markdown tables of a summary (metrics.json): means, per video, restoration."""
  window = summary['window']
  tiles = f'tiles of {window["tile_size"]} px (overlap {window["tile_overlap"]})' if window['tile_size'] else \
      'whole frames'
  lines = [
      '# VideoFusion evaluation', '',
      f'* **setting: {summary["setting"]}**: network inputs {" + ".join(summary["inputs"])}',
      f'* **references: {summary["references"]}**: fusion metrics against '
      f'{" + ".join(summary["reference_frames"])}',
      f'* data: `{summary["data"]}` ({len(summary["videos"])} videos, '
      f'{summary["mean"][MODEL]["num_frames"]} frames); checkpoint: `{summary["checkpoint"]}`',
      f'* windows: T = {window["window"]}, overlap {window["overlap"]}, rule `{window["rule"]}`; {tiles}',
      '* fused frames: ' + ('per-frame min-max stretch, round half to even (METRICS.md 1)'
                            if summary['fused_minmax'] else 'round(255 clip(x, 0, 1))')
      + f'; baselines `{PIXEL_MAX}`, `{PIXEL_MEAN}`: pixel-wise max / mean of the inputs, '
      f'`{RESTORED_MAX}` (degraded setting): pixel max of the inputs restored by fixed classical filters '
      '(vfusion_jax.baselines); every baseline is quantised exactly as the fused frames',
      '* metrics per frame, averaged per video, then over videos; flowD_fb / tdiff over consecutive pairs. '
      'flowD_fb is this project\'s Farneback substitute (METRICS.md 10.2) on the clean visible frames, **not** '
      'the paper\'s SEA-RAFT flowD.',
      '* BiSWE_fb / MS2R_fb: per centre frame of the clamped triplet (t-1, t, t+1), source flows on '
      f'{" + ".join(summary["reference_frames"])}; this project\'s Farneback substitutes (METRICS_VFBENCH.md '
      'Part B), **not** VF-Bench\'s SEA-RAFT BiSWE / MS2R and not comparable with its numbers. BiSWE_fb_valid_frac '
      '(share of pixels passing both sources\' forward-backward check) is in the CSV and JSON files.', '',
      '## Fusion metrics (mean over videos)', '',
      '| method | ' + ' | '.join(_header(k) for k in TABLE_KEYS) + ' |',
      '|---|' + '---:|' * len(TABLE_KEYS),
  ]
  for method, values in summary['mean'].items():
    lines.append(f'| {method} | ' + ' | '.join(_fmt(values[k]) for k in TABLE_KEYS) + ' |')
  lines += ['', '## Per video', '', '| video | method | frames | ' + ' | '.join(_header(k) for k in TABLE_KEYS)
            + ' |', '|---|---|---:|' + '---:|' * len(TABLE_KEYS)]
  for index, video in enumerate(summary['videos']):
    for method, per_video in summary['per_video'].items():
      values = per_video[index]
      lines.append(f'| {video} | {method} | {values["num_frames"]} | '
                   + ' | '.join(_fmt(values[k]) for k in TABLE_KEYS) + ' |')
  restoration = summary['restoration']
  if restoration['per_video']:
    lines += ['', '## Restoration (degraded setting): PSNR (dB) and SSIM against the clean frames', '',
              'PSNR: BasicSR (uint8 RGB, peak 255); SSIM: METRICS.md 6 (L = 255) per RGB channel, averaged. '
              '"input" is the degraded network input, "restored" the network\'s output; gain = restored - input; '
              '"classical" the fixed filters of restored_max (offset, destriping and median for IR; colour '
              'correction and unsharp mask for visible; vfusion_jax.baselines).',
              '', '| video | IR PSNR input | IR PSNR restored | IR PSNR gain | IR PSNR classical | IR SSIM input | '
              'IR SSIM restored | IR SSIM classical | VI PSNR input | VI PSNR restored | VI PSNR gain | '
              'VI PSNR classical | VI SSIM input | VI SSIM restored | VI SSIM classical |',
              '|---|' + '---:|' * 14]
    rows = list(restoration['per_video']) + [dict(video='**mean**', **restoration['mean'])]
    for r in rows:
      cells = []
      for key in ('ir', 'vi'):
        cells += [r[f'PSNR_{key}_input'], r[f'PSNR_{key}_restored'],
                  r[f'PSNR_{key}_restored'] - r[f'PSNR_{key}_input'], r[f'PSNR_{key}_classical'],
                  r[f'SSIM_{key}_input'], r[f'SSIM_{key}_restored'], r[f'SSIM_{key}_classical']]
      lines.append(f'| {r["video"]} | ' + ' | '.join(_fmt(None if c is None else float(c)) for c in cells) + ' |')
  if summary['notes']:
    lines += ['', '## Notes', ''] + [f'* {n}' for n in summary['notes']]
  return '\n'.join(lines) + '\n'


def _write_tables(output_dir: io.Path, results: list, summary: dict) -> None:
  frame_columns = ['method', 'video', 'frame', 'frame_name', *FRAME_KEYS, *TEMPORAL_KEYS]
  frame_rows = [row for r in results for method_rows in r['rows'].values() for row in method_rows]
  io.write_text(output_dir / 'metrics_per_frame.csv', _csv_text(frame_rows, frame_columns))
  video_columns = ['method', 'video', 'num_frames', *FRAME_KEYS, *TEMPORAL_KEYS]
  video_rows = [v for rows in summary['per_video'].values() for v in rows]
  io.write_text(output_dir / 'metrics_per_video.csv', _csv_text(video_rows, video_columns))
  mean_rows = [dict(method=m, **v) for m, v in summary['mean'].items()]
  io.write_text(output_dir / 'metrics_mean.csv',
                _csv_text(mean_rows, ['method', 'num_videos', 'num_frames', *FRAME_KEYS, *TEMPORAL_KEYS]))
  restoration_rows = [row for r in results for row in r['restoration_rows']]
  if restoration_rows:
    io.write_text(output_dir / 'restoration_per_frame.csv',
                  _csv_text(restoration_rows, ['video', 'frame', 'frame_name', *RESTORATION_KEYS]))
    io.write_text(output_dir / 'restoration_per_video.csv',
                  _csv_text(summary['restoration']['per_video'], ['video', 'num_frames', *RESTORATION_KEYS]))
  text = json.dumps(_map_floats(summary), indent=2, allow_nan=False, default=str)
  io.write_text(output_dir / 'metrics.json', text + '\n')
  io.write_text(output_dir / 'metrics.md', markdown_report(summary))


def _map_floats(value):
  if isinstance(value, dict):
    return {k: _map_floats(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_map_floats(v) for v in value]
  if isinstance(value, float):
    return _json_value(value)
  return value


# ---------------------------------------------------------------------------------------------------------------
# Plots (drawn with PIL; no plotting library needed).


def _font(size: int = PLOT_FONT_SIZE):
  try:
    return ImageFont.load_default(size=size)
  except (OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def line_plot(series: Mapping[str, Sequence[float]], title: str, xlabel: str, ylabel: str) -> np.ndarray:
  """A line chart of one or more series over their index -> uint8 (H, W, 3) image."""
  width, height = PLOT_SIZE
  left, top, right, bottom = PLOT_MARGINS
  image = Image.new('RGB', (width, height), WHITE)
  draw = ImageDraw.Draw(image)
  font = _font()
  values = np.concatenate([np.asarray(v, np.float64) for v in series.values()])
  values = values[np.isfinite(values)]
  lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
  if hi - lo < 1e-9:
    lo, hi = lo - 0.5, hi + 0.5
  pad = 0.05 * (hi - lo)
  lo, hi = lo - pad, hi + pad
  length = max(len(v) for v in series.values())
  x0, x1, y0, y1 = left, width - right, top, height - bottom
  to_x = lambda i: x0 + (x1 - x0) * (i / max(length - 1, 1))
  to_y = lambda v: y1 - (y1 - y0) * ((v - lo) / (hi - lo))
  for k in range(PLOT_TICKS + 1):
    v = lo + (hi - lo) * k / PLOT_TICKS
    y = to_y(v)
    draw.line([(x0, y), (x1, y)], fill=GREY)
    draw.text((x0 - 6, y), f'{v:.1f}', fill=BLACK, font=font, anchor='rm')
  for i in sorted(set(np.linspace(0, length - 1, PLOT_TICKS + 1).round().astype(int).tolist())):
    draw.line([(to_x(i), y1), (to_x(i), y1 + 3)], fill=BLACK)
    draw.text((to_x(i), y1 + 6), str(i), fill=BLACK, font=font, anchor='mt')
  draw.rectangle([x0, y0, x1, y1], outline=BLACK)
  for n, (name, ys) in enumerate(series.items()):
    colour = COLOURS[n % len(COLOURS)]
    points = [(to_x(i), to_y(v)) for i, v in enumerate(ys) if np.isfinite(v)]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for p in points:
      draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
    ly = y0 + 8 + n * (PLOT_FONT_SIZE + 6)
    draw.line([(x1 + 10, ly), (x1 + 30, ly)], fill=colour, width=3)
    draw.text((x1 + 36, ly), name, fill=BLACK, font=font, anchor='lm')
  draw.text((width / 2, 6), title, fill=BLACK, font=font, anchor='mt')
  draw.text(((x0 + x1) / 2, height - 6), xlabel, fill=BLACK, font=font, anchor='mb')
  draw.text((4, y0 - 16), ylabel, fill=BLACK, font=font, anchor='lt')
  return np.asarray(image)


def column_slices(columns: Mapping[str, Sequence[np.ndarray]], column: int) -> np.ndarray:
  """Column-over-time images side by side: each panel (H, T * k, 3), time to the right -> uint8 image."""
  panels = []
  for cols in columns.values():
    panel = np.stack(cols, axis=1)  # (H, T, 3)
    panels.append(np.repeat(panel, max(1, math.ceil(SLICE_MIN_WIDTH / panel.shape[1])), axis=1))
  strip = logging_utils.image_strip([panels], separator_value=255)
  label_h = SLICE_LABEL_HEIGHT
  image = Image.new('RGB', (strip.shape[1], strip.shape[0] + label_h), WHITE)
  image.paste(Image.fromarray(strip), (0, label_h))
  draw = ImageDraw.Draw(image)
  font = _font()
  step = panels[0].shape[1] + logging_utils.SEPARATOR_PX
  for n, name in enumerate(columns):
    draw.text((n * step + panels[0].shape[1] / 2, label_h / 2), f'{name} (x={column})', fill=BLACK, font=font,
              anchor='mm')
  return np.asarray(image)


def _write_plots(folder: io.Path, video: str, result: Mapping[str, Any]) -> None:
  series = {m: [r[INTENSITY] for r in rows] for m, rows in result['rows'].items()}
  series.update(result['input_intensity'])
  plot = line_plot(series, f'{video}: mean grey level of the fused frames', 'frame', 'mean grey (0-255)')
  io.save_png(folder / f'{video}_intensity.png', plot)
  io.save_png(folder / f'{video}_column.png', column_slices(result['column'], result['slice_column']))
