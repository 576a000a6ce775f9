"""Metric writing, console progress and image grids for training and evaluation.

`clu.metric_writers` imports TensorFlow (STACK.md section A.2), so this module provides a small
clu-compatible `MetricWriter` instead: absl log lines + a JSON-lines file + TensorBoard event files
through tensorboardX (pure Python; its event file writer already runs on a background thread). The workdir
may be a bucket (``gs://``): the growing files live in an ``io.SyncedDir`` and are uploaded whole.
"""

import json
import math
import os
import secrets
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO, Union

from absl import logging
import numpy as np

from vfusion_jax import io
from vfusion_jax import metrics

PathLike = io.PathLike

METRICS_FILENAME = 'metrics.jsonl'
HPARAMS_FILENAME = 'hparams.json'
# How often (seconds) the tensorboardX background thread flushes event files to disk.
TENSORBOARD_FLUSH_SECS = 30
# For a workdir in a bucket: the least seconds between two uploads of the growing log files by write_scalars
# (each upload rewrites whole objects); flush() and close() always upload.
REMOTE_SYNC_SECS = 30
# Pending tensorboardX events before `add_*` blocks until the background thread drains them.
TENSORBOARD_MAX_QUEUE = 100
# Significant digits of scalars in absl log lines.
LOG_DIGITS = 6

# ProgressLine: rate shown ('interval': since the previous call; 'mean': since the first call).
PROGRESS_RATES = ('interval', 'mean')
# Seconds between frame progress lines (infer, eval) when stderr is not a terminal.
FRAME_PROGRESS_INTERVAL_S = 10.0

SEPARATOR_PX = 2
SEPARATOR_VALUE = 255  # White lines between panels.


def _to_python_scalar(name: str, value: Any) -> Union[int, float]:
  """Converts a Python/numpy/jax scalar (or size-1 array) to int or float for JSON and TensorBoard."""
  if isinstance(value, (bool, np.bool_)):
    return int(value)
  if isinstance(value, int):
    return value
  if isinstance(value, float):
    return value
  array = np.asarray(value)  # Also pulls jax arrays to host.
  if array.size != 1:
    raise ValueError(f'Scalar {name!r} must have exactly one element, got shape {array.shape}.')
  item = array.reshape(()).item()
  if isinstance(item, bool):
    return int(item)
  if isinstance(item, (int, float)):
    return item
  raise ValueError(f'Scalar {name!r} has non-numeric dtype {array.dtype}.')


def _to_uint8_image(name: str, image: Any) -> np.ndarray:
  """Returns images as uint8 (N, H, W, 3) from uint8 or float-in-[0, 1] (H, W[, C]) or (N, H, W, C)."""
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim == 3:
    array = array[None]
  if array.ndim != 4 or array.shape[-1] not in (1, 3):
    raise ValueError(f'Image {name!r} must be (H,W,C) or (N,H,W,C) with C in (1, 3), got {array.shape}.')
  if array.dtype != np.uint8:
    if not np.issubdtype(array.dtype, np.floating):
      raise ValueError(f'Image {name!r} must be uint8 or float in [0, 1], got dtype {array.dtype}.')
    array = metrics.to_uint8(array)
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return array


def _hparam_value(value: Any) -> Union[bool, int, float, str]:
  """Maps a hyper-parameter to a type the TensorBoard hparams plugin knows (others become strings)."""
  if isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (np.generic, np.ndarray)) and np.asarray(value).size == 1:
    return np.asarray(value).item()
  return str(value)


def _format_scalars(scalars: Mapping[str, Union[int, float]]) -> str:
  return ', '.join(f'{k}={v:.{LOG_DIGITS}g}' if isinstance(v, float) else f'{k}={v}'
                   for k, v in scalars.items())


