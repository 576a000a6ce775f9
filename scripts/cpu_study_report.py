r"""Tables and figures of the CPU training study (docs/cpu_study.md) from the outputs of scripts/cpu_study.sh.

  python scripts/cpu_study_report.py --work=/tmp/vfusion_cpu_study --output=docs/cpu_study

Reads the training logs ``WORK/{stage1,train}/metrics.jsonl`` and every ``WORK/eval/<name>/metrics.json``
(eval.py; names ``<model>_<video>_<setting>_<windows>``) and writes to ``--output``: ``loss.png`` (loss terms
over both training stages), ``strip.png`` (held-out frames: inputs and fused frames of both settings),
``metrics.json`` (every evaluation's per-video and mean metrics, the study's record) and ``results.md`` (the
tables quoted by docs/cpu_study.md). Every number in them is read from those files.

  python scripts/cpu_study_report.py --work=WORK --output=docs/cpu_study --record=docs/cpu_study/metrics.json \
      --tables=seeds

is the report of a seeds-only run (``MAIN=0 scripts/cpu_study.sh``): the seeds' evaluations join the record
(metrics.json) and ``seeds.md`` gets every seed's table; the study model's outputs are left as they are.
"""

import csv
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
from vfusion_jax import windows  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax.configs import m3svd  # pylint: disable=g-import-not-at-top,wrong-import-position

VIDEOS = {'frames': 'held-out 0111_1716 (frame folders; degraded setting: the release\'s own degraded frames)',
          'mp4': 'held-out 1230_1202 (mp4, first frames; degraded setting: synthetic degradation, seed 0)'}
SETTINGS = {'degraded': 'degraded setting (degraded inputs)', 'normal': 'normal setting (clean inputs)'}
WINDOWS = {'w7': 'windows of 7 (official, no overlap)', 'w7o3': 'windows of 7 overlapping by 3, blend',
           'w4': 'windows of 4', 'w2': 'frame pairs (T = 2)'}
MODELS = {'final': 'study model (weights/m3svd_tiny)', 't4': 'stage 2 on clips of T = 4 (previous recipe)',
          'stage1': 'stage 1 only (T = 4, no clean clips)', 'untrained': 'untrained (initial parameters)'}
CLIP_MODELS = {'t4': 'trained on T = 4', 'final': 'trained on T = 7'}
GOAL_KEYS = {'degraded': ('MI', 'VIF', 'SSIM', 'Qabf'), 'normal': ('VIF', 'SSIM', 'Qabf')}
FUSION_KEYS = ('EN', 'MI', 'SF', 'SD', 'VIF', 'SSIM', 'Qabf')
TEMPORAL_KEYS = ('flowD_fb', 'tdiff', 'BiSWE_fb', 'MS2R_fb')
LOSS_KEYS = ('l_total', 'ir_loss_fid', 'vi_loss_fid', 'loss_fusion', 'l_cons_total')
STAGES = ('stage1', 'train')
STUDY_SEED = m3svd.get_config('cpu_study').seed  # the study model's seed
CLEAN_SHARE = m3svd.get_config('cpu_study').data.clean_fraction  # the recipe's share of clean stage-2 clips


def _load_log(path: pathlib.Path) -> list:
  """Loss rows of one training log; a step logged twice (a run resumed from an earlier checkpoint) keeps the
  later row, the one the final parameters descend from."""
  if not path.is_file():
    return []
  rows = {r['step']: r for r in logging_utils.read_metrics(path) if 'l_total' in r}
  return [rows[step] for step in sorted(rows)]


def training_rows(work: pathlib.Path) -> list:
  """Logged steps of both stages in step order; stage 1's rows after the stage-2 start are not part of it."""
  stage1, stage2 = (_load_log(work / stage / 'metrics.jsonl') for stage in STAGES)
  start = min((r['step'] for r in stage2), default=float('inf'))
  return [dict(r, stage=1) for r in stage1 if r['step'] < start] + [dict(r, stage=2) for r in stage2]


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
  if len(values) < width:
    return values
  return np.convolve(values, np.ones(width) / width, mode='valid')


