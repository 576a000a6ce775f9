r"""Measures the degradation of clean/degraded training video pairs, per video, and writes it as JSON.

  python -m vfusion_jax.data.calibrate --root=/path/to/m3svd_sample --held_out=0111_1716 --output=calib.json
  python -m vfusion_jax.data.calibrate --clean=M/infrared_Enhance --degraded=M/infrared_noise
  python -m vfusion_jax.data.calibrate --clean=M/visible_Enhance/0114_1609 --degraded=M/visible_Blur/0114_1609

``--root`` takes a release folder (infrared_Enhance/, infrared_noise/, visible_Enhance/, visible_Blur/, or
the same inside split folders) and measures both modalities of every training video that has degraded frames.
``--clean``/``--degraded`` take one modality: two stream folders (one sub-folder or video file per video)
or the frame folders of one video; the modality comes from the folder names (infrared*/ir, visible*/vi)
or ``--modality``.

Calibration sets the ranges training draws from, so it reads training videos only:

* where split folders exist, only ``--split`` (default ``train``) is read; a folder inside another split
  folder (``test/``, ``val/``) is refused;
* ``--held_out`` names videos that are never measured, for layouts without split folders (whose videos
  otherwise all count as training videos); naming a held-out video or one of another split in ``--videos``
  is an error.

Per video, with the estimators of ``vfusion_jax.data.degrade`` (values in [0, 1] intensity units):
  visible:  blur_sigma (best-fit 15x15 Gaussian), gain and offset per RGB channel (blurred ~ gain * blur(gt)
            + offset);
  infrared: column_std, row_std (fixed stripes), temporal_row_std, pixel_std (per-pixel noise), the smooth
            offset field (offset_mean, offset_min, offset_max, offset_amplitude = max - min), tone_knee and
            tone_slope (highlight compression), clipped_fraction.
The JSON also holds the range of each statistic over the videos, how it compares with the default
``degrade.DegradationConfig`` ranges that training draws from, and a suggested range (``suggest_range``).
"""

import dataclasses
import json
import math
import os
import pathlib
import sys
from typing import Any, Optional, Sequence, Union

from absl import app
from absl import flags
from absl import logging
import numpy as np

from vfusion_jax import io
from vfusion_jax.data import degrade
from vfusion_jax.data import sources

PathLike = Union[str, os.PathLike]

MODALITIES = ('auto', 'ir', 'vi')
INFRARED, VISIBLE = 'infrared', 'visible'
# Folder-name prefixes that tell the modality of a --clean folder.
_IR_PREFIXES = ('infrared', 'ir')
_VI_PREFIXES = ('visible', 'vi')
# Measured statistic (section.key) -> the DegradationConfig range that models it.
CONFIG_RANGES = {
    'visible.blur_sigma': 'blur_sigma_range',
    'visible.gain': 'vi_gain_range',
    'visible.offset': 'vi_offset_range',
    'infrared.column_std': 'ir_column_std_range',
    'infrared.row_std': 'ir_row_std_range',
    'infrared.temporal_row_std': 'ir_temporal_row_std_range',
    'infrared.pixel_std': 'ir_pixel_std_range',
    'infrared.offset_mean': 'ir_offset_mean_range',
    'infrared.offset_amplitude': 'ir_offset_amplitude_range',
    'infrared.tone_knee': 'ir_tone_knee_range',
    'infrared.tone_slope': 'ir_tone_slope_range',
}
JSON_INDENT = 2
# A measured range counts as inside a default range within half a grey level (the estimators' noise floor).
RANGE_TOLERANCE = 0.5 / 255
# Only videos of this split are measured by default.
TRAIN_SPLIT = 'train'
# A split folder holds stream folders, which hold video folders: a --clean folder is one or two levels below it.
SPLIT_FOLDER_DEPTH = 2
# Suggested default range of a measured range [lo, hi]: [lo / RANGE_WIDENING, hi * RANGE_WIDENING], of the
# attenuation 1 - gain for gains, rounded outward to SUGGESTION_DECIMALS; (0, 0) (the component off) when hi
# is below the noise floor RANGE_TOLERANCE. Training should cover more than the few videos measured.
RANGE_WIDENING = 1.5
SUGGESTION_DECIMALS = 3
# Float error this far below the last kept decimal is not rounded outward (0.15 / 1.5 stays 0.1).
ROUNDING_GUARD_DECIMALS = 6
ATTENUATION_STATISTICS = ('visible.gain',)