class MetricWriter:
  """clu-style metric writer: absl log + `metrics.jsonl` + optional TensorBoard event files.

  Every `write_scalars` call appends one JSON object `{"step": s, name: value, ...}` to
  `<workdir>/metrics.jsonl` (a resumed run keeps the old lines; a step may repeat after a resume). Images and
  text go to TensorBoard only; hyper-parameters also go to `hparams.json`. With `enabled=False` (non-zero
  processes in multi-host runs) every method is a no-op and nothing is created.

  A local workdir gets its files directly (the JSONL file is flushed, not fsynced, after each write). For a
  workdir in a bucket, which has no append, the files grow in a local `io.SyncedDir` that is uploaded whole:
  by `write_scalars` at most every `sync_secs`, and always by `flush()` and `close()`. Each upload replaces
  the objects atomically, so after a crash the bucket holds complete lines up to the last upload.
  """

  def __init__(self, workdir: PathLike, *, enabled: bool = True, tensorboard: bool = True,
               sync_secs: float = REMOTE_SYNC_SECS):
    self._enabled = enabled
    self._workdir = io.path(workdir)
    self._sync_secs = sync_secs
    self._lock = threading.Lock()
    self._jsonl = None
    self._tb = None
    self._synced = None
    if not enabled:
      return
    self._synced = io.SyncedDir(self._workdir)
    self._jsonl = self._open_log(METRICS_FILENAME)
    self._extra_logs = set()
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      # A random suffix: two runs started in the same second (a quick resume) must not share one event file.
      self._tb = tensorboardX.SummaryWriter(
          logdir=str(self._synced.local), flush_secs=TENSORBOARD_FLUSH_SECS, max_queue=TENSORBOARD_MAX_QUEUE,
          filename_suffix=f'.{secrets.token_hex(4)}')

  @property
  def enabled(self) -> bool:
    return self._enabled

  @property
  def workdir(self) -> io.Path:
    return self._workdir

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    """Logs scalars (Python, numpy or jax scalars / size-1 arrays) for `step`."""
    if not self._enabled or not scalars:
      return
    step = int(step)
    values = {str(k): _to_python_scalar(str(k), v) for k, v in scalars.items()}
    logging.info('[%d] %s', step, _format_scalars(values))
    record = {'step': step, **values}
    with self._lock:
      self._check_open()
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
      if self._tb is not None:
        for name, value in values.items():
          self._tb.add_scalar(name, value, global_step=step)
      if self._synced.remote and time.monotonic() - self._synced.last_push >= self._sync_secs:
        self._sync()

  def _open_log(self, filename: str):
    """Opens a JSON-lines file for appending, continuing the workdir's copy (a resumed run keeps its lines)."""
    self._synced.pull(filename)
    path = self._synced.local / filename
    needs_newline = _ends_without_newline(path)
    log = open(path, 'a', encoding='utf-8')
    if needs_newline:  # A crash cut the last line short: keep it on its own line.
      log.write('\n')
    return log

  def append_jsonl(self, filename: str, record: Mapping[str, Any]):
    """Appends one JSON object to another JSON-lines file of the workdir (kept and uploaded like metrics.jsonl)."""
    if not self._enabled:
      return
    with self._lock:
      self._check_open()
      if filename not in self._extra_logs:
        self._open_log(filename).close()
        self._extra_logs.add(filename)
      with open(self._synced.local / filename, 'a', encoding='utf-8') as f:
        f.write(json.dumps(dict(record)) + '\n')

  def write_images(self, step: int, images: Mapping[str, Any]):
    """Logs images: uint8 (or float in [0, 1]) arrays of shape (H,W,C) or (N,H,W,C), C in (1, 3).

    TensorBoard files from tensorboardX hold one image per tag and step, so a batch of N > 1 images
    is written under tags `name/0` ... `name/N-1`.
    """
    if not self._enabled or not images:
      return
    batches = {str(k): _to_uint8_image(str(k), v) for k, v in images.items()}
    logging.info('[%d] images: %s', int(step),
                 ', '.join(f'{k}{tuple(v.shape)}' for k, v in batches.items()))
    with self._lock:
      self._check_open()
      if self._tb is None:
        return
      for name, batch in batches.items():
        for i, image in enumerate(batch):
          tag = name if len(batch) == 1 else f'{name}/{i}'
          self._tb.add_image(tag, image, global_step=int(step), dataformats='HWC')

  def write_texts(self, step: int, texts: Mapping[str, str]):
    """Logs text summaries (rendered as markdown by TensorBoard)."""
    if not self._enabled or not texts:
      return
    for name, text in texts.items():
      logging.info('[%d] %s: %s', int(step), name, text)
    with self._lock:
      self._check_open()
      if self._tb is None:
        return
      for name, text in texts.items():
        self._tb.add_text(str(name), str(text), global_step=int(step))

  def write_hparams(self, hparams: Mapping[str, Any]):
    """Logs hyper-parameters to the log, `hparams.json` and TensorBoard's hparams plugin.

    Values other than bool/int/float/str (tuples, None, ...) are stored as their string form.
    """
    if not self._enabled or not hparams:
      return
    values = {str(k): _hparam_value(v) for k, v in hparams.items()}
    logging.info('Hyper-parameters: %s', json.dumps(values, sort_keys=True))
    with self._lock:
      self._check_open()
      io.write_text(self._workdir / HPARAMS_FILENAME, json.dumps(values, indent=2, sort_keys=True) + '\n')
      if self._tb is None:
        return
      from tensorboardX import summary  # pylint: disable=g-import-not-at-top
      experiment, session_start, session_end = summary.hparams(values, {})
      file_writer = self._tb._get_file_writer()  # pylint: disable=protected-access
      for proto in (experiment, session_start, session_end):
        file_writer.add_summary(proto)

  def _sync(self):
    """Writes pending TensorBoard events to the local files and uploads what changed (bucket workdirs)."""
    if self._tb is not None:
      self._tb.flush()
    self._synced.push()

  def flush(self):
    """Pushes everything written so far to the workdir (blocks until TensorBoard's queue is drained)."""
    if not self._enabled:
      return
    with self._lock:
      if self._jsonl is not None:
        self._jsonl.flush()
      if self._tb is not None:
        self._sync()

  def close(self):
    """Flushes and closes all files; later writes raise. Safe to call twice."""
    if not self._enabled:
      return
    with self._lock:
      if self._jsonl is not None:
        self._jsonl.close()
        self._jsonl = None
      if self._tb is not None:
        self._tb.close()
        self._tb = None
      if self._synced is not None:
        self._synced.close()
        self._synced = None

  def _check_open(self):
    if self._jsonl is None:
      raise RuntimeError(f'MetricWriter for {self._workdir} is closed.')

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info):
    self.close()