def loss_figure(rows: list) -> np.ndarray:
  series = {k: _smooth(np.array([r[k] for r in rows], np.float64), 20) for k in LOSS_KEYS}
  every = rows[1]['step'] - rows[0]['step'] if len(rows) > 1 else 1
  return evaluate.line_plot(series, 'training loss, both stages (moving mean of 20 log points)',
                            f'log point (every {every} steps)', 'loss')


def loss_table(rows: list) -> str:
  lines = ['| stage | steps | learning rate | ' + ' | '.join(LOSS_KEYS) + ' |', '|---|---|---:|' +
           '---:|' * len(LOSS_KEYS)]
  for stage in (1, 2):
    part_rows = [r for r in rows if r['stage'] == stage]
    for span in np.array_split(np.arange(len(part_rows)), 5):
      if not len(span):
        continue
      part = [part_rows[i] for i in span]
      cells = [f'{np.mean([r[k] for r in part]):.4f}' for k in LOSS_KEYS]
      lines.append(f'| {stage} | {part[0]["step"]}-{part[-1]["step"]} | {part[-1]["learning_rate"]:.2e} | ' +
                   ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def load_evals(work: pathlib.Path, kept: dict | None = None) -> dict:
  """Every ``WORK/eval/<name>/metrics.json`` by name; ``kept`` (an earlier report's metrics.json) adds the
  evaluations that WORK lacks, so runs of separate sessions (the seeds) share one record."""
  evals = dict(kept or {})
  for path in sorted((work / 'eval').glob('*/metrics.json')):
    evals[path.parent.name] = json.loads(path.read_text())
  if not evals:
    raise FileNotFoundError(f'no {work}/eval/*/metrics.json: run scripts/cpu_study.sh first')
  return evals


def _get(evals: dict, model: str, video: str, setting: str, cut: str):
  return evals.get(f'{model}_{video}_{setting}_{cut}')


def goal_table(summary: dict, setting: str) -> str:
  methods = [m for m in summary['mean'] if m != evaluate.MODEL]
  lines = ['| method | ' + ' | '.join(FUSION_KEYS) + ' |', '|---|' + '---:|' * len(FUSION_KEYS)]
  for method in [evaluate.MODEL, *methods]:
    mean = summary['mean'][method]
    lines.append(f'| {method} | ' + ' | '.join(f'{mean[k]:.4f}' for k in FUSION_KEYS) + ' |')
  model, pixel_max = summary['mean'][evaluate.MODEL], summary['mean'][evaluate.PIXEL_MAX]
  verdicts = [f'{k} {"yes" if model[k] > pixel_max[k] else "**no**"} ({model[k] - pixel_max[k]:+.4f})'
              for k in GOAL_KEYS[setting]]
  lines += ['', 'Goal, VideoFusion above the stretched pixel max: ' + ', '.join(verdicts) + '.']
  return '\n'.join(lines)


def _number(value, digits: int) -> str:
  return '–' if value is None else f'{value:.{digits}f}'


def restoration_table(evals: dict, video: str) -> str:
  lines = ['| model | IR PSNR input | IR PSNR restored | IR PSNR classical | VI PSNR input | VI PSNR restored | '
           'VI PSNR classical | IR SSIM input / restored / classical | VI SSIM input / restored / classical |',
           '|---|' + '---:|' * 8]
  for model, label in MODELS.items():
    summary = _get(evals, model, video, 'degraded', 'w7')
    if summary is None or not summary['restoration']['mean']:
      continue
    r = summary['restoration']['mean']
    cells = []
    for key in ('ir', 'vi'):
      cells += [_number(r.get(f'PSNR_{key}_{kind}'), 2) for kind in ('input', 'restored', 'classical')]
    cells += [' / '.join(_number(r.get(f'SSIM_{key}_{kind}'), 4) for kind in ('input', 'restored', 'classical'))
              for key in ('ir', 'vi')]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def controls_table(evals: dict, video: str) -> str:
  keys = ('MI', 'VIF', 'SSIM', 'Qabf', 'flowD_fb')
  lines = ['| model | setting | ' + ' | '.join(keys) + ' |', '|---|---|' + '---:|' * len(keys)]
  for setting in SETTINGS:
    for model, label in MODELS.items():
      summary = _get(evals, model, video, setting, 'w7')
      if summary is None:
        continue
      mean = summary['mean'][evaluate.MODEL]
      lines.append(f'| {label} | {setting} | ' + ' | '.join(f'{mean[k]:.4f}' for k in keys) + ' |')
    reference = _get(evals, 'final', video, setting, 'w7')
    if reference is not None:
      mean = reference['mean'][evaluate.PIXEL_MAX]
      lines.append(f'| pixel_max (stretched) | {setting} | ' + ' | '.join(f'{mean[k]:.4f}' for k in keys) + ' |')
  return '\n'.join(lines)


def temporal_table(evals: dict, video: str, setting: str) -> str:
  lines = ['| fused by | ' + ' | '.join(TEMPORAL_KEYS) + ' |', '|---|' + '---:|' * len(TEMPORAL_KEYS)]
  for cut, label in WINDOWS.items():
    summary = _get(evals, 'final', video, setting, cut)
    if summary is not None:
      mean = summary['mean'][evaluate.MODEL]
      lines.append(f'| VideoFusion, {label} | ' + ' | '.join(f'{mean[k]:.4f}' for k in TEMPORAL_KEYS) + ' |')
  reference = _get(evals, 'final', video, setting, 'w7')
  if reference is not None:
    for method, mean in reference['mean'].items():
      if method != evaluate.MODEL:
        lines.append(f'| {method} (stretched) | ' + ' | '.join(f'{mean[k]:.4f}' for k in TEMPORAL_KEYS) + ' |')
  return '\n'.join(lines)


def window_position_intensity(work: pathlib.Path, name: str, window: int) -> np.ndarray | None:
  """Mean fused intensity (grey levels) at each position 0..window-1 of the fusion windows, over all frames and
  videos. A frame shared by two windows (a video's last window ends on its last frame) counts where the official
  rule takes it from: the later window."""
  path = work / 'eval' / name / 'metrics_per_frame.csv'
  if not path.exists():
    return None
  with path.open() as f:
    rows = [r for r in csv.DictReader(f) if r['method'] == evaluate.MODEL]
  by_position = [[] for _ in range(window)]
  for video in sorted({r['video'] for r in rows}):
    intensity = {int(r['frame']): float(r['intensity']) for r in rows if r['video'] == video}
    for span in windows.temporal_windows(len(intensity), window, rule='official'):
      for offset, weight in enumerate(span.weights):
        if weight:
          by_position[offset].append(intensity[span.start + offset])
  return np.array([np.mean(v) for v in by_position])


def clip_length_table(work: pathlib.Path, evals: dict, video: str, setting: str) -> str:
  """Temporal metrics of the T = 4 and T = 7 models under several window lengths, and the fused brightness at each
  position of a window of 7: a model fusing windows longer than its training clips sees positions it never saw."""
  keys = ('flowD_fb', 'tdiff', 'BiSWE_fb')
  lines = ['| model | fused by | ' + ' | '.join(keys) + ' | mean intensity at window positions 0-6 (w7) |',
           '|---|---|' + '---:|' * len(keys) + '---|']
  for model, label in CLIP_MODELS.items():
    for cut in ('w7', 'w4', 'w2'):
      summary = _get(evals, model, video, setting, cut)
      if summary is None:
        continue
      mean = summary['mean'][evaluate.MODEL]
      profile = window_position_intensity(work, f'{model}_{video}_{setting}_{cut}', 7) if cut == 'w7' \
          else None
      cells = [f'{mean[k]:.4f}' for k in keys]
      cells.append('' if profile is None else ' '.join(f'{v:.1f}' for v in profile) +
                   f' (swing {profile.max() - profile.min():.1f})')
      lines.append(f'| {label} | {WINDOWS[cut]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _seeds_named(evals: dict, prefix: str) -> list:
  """The seeds N of the ``<prefix><N>_*`` evaluations, sorted."""
  return sorted({int(name.split('_')[0][len(prefix):]) for name in evals if name.startswith(prefix)})


def _goal_columns(setting: str) -> list:
  """The goal measurements of a setting: its fusion metrics, then (degraded setting) the restored PSNRs."""
  return list(GOAL_KEYS[setting]) + (['PSNR IR', 'PSNR VI'] if setting == 'degraded' else [])


def seed_models(evals: dict) -> list:
  """(model name, seed) of every trained run of the recipe: the study model (config seed) and ``seed<N>`` runs."""
  return [('final', STUDY_SEED)] + [(f'seed{seed}', seed) for seed in _seeds_named(evals, 'seed')]


def _seed_row(evals: dict, model: str, video: str, setting: str) -> list:
  """The goal measurements of one run: fusion metrics (w7), restored PSNRs (degraded) and flowD_fb (w7, w2)."""
  w7, w2 = _get(evals, model, video, setting, 'w7'), _get(evals, model, video, setting, 'w2')
  if w7 is None:
    return []
  row = [w7['mean'][evaluate.MODEL][k] for k in GOAL_KEYS[setting]]
  if setting == 'degraded':
    row += [w7['restoration']['mean'][f'PSNR_{m}_restored'] for m in ('ir', 'vi')]
  row += [w7['mean'][evaluate.MODEL]['flowD_fb'], None if w2 is None else w2['mean'][evaluate.MODEL]['flowD_fb']]
  return row


def _goal_bars(evals: dict, video: str, setting: str) -> list | None:
  """The goals' bars, from the study model's evaluation (which computes the baselines): the stretched pixel max
  on the goal metrics, then (degraded setting) the input PSNRs."""
  reference = _get(evals, 'final', video, setting, 'w7')
  if reference is None:
    return None
  bars = [reference['mean'][evaluate.PIXEL_MAX][k] for k in GOAL_KEYS[setting]]
  if setting == 'degraded':
    bars += [reference['restoration']['mean'][f'PSNR_{m}_input'] for m in ('ir', 'vi')]
  return bars


def _bar_row(bars: list, setting: str) -> str:
  return ('| goal bar: stretched pixel max' + (' / input PSNR' if setting == 'degraded' else '') + ' | '
          + ' | '.join(f'{b:.4f}' for b in bars))


def seed_table(evals: dict, video: str, setting: str) -> str:
  """Every seed's goal measurements, their mean and sample standard deviation, and how many seeds meet each goal."""
  keys = _goal_columns(setting)
  keys += ['flowD_fb w7', 'flowD_fb w2']
  lines = ['| run | ' + ' | '.join(keys) + ' |', '|---|' + '---:|' * len(keys)]
  rows = {}
  for model, seed in seed_models(evals):
    row = _seed_row(evals, model, video, setting)
    if row:
      rows[seed] = row
      lines.append(f'| seed {seed} | ' + ' | '.join(_number(v, 4) for v in row) + ' |')
  bars = _goal_bars(evals, video, setting)
  if len(rows) < 2 or bars is None:
    return '\n'.join(lines)
  columns = [[row[i] for row in rows.values() if row[i] is not None] for i in range(len(keys))]
  lines.append(f'| mean ± sd ({len(rows)} seeds) | ' + ' | '.join(
      f'{np.mean(c):.4f} ± {np.std(c, ddof=1):.4f}' if len(c) > 1 else _number(c[0] if c else None, 4)
      for c in columns) + ' |')
  lines.append(_bar_row(bars, setting) + ' | | |')
  met = [f'{sum(v > bar for v in c)}/{len(c)}' for c, bar in zip(columns, bars)]
  pairs = [(row[-2], row[-1]) for row in rows.values() if row[-1] is not None]
  met.append(f'{sum(w7 <= w2 for w7, w2 in pairs)}/{len(pairs)} (w7 ≤ w2)')
  lines.append('| seeds meeting the goal | ' + ' | '.join(met) + ' | |')
  return '\n'.join(lines)


def clean_arm_seeds(evals: dict) -> list:
  """Seeds whose clean-share arm (``clean<N>_*`` evaluations: stage 2 again, every clip clean) was run."""
  return _seeds_named(evals, 'clean')


def clean_share_table(evals: dict, seed: int, video: str, setting: str) -> str:
  """One seed's stage 2 with the recipe's clean share against the same stage 1 continued on clean clips only
  (windows of 7), beside the goals' bars: what the mix of clips buys in each setting."""
  keys = _goal_columns(setting) + ['flowD_fb w7']
  lines = ['| stage 2 of seed ' + str(seed) + ' | ' + ' | '.join(keys) + ' |', '|---|' + '---:|' * len(keys)]
  recipe = 'final' if seed == STUDY_SEED else f'seed{seed}'
  for model, label in ((recipe, f'{CLEAN_SHARE:.0%} clean clips (the recipe)'),
                       (f'clean{seed}', 'every clip clean')):
    row = _seed_row(evals, model, video, setting)
    if row:
      lines.append(f'| {label} | ' + ' | '.join(_number(v, 4) for v in row[:-1]) + ' |')
  bars = _goal_bars(evals, video, setting)
  if bars is not None:
    lines.append(_bar_row(bars, setting) + ' | |')
  return '\n'.join(lines)


def seed_section(evals: dict) -> str:
  """The seed tables of every held-out video and setting, under one heading, and the clean-share arms."""
  parts = ['## Seeds: the same recipe, other values of config.seed (windows of 7 unless named)']
  for video, caption in VIDEOS.items():
    for setting, setting_caption in SETTINGS.items():
      parts += ['', f'### {caption}, {setting_caption}', '', seed_table(evals, video, setting)]
  for seed in clean_arm_seeds(evals):
    parts += ['', f'## Clean share of stage 2, seed {seed}: the recipe\'s {CLEAN_SHARE:.0%} of clean clips vs every '
              'clip clean (same stage 1; windows of 7)']
    for video, caption in VIDEOS.items():
      for setting, setting_caption in SETTINGS.items():
        parts += ['', f'### {caption}, {setting_caption}', '', clean_share_table(evals, seed, video, setting)]
  return '\n'.join(parts)


def record(evals: dict) -> dict:
  """What docs/cpu_study/metrics.json keeps of every evaluation: its set-up, per-video and mean metrics."""
  keep = ('setting', 'references', 'data', 'window', 'videos', 'mean', 'per_video', 'restoration', 'notes')
  out = {}
  for name, summary in evals.items():
    entry = {k: summary[k] for k in keep if k in summary}
    entry['checkpoint'] = pathlib.Path(summary['checkpoint']).name
    out[name] = entry
  return out


def _pil_open(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image.open(path).convert('RGB')


def picture_strip(work: pathlib.Path, data: pathlib.Path, frame: int, scale: int) -> np.ndarray:
  """Held-out 0111_1716, one row per setting: IR input | visible input | fused (study model) | fused (untrained)."""
  rows = []
  for setting in SETTINGS:
    final = work / 'eval' / f'final_frames_{setting}_w7'
    untrained = work / 'eval' / f'untrained_frames_{setting}_w7'
    summary = json.loads((final / 'metrics.json').read_text())
    inputs = evaluate.INPUT_STREAMS[setting]
    for video in evaluate.open_videos(data / 'm3svd_sample', videos=summary['videos'], max_frames=frame + 1):
      frames = list(video.frames())[frame]
      name = video.frame_names[frame]
      panels = [frames[inputs[0]], frames[inputs[1]], np.asarray(_pil_open(final / 'fusion' / video.name / name))]
      if (untrained / 'fusion' / video.name / name).is_file():
        panels.append(np.asarray(_pil_open(untrained / 'fusion' / video.name / name)))
      rows.append([evaluate.as_rgb(p)[::scale, ::scale] for p in panels])
  return logging_utils.image_strip(rows)


def _define_flags():
  """Defined when run as a script only, so tests can import the tables without clashing with other --output."""
  flags.DEFINE_string('work', None, 'the study folder of scripts/cpu_study.sh', required=True)
  flags.DEFINE_string('output', None, 'where loss.png, strip.png, metrics.json, results.md go', required=True)
  flags.DEFINE_string('data', '../shared/data', 'the shared data folder (for the input frames)')
  flags.DEFINE_integer('strip_frame', 10, 'frame index shown in the picture strip')
  flags.DEFINE_integer('strip_scale', 2, 'downscale factor of the strip panels')
  flags.DEFINE_string('record', None, 'an earlier report\'s metrics.json: its evaluations that --work lacks are '
                      'kept (seeds trained in other sessions)')
  flags.DEFINE_enum('tables', 'all', ['all', 'seeds'], 'all: every output; seeds: metrics.json (merged with '
                    '--record) and seeds.md only, for a --work that holds extra seeds and not the study model')


def main(argv):
  del argv
  args = flags.FLAGS
  work, output, data = pathlib.Path(args.work), pathlib.Path(args.output), pathlib.Path(args.data)
  output.mkdir(parents=True, exist_ok=True)
  kept = json.loads(pathlib.Path(args.record).read_text()) if args.record else None
  evals = load_evals(work, kept)
  io.write_text(output / 'metrics.json', json.dumps(record(evals), indent=1, sort_keys=True))
  if args.tables == 'seeds':
    header = ('# CPU study: seeds and clean-share arms (generated by scripts/cpu_study_report.py --tables=seeds from '
              'their evaluations in metrics.json)')
    io.write_text(output / 'seeds.md', header + '\n\n' + seed_section(evals) + '\n')
    print(f'wrote {output}/metrics.json, seeds.md')
    return
  rows = training_rows(work)
  io.save_png(output / 'loss.png', loss_figure(rows))
  io.save_png(output / 'strip.png', picture_strip(work, data, args.strip_frame, args.strip_scale))
  parts = [f'# CPU study results (generated by scripts/cpu_study_report.py from {work})', '',
           f'Training: {rows[-1]["step"]} steps logged ({sum(r["stage"] == 1 for r in rows)} log points in '
           f'stage 1, {sum(r["stage"] == 2 for r in rows)} in stage 2).', '',
           '## Loss terms (mean over each fifth of a stage)', '', loss_table(rows)]
  for video, caption in VIDEOS.items():
    parts += ['', f'## {caption}']
    for setting, setting_caption in SETTINGS.items():
      summary = _get(evals, 'final', video, setting, 'w7')
      if summary is None:
        continue
      frames = summary['mean'][evaluate.MODEL]['num_frames']
      parts += ['', f'### Fusion, {setting_caption}, windows of 7, {frames} frames (references: clean)', '',
                goal_table(summary, setting), '', f'### Temporal consistency, {setting_caption} (lower is steadier)',
                '', temporal_table(evals, video, setting)]
    parts += ['', '### Restoration (degraded setting, windows of 7): PSNR (dB) and SSIM against the clean frames',
              '', restoration_table(evals, video)]
    if any(_get(evals, 't4', video, s, 'w7') for s in SETTINGS):
      for setting, setting_caption in SETTINGS.items():
        parts += ['', f'### Clip length and windows, {setting_caption}', '',
                  clip_length_table(work, evals, video, setting)]
    if any(_get(evals, m, video, s, 'w7') for m in ('stage1', 'untrained') for s in SETTINGS):
      parts += ['', '### Controls (windows of 7)', '', controls_table(evals, video)]
  if len(seed_models(evals)) > 1:
    parts += ['', seed_section(evals)]
  io.write_text(output / 'results.md', '\n'.join(parts) + '\n')
  print(f'wrote {output}/loss.png, strip.png, metrics.json, results.md')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