def measure_visible(clean: np.ndarray, blurred: np.ndarray) -> dict[str, Any]:
  """Blur sigma and per-channel gain/offset of a uint8 (T, H, W, 3) clean/blurred pair."""
  sigma, gain, offset = degrade.estimate_blur_sigma(clean, blurred, return_affine=True)
  return dict(blur_sigma=float(sigma), gain=[float(g) for g in gain], offset=[float(o) for o in offset])


def measure_infrared(clean: np.ndarray, noisy: np.ndarray) -> dict[str, Any]:
  """Stripe, noise, offset-field and tone statistics of a uint8 (T, H, W, 1) clean/noisy pair (T >= 2)."""
  stats = {key: float(value) for key, value in degrade.estimate_stripe_stats(clean, noisy).items()}
  stats['offset_amplitude'] = stats['offset_max'] - stats['offset_min']
  return stats


def _measure_video(video: sources.VideoPair) -> dict[str, Any]:
  frames = video.read()
  result = dict(num_frames=video.num_frames, height=video.height, width=video.width)
  if sources.VI_LQ in frames:
    logging.info('Measuring the visible blur of %s', video.name)
    result[VISIBLE] = measure_visible(frames[sources.VI_GT], frames[sources.VI_LQ])
  if sources.IR_LQ in frames:
    logging.info('Measuring the infrared noise of %s', video.name)
    result[INFRARED] = measure_infrared(frames[sources.IR_GT], frames[sources.IR_LQ])
  return result


def _check_split(split: str) -> None:
  if split not in sources.SPLITS:
    raise ValueError(f'split must be one of {sources.SPLITS}, got {split!r}')


def _exclusion(video: sources.VideoPair, split: str, held_out: Sequence[str]) -> Optional[str]:
  """Why ``video`` must not be measured, or None. Videos of a layout without split folders count as training."""
  if video.name in held_out:
    return 'held out (--held_out)'
  video_split = video.split or TRAIN_SPLIT
  if video_split != split:
    return f'in the {video_split} split, not {split}'
  return None


def calibrate_root(root: PathLike, *, max_frames: Optional[int] = None, videos: Optional[Sequence[str]] = None,
                   split: str = TRAIN_SPLIT, held_out: Sequence[str] = ()) -> dict[str, Any]:
  """Measures every video of ``split`` of a release folder that has degraded frames; returns the JSON report.

  Args:
    root: release folder, with or without split folders.
    max_frames: use only the first frames of each video.
    videos: only these videos; naming an excluded one (held out, or of another split) raises ValueError.
    split: the split measured; a layout without split folders counts as ``TRAIN_SPLIT``.
    held_out: videos never measured.
  """
  _check_split(split)
  held_out = tuple(held_out)
  scanned = sources.scan(root, max_frames=max_frames, videos=videos).videos
  excluded = {video.name: _exclusion(video, split, held_out) for video in scanned}
  excluded = {name: reason for name, reason in excluded.items() if reason}
  if videos is not None and excluded:
    raise ValueError(f'calibration reads {split} videos only; asked for {sorted(excluded)}: '
                     + '; '.join(f'{name} {reason}' for name, reason in sorted(excluded.items())))
  for name, reason in excluded.items():
    logging.info('Skipping %s: %s', name, reason)
  measured = {video.name: _measure_video(video) for video in scanned
              if video.name not in excluded and video.lq_streams}
  if not measured:
    raise sources.DataError(f'{root}: no {split} video has degraded frames (infrared_noise/ or visible_Blur/)'
                            + (f'; skipped {sorted(excluded)}' if excluded else ''))
  return make_report(measured, inputs=dict(root=str(root), max_frames=max_frames, split=split,
                                           held_out=list(held_out), skipped=excluded))


def _modality_of(folder: pathlib.Path, modality: str) -> str:
  if modality != 'auto':
    return modality
  for part in (folder.name.lower(), folder.parent.name.lower()):
    if part.startswith(_IR_PREFIXES) and not part.startswith(_VI_PREFIXES):
      return 'ir'
    if part.startswith(_VI_PREFIXES):
      return 'vi'
  raise ValueError(f'cannot tell the modality of {folder} from its name; pass --modality=ir or vi')


