r"""Tables and figures of the CPU training study (docs/cpu_study.md) from the outputs of scripts/cpu_study.sh.

  python scripts/cpu_study_report.py --work=/tmp/vfusion_cpu_study --output=docs/cpu_study

Reads ``WORK/train/metrics.jsonl`` (the training log) and ``WORK/eval_<data>_T<window>/metrics.json`` (eval.py),
and writes to ``--output``: ``loss.png`` (loss terms over training), ``strip.png`` (held-out frames: degraded
IR | degraded visible | fused | restored IR | restored visible | clean IR | clean visible) and ``results.md``
(the tables quoted by docs/cpu_study.md). Every number in them is read from those files.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from vfusion_jax import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax import io  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax import logging_utils  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORK = flags.DEFINE_string('work', None, 'the study folder of scripts/cpu_study.sh', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'where loss.png, strip.png and results.md go', required=True)
_DATA = flags.DEFINE_string('data', '../shared/data', 'the shared data folder (for the degraded/clean inputs)')
_STRIP_FRAME = flags.DEFINE_integer('strip_frame', 10, 'frame index shown in the picture strip')
_STRIP_SCALE = flags.DEFINE_integer('strip_scale', 2, 'downscale factor of the strip panels')

# (eval folder name, data folder under --data, caption). 'sample' holds the held-out 0111_1716 only.
EVALS = (('sample', 'm3svd_sample', 'held-out 0111_1716 (m3svd_sample, the release\'s degraded frames)'),
         ('videos', 'm3svd_videos', 'm3svd_videos (synthetic degradation, seed 0)'))
WINDOWS = (7, 2)
LOSS_GROUPS = {
    'total and parts': ('l_total', 'l_fid_total', 'loss_fusion', 'l_cons_total'),
    'restoration fidelity': ('ir_loss_fid', 'vi_loss_fid'),
}
TABLE_LOSS_KEYS = ('l_total', 'ir_loss_fid', 'vi_loss_fid', 'loss_fusion', 'l_cons_total')
FUSION_KEYS = ('EN', 'MI', 'SF', 'SD', 'VIF', 'SSIM', 'Qabf')


def _load_log(path: pathlib.Path) -> list:
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in rows if 'l_total' in r]


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
  if len(values) < width:
    return values
  kernel = np.ones(width) / width
  return np.convolve(values, kernel, mode='valid')


def loss_figure(rows: list) -> np.ndarray:
  """Two line charts (smoothed over 10 log points) of the loss terms, stacked -> uint8 image."""
  step_of = [r['step'] for r in rows]
  every = step_of[1] - step_of[0] if len(step_of) > 1 else 1
  charts = []
  for title, keys in LOSS_GROUPS.items():
    series = {k: _smooth(np.array([r[k] for r in rows], np.float64), 10) for k in keys}
    charts.append(evaluate.line_plot(series, f'training loss: {title} (moving mean of 10 log points)',
                                     f'log point (every {every} steps)', 'loss'))
  return np.concatenate(charts, axis=0)


def loss_table(rows: list) -> str:
  """Mean of each loss term over 10 equal spans of training."""
  lines = ['| steps | ' + ' | '.join(TABLE_LOSS_KEYS) + ' |', '|---|' + '---:|' * len(TABLE_LOSS_KEYS)]
  for span in np.array_split(np.arange(len(rows)), 10):
    if not len(span):
      continue
    part = [rows[i] for i in span]
    cells = [f'{np.mean([r[k] for r in part]):.4f}' for k in TABLE_LOSS_KEYS]
    lines.append(f'| {part[0]["step"]}-{part[-1]["step"]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _load_eval(work: pathlib.Path, name: str, window: int) -> dict:
  path = work / f'eval_{name}_T{window}' / 'metrics.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing: run scripts/cpu_study.sh first')
  return json.loads(path.read_text())


def restoration_table(summary: dict) -> str:
  lines = ['| video | IR PSNR degraded | IR PSNR restored | gain | VI PSNR degraded | VI PSNR restored | gain | '
           'IR SSIM degraded / restored | VI SSIM degraded / restored |', '|---|' + '---:|' * 8]
  rows = summary['restoration']['per_video'] + [dict(summary['restoration']['mean'], video='**mean**')]
  for r in rows:
    cells = []
    for key in ('ir', 'vi'):
      cells += [f'{r[f"PSNR_{key}_input"]:.2f}', f'{r[f"PSNR_{key}_restored"]:.2f}',
                f'{r[f"PSNR_{key}_restored"] - r[f"PSNR_{key}_input"]:+.2f}']
    cells += [f'{r["SSIM_ir_input"]:.4f} / {r["SSIM_ir_restored"]:.4f}',
              f'{r["SSIM_vi_input"]:.4f} / {r["SSIM_vi_restored"]:.4f}']
    lines.append(f'| {r["video"]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def fusion_table(summary: dict) -> str:
  methods = (evaluate.MODEL, evaluate.PIXEL_MAX, evaluate.PIXEL_MEAN)
  lines = ['| method | ' + ' | '.join(FUSION_KEYS) + ' |', '|---|' + '---:|' * len(FUSION_KEYS)]
  for method in methods:
    mean = summary['mean'][method]
    lines.append(f'| {method} | ' + ' | '.join(f'{mean[k]:.4f}' for k in FUSION_KEYS) + ' |')
  return '\n'.join(lines)


def temporal_table(by_window: dict) -> str:
  """flowD_fb and tdiff (lower = steadier) of the fused video per window length, and of the baselines."""
  lines = ['| fused by | flowD_fb | tdiff |', '|---|---:|---:|']
  for window, summary in by_window.items():
    mean = summary['mean'][evaluate.MODEL]
    label = f'VideoFusion, windows of T={window}' + (' (frame-wise: pairs)' if window == 2 else '')
    lines.append(f'| {label} | {mean["flowD_fb"]:.4f} | {mean["tdiff"]:.4f} |')
  first = next(iter(by_window.values()))
  for method in (evaluate.PIXEL_MAX, evaluate.PIXEL_MEAN):
    lines.append(f'| {method} | {first["mean"][method]["flowD_fb"]:.4f} | {first["mean"][method]["tdiff"]:.4f} |')
  return '\n'.join(lines)


def _pil_open(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image.open(path).convert('RGB')


def picture_strip(work: pathlib.Path, data: pathlib.Path, frame: int, scale: int) -> np.ndarray:
  """One row per evaluated video (windows of 7): the network's inputs, outputs and the clean frames."""
  rows = []
  for name, folder, _ in EVALS:
    summary = _load_eval(work, name, WINDOWS[0])
    for video in evaluate.open_videos(data / folder, videos=summary['videos'], max_frames=frame + 1):
      if not {evaluate.IR_LQ, evaluate.VI_LQ} <= set(video.streams):
        video = evaluate.add_synthetic_degradation(video)
      inputs = list(video.frames())[frame]
      fused_name = video.frame_names[frame]
      out = work / f'eval_{name}_T{WINDOWS[0]}'
      panels = [inputs[evaluate.IR_LQ], inputs[evaluate.VI_LQ],
                np.asarray(_pil_open(out / 'fusion' / video.name / fused_name)),
                np.asarray(_pil_open(out / 'ir' / video.name / fused_name)),
                np.asarray(_pil_open(out / 'vi' / video.name / fused_name)),
                inputs[evaluate.IR_GT], inputs[evaluate.VI_GT]]
      rows.append([_rgb(p)[::scale, ::scale] for p in panels])
  return logging_utils.image_strip(rows)