def _ends_without_newline(path: io.PathLike) -> bool:
  """True if the local file `path` exists, is non-empty and its last byte is not a newline."""
  try:
    with open(path, 'rb') as f:
      f.seek(0, os.SEEK_END)
      if f.tell() == 0:
        return False
      f.seek(-1, os.SEEK_END)
      return f.read(1) != b'\n'
  except FileNotFoundError:
    return False


def read_metrics(workdir_or_file: PathLike) -> list[dict[str, Any]]:
  """Reads `metrics.jsonl` (given its workdir or the file itself, local or ``gs://``) into a list of dicts.

  Lines that do not parse (a line cut short by a crash) are skipped with a warning.
  """
  path = io.path(workdir_or_file)
  if path.is_dir():
    path = path / METRICS_FILENAME
  if not path.is_file():
    raise FileNotFoundError(f'No metrics file at {path}.')
  records = []
  with path.open('r') as f:
    for line_number, line in enumerate(f, start=1):
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning('Skipping malformed line %d of %s.', line_number, path)
  return records


def format_duration(seconds: float) -> str:
  """Formats seconds as h:mm:ss (hours unbounded); '?' for non-finite input."""
  if not math.isfinite(seconds):
    return '?'
  total = max(0, int(round(seconds)))
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}'