def _video_paths(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """Video name -> frame folder or file: the folder itself when it holds PNG frames, else its videos."""
  if any(p.suffix.lower() == sources.PNG_SUFFIX for p in folder.iterdir()):
    return {folder.name: folder}
  return sources.list_videos(folder)


def _split_folder_of(folder: pathlib.Path) -> Optional[str]:
  """Split of a split folder one or two levels above ``folder`` (stream folder or one video's frames), or None."""
  for parent in folder.resolve().parents[:SPLIT_FOLDER_DEPTH]:
    if parent.name in sources.SPLIT_FOLDERS:
      return sources.SPLIT_FOLDERS[parent.name]
  return None


def calibrate_folders(clean: PathLike, degraded: PathLike, *, modality: str = 'auto',
                      max_frames: Optional[int] = None, split: str = TRAIN_SPLIT,
                      held_out: Sequence[str] = ()) -> dict[str, Any]:
  """Measures one modality from a clean and a degraded folder (stream folders or one video's frames).

  Folders inside a split folder other than ``split`` are refused, as is a single video listed in
  ``held_out``; held-out videos of stream folders are skipped.
  """
  clean, degraded = pathlib.Path(clean), pathlib.Path(degraded)
  for folder in (clean, degraded):
    if not folder.is_dir():
      raise FileNotFoundError(f'No such folder: {folder}')
  if modality not in MODALITIES:
    raise ValueError(f'modality must be one of {MODALITIES}, got {modality!r}')
  _check_split(split)
  held_out = tuple(held_out)
  for folder in (clean, degraded):
    folder_split = _split_folder_of(folder)
    if folder_split not in (None, split):
      raise ValueError(f'{folder} is in the {folder_split} split; calibration reads {split} videos only')
  modality = _modality_of(clean, modality)
  gt_key, lq_key = (sources.IR_GT, sources.IR_LQ) if modality == 'ir' else (sources.VI_GT, sources.VI_LQ)
  clean_videos, degraded_videos = _video_paths(clean), _video_paths(degraded)
  single = len(clean_videos) == 1 and len(degraded_videos) == 1
  if single:  # One video's frame folders, maybe named apart.
    degraded_videos = {next(iter(clean_videos)): next(iter(degraded_videos.values()))}
  unmatched = sorted(set(clean_videos) ^ set(degraded_videos))
  if unmatched:
    raise sources.DataError(f'videos in only one of {clean} and {degraded}: {unmatched}')
  skipped = {name: 'held out (--held_out)' for name in clean_videos if name in held_out}
  if single and skipped:
    raise ValueError(f'video {next(iter(skipped))} is held out; calibration reads {split} videos only')
  measured = {}
  for name in sorted(set(clean_videos) - set(skipped), key=sources.natural_key):
    video = sources.scan_video(name, {gt_key: clean_videos[name], lq_key: degraded_videos[name]},
                               max_frames=max_frames)
    frames = video.read()
    logging.info('Measuring %s (%s)', name, modality)
    section, measure = (INFRARED, measure_infrared) if modality == 'ir' else (VISIBLE, measure_visible)
    measured[name] = dict(num_frames=video.num_frames, height=video.height, width=video.width,
                          **{section: measure(frames[gt_key], frames[lq_key])})
  if not measured:
    raise sources.DataError(f'{clean}: every video is held out ({sorted(skipped)})')
  return make_report(measured, inputs=dict(clean=str(clean), degraded=str(degraded), modality=modality,
                                           max_frames=max_frames, split=split, held_out=list(held_out),
                                           skipped=skipped))


def _values(measured: dict[str, Any], statistic: str) -> list[float]:
  section, key = statistic.split('.')
  values = []
  for video in measured.values():
    value = video.get(section, {}).get(key)
    if value is None:
      continue
    values.extend(value if isinstance(value, list) else [value])
  return [v for v in values if not math.isnan(v)]


def _round_out(value: float, up: bool) -> float:
  scale = 10**SUGGESTION_DECIMALS
  rounded = (math.ceil if up else math.floor)(round(value * scale, ROUNDING_GUARD_DECIMALS)) / scale
  return round(rounded, SUGGESTION_DECIMALS)


def suggest_range(statistic: str, low: float, high: float) -> list[float]:
  """The default range suggested for a statistic measured over [low, high] (see ``RANGE_WIDENING``)."""
  if statistic in ATTENUATION_STATISTICS:
    attenuation = suggest_range('', 1.0 - high, 1.0 - low)
    return [_round_out(1.0 - attenuation[1], up=False), _round_out(1.0 - attenuation[0], up=True)]
  if high < RANGE_TOLERANCE:
    return [0.0, 0.0]
  return [_round_out(low / RANGE_WIDENING, up=False), _round_out(high * RANGE_WIDENING, up=True)]


def make_report(measured: dict[str, Any], inputs: dict[str, Any],
                config: Optional[degrade.DegradationConfig] = None) -> dict[str, Any]:
  """The JSON report: per-video statistics, their ranges over the videos, and the default config ranges.

  ``default_ranges[statistic].inside`` says whether the measured range lies within the default range, give or
  take ``RANGE_TOLERANCE``; ``suggested`` is ``suggest_range`` of the measured range.
  """
  config = config or degrade.DegradationConfig()
  statistics = sorted({f'{section}.{key}' for video in measured.values() for section in (VISIBLE, INFRARED)
                       for key in video.get(section, {})})
  summary = {}
  for statistic in statistics:
    values = _values(measured, statistic)
    if values:
      summary[statistic] = dict(min=min(values), max=max(values), mean=float(np.mean(values)))
  comparison = {}
  for statistic, field in CONFIG_RANGES.items():
    if statistic in summary:
      low, high = getattr(config, field)
      measured_low, measured_high = summary[statistic]['min'], summary[statistic]['max']
      inside = low - RANGE_TOLERANCE <= measured_low and measured_high <= high + RANGE_TOLERANCE
      comparison[statistic] = dict(config_field=field, default=[low, high],
                                   measured=[measured_low, measured_high],
                                   inside=bool(inside),
                                   suggested=suggest_range(statistic, measured_low, measured_high))
  return _json_safe(dict(units='intensity in [0, 1] (multiply by 255 for grey levels)', inputs=inputs,
                         videos=measured, summary=summary, default_ranges=comparison,
                         range_tolerance=RANGE_TOLERANCE,
                         default_config=dataclasses.asdict(config)))


def _json_safe(value: Any) -> Any:
  """NaN -> None (strict JSON), tuples -> lists, numpy scalars -> Python."""
  if isinstance(value, dict):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (np.floating, float)):
    return None if math.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def write_report(report: dict[str, Any], output: Optional[PathLike]):
  """Writes the report as JSON to ``output`` (atomically) or, if None, to stdout."""
  text = json.dumps(report, indent=JSON_INDENT, allow_nan=False) + '\n'
  if output is None:
    sys.stdout.write(text)
    return
  io.write_text(output, text)