def _rgb(frame: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = frame[..., None]
  return np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame


def main(argv):
  del argv
  work, output, data = pathlib.Path(_WORK.value), pathlib.Path(_OUTPUT.value), pathlib.Path(_DATA.value)
  output.mkdir(parents=True, exist_ok=True)
  rows = _load_log(work / 'train' / 'metrics.jsonl')
  io.save_png(output / 'loss.png', loss_figure(rows))
  io.save_png(output / 'strip.png', picture_strip(work, data, _STRIP_FRAME.value, _STRIP_SCALE.value))
  parts = [f'# CPU study results (generated by scripts/cpu_study_report.py from {work})', '',
           f'Training: {rows[-1]["step"]} steps logged.', '', '## Loss terms (mean over each tenth of training)',
           '', loss_table(rows)]
  for name, _, caption in EVALS:
    by_window = {w: _load_eval(work, name, w) for w in WINDOWS}
    first = by_window[WINDOWS[0]]
    frames = first['mean'][evaluate.MODEL]['num_frames']
    parts += ['', f'## {caption}: {len(first["videos"])} video(s), {frames} frames', '',
              f'### Restoration (windows of T={WINDOWS[0]}): PSNR (dB) and SSIM against the clean frames', '',
              restoration_table(first), '', f'### Fusion metrics (windows of T={WINDOWS[0]}; references: clean)',
              '', fusion_table(first), '', '### Temporal consistency of the fused video (lower is steadier)', '',
              temporal_table(by_window), '',
              f'Restoration with windows of T=2: IR {by_window[2]["restoration"]["mean"]["PSNR_ir_restored"]:.2f} dB, '
              f'VI {by_window[2]["restoration"]["mean"]["PSNR_vi_restored"]:.2f} dB (mean PSNR).']
  io.write_text(output / 'results.md', '\n'.join(parts) + '\n')
  print(f'wrote {output}/loss.png, strip.png, results.md')


if __name__ == '__main__':
  app.run(main)