class ProgressLine:
  """One console line of progress, for training steps (train) and fused frames (infer, eval).

  Each call reports ``done`` of ``total`` units: percentage, loss (if given), rate, examples/s (with
  ``batch_size``), elapsed time and ETA. The rate shown is either the rate since the previous call
  (``rate='interval'``: training, which calls once per log step; the first interval, which usually includes
  compilation, runs from construction) or the steady rate since the first call (``rate='mean'``: windowed
  fusion, whose frames finish a window at a time). The ETA always uses the mean rate since the first call, so
  compilation and single slow intervals do not dominate it; ``mean_rate`` gives that rate to callers.

  Lines go to ``print_fn`` if given, else to ``stream`` (default stdout): one line per call, at most one per
  ``interval_s`` seconds (the line of the last unit always); with ``in_place`` on a terminal the line is
  redrawn in place on every call instead.

  Example:
    progress = ProgressLine(100_000, batch_size=8, start_step=restored_step)
    progress(step, {'loss': loss})  # -> 'step   1200/100000 (  1.2%) | loss 0.1234 | 3.10 steps/s | ...'
    progress = ProgressLine.frames(num_frames)  # infer and eval
    progress(index + 1)  # -> 'frame  30/100 ( 30.0%) | 2.00 frames/s | elapsed 0:00:20 | ETA 0:00:35'
  """

  def __init__(self, total: int, *, unit: str = 'step', rate: str = 'interval', batch_size: Optional[int] = None,
               start_step: int = 0, loss_key: str = 'loss', print_fn: Optional[Callable[[str], None]] = None,
               stream: Optional[TextIO] = None, in_place: bool = False, interval_s: float = 0.0,
               enabled: bool = True, clock: Callable[[], float] = time.monotonic):
    if rate not in PROGRESS_RATES:
      raise ValueError(f'rate must be one of {PROGRESS_RATES}; got {rate!r}')
    self._total = int(total)
    self._unit = unit
    self._rate = rate
    self._batch_size = batch_size
    self._loss_key = loss_key
    self._print = print_fn
    self._stream = stream or sys.stdout
    self._redraw = in_place and getattr(self._stream, 'isatty', lambda: False)()
    self._interval_s = interval_s
    self._enabled = enabled
    self._clock = clock
    self._start_time = clock()
    self._last_done = int(start_step)
    self._last_time = self._start_time
    self._last_print = -math.inf
    self._first_done = None
    self._first_time = None
    self.mean_rate = float('nan')  # Units per second since the first call (since construction at the first).
    self.last_rates: dict = {}  # {unit}s_per_sec, examples_per_sec, eta_seconds of the latest call

  @classmethod
  def frames(cls, total: int, *, enabled: bool = True, stream: Optional[TextIO] = None,
             clock: Callable[[], float] = time.monotonic) -> 'ProgressLine':
    """Progress of fused frames (infer, eval) on ``stream`` (default stderr).

    Shows the steady rate; redrawn in place on a terminal, else a line every ``FRAME_PROGRESS_INTERVAL_S``.
    """
    return cls(total, unit='frame', rate='mean', stream=stream or sys.stderr, in_place=True,
               interval_s=FRAME_PROGRESS_INTERVAL_S, enabled=enabled, clock=clock)

  def _loss(self, scalars: Mapping[str, Any]) -> Optional[float]:
    """The `loss_key` entry, else the first key ending in the loss key (e.g. 'train/loss')."""
    if self._loss_key in scalars:
      return float(np.asarray(scalars[self._loss_key]))
    for key, value in scalars.items():
      if str(key).endswith(self._loss_key):
        return float(np.asarray(value))
    return None

  def __call__(self, done: int, scalars: Optional[Mapping[str, Any]] = None) -> str:
    """Records ``done`` finished units (a step number or a frame count); returns (and maybe prints) the line."""
    done = int(done)
    now = self._clock()
    elapsed = now - self._last_time
    interval_rate = (done - self._last_done) / elapsed if elapsed > 0 else float('nan')
    if self._first_time is None:
      self._first_done, self._first_time = done, now
      self.mean_rate = interval_rate
    else:
      span = now - self._first_time
      self.mean_rate = (done - self._first_done) / span if span > 0 else float('nan')
    eta = (self._total - done) / self.mean_rate if self.mean_rate > 0 else float('nan')
    self._last_done, self._last_time = done, now
    rate = interval_rate if self._rate == 'interval' else self.mean_rate
    self.last_rates = {f'{self._unit}s_per_sec': rate, 'eta_seconds': eta}
    if self._batch_size:
      self.last_rates['examples_per_sec'] = rate * self._batch_size

    width = len(str(self._total))
    parts = [f'{self._unit} {done:>{width}d}/{self._total} ({100.0 * done / max(self._total, 1):5.1f}%)']
    loss = self._loss(scalars or {})
    if loss is not None:
      parts.append(f'loss {loss:.4g}')
    parts.append(f'{rate:.2f} {self._unit}s/s' if math.isfinite(rate) else f'? {self._unit}s/s')
    if self._batch_size:
      parts.append(f'{rate * self._batch_size:.1f} ex/s')
    parts.append(f'elapsed {format_duration(now - self._start_time)}')
    parts.append(f'ETA {format_duration(eta)}')
    line = ' | '.join(parts)
    if self._enabled:
      self._write(line, now, last=done >= self._total)
    return line

  def _write(self, line: str, now: float, last: bool) -> None:
    """Redraws ``line`` in place, or writes it as a new line when ``interval_s`` has passed (or on the last)."""
    if self._redraw and self._print is None:
      self._stream.write('\r' + line + ('\n' if last else ''))
      self._stream.flush()
      return
    if not (last or now - self._last_print >= self._interval_s):
      return
    self._last_print = now
    if self._print is not None:
      self._print(line)
    else:
      self._stream.write(line + '\n')
      self._stream.flush()