def _define_flags():
  flags.DEFINE_string('root', None, 'release folder with infrared_Enhance/, infrared_noise/, visible_Enhance/, '
                      'visible_Blur/ (or split folders holding them)')
  flags.DEFINE_string('clean', None, 'clean stream folder, or one video\'s clean frame folder')
  flags.DEFINE_string('degraded', None, 'the matching degraded folder')
  flags.DEFINE_enum('modality', 'auto', list(MODALITIES), 'modality of --clean/--degraded (auto: from the name)')
  flags.DEFINE_integer('max_frames', None, 'use only the first frames of each video')
  flags.DEFINE_list('videos', None, 'only these videos (with --root)')
  flags.DEFINE_enum('split', TRAIN_SPLIT, list(sources.SPLITS), 'the split measured where split folders exist')
  flags.DEFINE_list('held_out', [], 'videos never measured (e.g. the held-out video of a layout without split '
                    'folders)')
  flags.DEFINE_string('output', None, 'JSON file to write (default: stdout)')


def main(argv: Sequence[str]):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  pair = args.clean is not None or args.degraded is not None
  if pair == (args.root is not None) or (pair and (args.clean is None or args.degraded is None)):
    raise app.UsageError('pass either --root, or both --clean and --degraded')
  try:
    if args.root is not None:
      report = calibrate_root(args.root, max_frames=args.max_frames, videos=args.videos, split=args.split,
                              held_out=args.held_out)
    else:
      report = calibrate_folders(args.clean, args.degraded, modality=args.modality, max_frames=args.max_frames,
                                 split=args.split, held_out=args.held_out)
  except (FileNotFoundError, ValueError) as e:  # sources.DataError is a ValueError.
    raise SystemExit(f'error: {e}') from None
  write_report(report, args.output)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