def _panel_to_uint8(panel: Any) -> np.ndarray:
  """Float in [0, 1] (or uint8) (H,W), (H,W,1) or (H,W,3) -> uint8 (H,W,3)."""
  array = np.asarray(panel)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3):
    raise ValueError(f'Panels must be (H,W), (H,W,1) or (H,W,3), got {array.shape}.')
  array = metrics.to_uint8(array)
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return array


def image_strip(rows: Sequence[Sequence[Any]], *, separator: int = SEPARATOR_PX,
                separator_value: int = SEPARATOR_VALUE) -> np.ndarray:
  """Tiles panels into one uint8 (H', W', 3) image for visual comparison.

  Args:
    rows: rows of panels (e.g. [[ir, visible, fused, restored], ...]); each panel is float in [0, 1]
      (or uint8) of shape (H,W), (H,W,1) or (H,W,3); all panels must share (H, W). Grey panels are
      repeated to 3 channels. Shorter rows are padded with the separator colour.
    separator: width in pixels of the lines between panels (no outer border).
    separator_value: grey level of the separator lines.

  Returns:
    uint8 array of shape (R*H + (R-1)*sep, C*W + (C-1)*sep, 3), C the longest row length.
  """
  panels = [[_panel_to_uint8(p) for p in row] for row in rows]
  if not panels or not any(panels):
    raise ValueError('image_strip needs at least one panel.')
  shapes = {p.shape for row in panels for p in row}
  if len(shapes) != 1:
    raise ValueError(f'All panels must have the same shape, got {sorted(shapes)}.')
  height, width, _ = shapes.pop()
  num_rows, num_cols = len(panels), max(len(row) for row in panels)
  out = np.full((num_rows * height + (num_rows - 1) * separator,
                 num_cols * width + (num_cols - 1) * separator, 3), separator_value, np.uint8)
  for r, row in enumerate(panels):
    for c, panel in enumerate(row):
      y, x = r * (height + separator), c * (width + separator)
      out[y:y + height, x:x + width] = panel
  return out
