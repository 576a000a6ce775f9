"""End-to-end tests of the training system: train.py in subprocesses, checkpoints, resume, signals, export.

Every run trains configs/demo.py shrunk to 32x32 synthetic clips (T=3, B=2). Compiling its train step costs
about a CPU-minute on this 2-core machine and loading it from a persistent compilation cache about a third of
that, so the runs share a cache of their own (``$VFUSION_JAX_CACHE_DIR``; they also compile with
``JAX_DISABLE_MOST_OPTIMIZATIONS``): the straight run fills it, and the other runs start together as soon as it
has. Only the straight run writes previews, so only it compiles the forward pass.

Runs (``training_runs``):
  straight  6 steps, checkpoints at 3 and 6, previews: the reference and the source of the logging checks.
  resumed   the same 6 steps in a gs:// workdir (fake-gcs-server on 127.0.0.1) with 2 grain worker processes,
            SIGKILLed while sleeping after its step-3 checkpoint, then the same command again.
  sigterm   a long run sent SIGTERM once training steps are going.
  nan       the straight run with the inputs of step 5 replaced by NaN.
"""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

import conftest
import train_with_hooks
from configs import demo
from vfusion_jax import checkpoint
from vfusion_jax import export
from vfusion_jax import io
from vfusion_jax import logging_utils
from vfusion_jax import losses
from vfusion_jax import runtime
from vfusion_jax import train_lib
from vfusion_jax.data import video_io

event_accumulator = pytest.importorskip(
    'tensorboard.backend.event_processing.event_accumulator',
    reason='the tensorboard package (event reader) is not installed')

REPO = pathlib.Path(__file__).resolve().parents[1]
HOOKED_TRAIN = str(REPO / 'tests' / 'train_with_hooks.py')  # train.py plus the digest and hang hooks
HOOK_FLAGS = ('--batch_digests', '--hang_after_checkpoint_step=')

TOTAL_STEPS = 6
CHECKPOINT_EVERY = 3
BATCH, FRAMES, SIZE = 2, 3, 32
PREVIEW_FRAMES = 6
NAN_STEP = 5
LONG_RUN_STEPS = 1000  # the SIGTERM run: never finishes by itself
CLIPS_PER_CHUNK = 2
WORKERS = 2  # grain worker processes of the resumed run (the others read in the main process)
# Generous limits: a cold compile of the tiny train step takes minutes on a loaded 2-core machine.
COLD_START_TIMEOUT_S = 900
RUN_TIMEOUT_S = 600
CLI_TIMEOUT_S = 300
POLL_S = 0.5

# configs/demo.py shrunk to seconds per step; every run trains exactly this (the hooks below do not enter the
# compiled step, so all runs share one executable).
TINY_RUN = (
    '--config=configs/demo.py',
    '--config.data.num_videos=4',
    '--config.data.frames_per_video=6',
    '--config.data.frames_per_example=6',
    f'--config.data.height={SIZE}',
    f'--config.data.width={SIZE}',
    f'--config.batch_size={BATCH}',
    f'--config.num_frames={FRAMES}',
    f'--config.crop_size={SIZE}',
    f'--config.total_steps={TOTAL_STEPS}',
    f'--config.checkpoint_every_steps={CHECKPOINT_EVERY}',
    '--config.log_every_steps=1',
    '--config.preview_every_steps=0',
    '--config.preview_video_frames=0',
    # Two clips per decoded chunk: the stream is blocks of 2 batches, so the step-3 checkpoint of the resumed
    # run saves the input position inside a block.
    f'--config.data.clips_per_chunk={CLIPS_PER_CHUNK}',
)
DIGESTS = ('--batch_digests',)
PREVIEWS = (f'--config.preview_every_steps={CHECKPOINT_EVERY}', f'--config.preview_video_frames={PREVIEW_FRAMES}',
            f'--config.preview_window={FRAMES}')

# Runs train.py with the batch of step NAN_STEP (index NAN_STEP - 1 of the stream) poisoned with NaN inputs:
# corrupt data, the honest way a loss turns NaN. The compiled step is the same as the other runs'.
NAN_DRIVER = textwrap.dedent("""
    import runpy
    import sys

    import numpy as np

    from vfusion_jax.data import pipeline

    poisoned_index = int(sys.argv.pop(1))
    batches_per_element = int(sys.argv.pop(1))
    train_dataset = pipeline.train_dataset


    def poison(index, element):  # an element is a block of batches_per_element batches
      block, batch = divmod(poisoned_index, batches_per_element)
      if index == block:
        vi_lq = element['vi_lq'].copy()
        vi_lq[batch] = np.nan
        element = dict(element, vi_lq=vi_lq)
      return element


    pipeline.train_dataset = lambda *args, **kwargs: train_dataset(*args, **kwargs).map_with_index(poison)
    sys.argv[0] = 'train.py'
    runpy.run_path('train.py', run_name='__main__')
""")


class _Process:
  """A subprocess in the repository root whose stdout and stderr go to ``<name>.log``."""

  def __init__(self, root: pathlib.Path, name: str, argv, env: dict):
    self.name = name
    self.log_path = root / f'{name}.log'
    self.env = env
    self.start(argv)

  def start(self, argv):
    with open(self.log_path, 'ab') as log:
      self.proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT)

  def log(self) -> str:
    return self.log_path.read_text(errors='replace')

  def failure(self, what: str) -> str:
    return f'{self.name}: {what}; rc={self.proc.poll()}; log tail:\n{self.log()[-4000:]}'

  def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
    try:
      return self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(self.failure(f'still running after {timeout} s'))

  def wait_until(self, condition, what: str, timeout: float = RUN_TIMEOUT_S):
    """Polls ``condition()`` until true; fails if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
      if self.proc.poll() is not None:
        pytest.fail(self.failure(f'exited before {what}'))
      if time.monotonic() > deadline:
        self.kill()
        pytest.fail(self.failure(f'no {what} after {timeout} s'))
      time.sleep(POLL_S)

  def kill(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


class _TrainRun(_Process):
  """``train.py --workdir=<root>/<name> ARGS`` (or ``python -c CODE ...`` with the same flags)."""

  def __init__(self, root: pathlib.Path, name: str, args, env: dict, code: str | None = None,
               code_args=(), workdir: str | None = None):
    self.workdir = io.path(workdir or root / name)
    self.args = (f'--workdir={self.workdir}', *args)
    program = HOOKED_TRAIN if any(a.startswith(HOOK_FLAGS) for a in args) else 'train.py'
    argv = ['-c', code, *code_args, *self.args] if code else [program, *self.args]
    super().__init__(root, name, argv, env)

  def restart(self):
    """The same command again but without a hang, in the same workdir (train.py resumes by itself); output
    appends to the log."""
    assert self.proc.poll() is not None, f'{self.name} is still running'
    self.start([HOOKED_TRAIN, *(a for a in self.args if not a.startswith('--hang_after_checkpoint_step='))])

  def metrics(self) -> list[dict]:
    path = self.workdir / logging_utils.METRICS_FILENAME
    return logging_utils.read_metrics(path) if path.exists() else []  # in a bucket: as of the last upload

  def last_step(self) -> int:
    return max((m['step'] for m in self.metrics()), default=0)

  def checkpoint_steps(self) -> list[int]:
    with ocp.CheckpointManager(self.workdir / checkpoint.TRAINING_DIR) as manager:
      return sorted(manager.all_steps())

  def digests(self) -> dict[int, str]:
    lines = (self.workdir / train_with_hooks.BATCH_DIGESTS_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r['step'] for r in records]
    assert len(steps) == len(set(steps)), f'{self.name}: a step drew two batches: {steps}'
    return {r['step']: r['digest'] for r in records}


@dataclasses.dataclass
class _Runs:
  straight: _TrainRun
  resumed: _TrainRun
  sigterm: _TrainRun
  nan: _TrainRun


def _env(root: pathlib.Path) -> dict:
  empty = root / 'no_tfds_data'
  empty.mkdir(exist_ok=True)
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
              JAX_DISABLE_MOST_OPTIMIZATIONS='1', TFDS_DATA_DIR=str(empty),
              **{runtime.CACHE_ENV: str(root / 'jax_cache')})


@pytest.fixture(scope='module')
def training_runs(tmp_path_factory, gcs_emulator):
  root = tmp_path_factory.mktemp('train_runs')
  env = _env(root)
  straight = _TrainRun(root, 'straight', TINY_RUN + DIGESTS + PREVIEWS, env)
  started = [straight]
  try:
    # Once step 1 is logged, the init and the train step are in the compilation cache.
    straight.wait_until(lambda: straight.last_step() >= 1, 'first step', COLD_START_TIMEOUT_S)
    resumed = _TrainRun(root, 'resumed', TINY_RUN + DIGESTS + (
        f'--hang_after_checkpoint_step={CHECKPOINT_EVERY}', f'--config.data.num_workers={WORKERS}'),
                        dict(env, **gcs_emulator.env), workdir=f'gs://{gcs_emulator.new_bucket()}/resumed')
    sigterm = _TrainRun(root, 'sigterm', TINY_RUN + (
        f'--config.total_steps={LONG_RUN_STEPS}', f'--config.checkpoint_every_steps={LONG_RUN_STEPS}'), env)
    nan = _TrainRun(root, 'nan', TINY_RUN, env, code=NAN_DRIVER,
                    code_args=(str(NAN_STEP - 1), str(CLIPS_PER_CHUNK)))
    started += [resumed, sigterm, nan]
    yield _Runs(straight, resumed, sigterm, nan)
  finally:
    for run in started:
      run.kill()


@pytest.fixture(scope='module')
def straight_run(training_runs) -> _TrainRun:
  run = training_runs.straight
  assert run.wait() == 0, run.failure('failed')
  return run


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_bitwise_equal(a, b, what: str):
  flat_a, flat_b = _flat(a), _flat(b)
  assert flat_a.keys() == flat_b.keys(), f'{what}: different trees'
  differ = [k for k in flat_a if flat_a[k].dtype != flat_b[k].dtype or flat_a[k].shape != flat_b[k].shape
            or flat_a[k].tobytes() != flat_b[k].tobytes()]
  assert not differ, f'{what}: {len(differ)} of {len(flat_a)} leaves differ, e.g. {differ[:3]}'


def _restore_opt_state(workdir: pathlib.Path, step: int):
  with ocp.CheckpointManager(workdir / checkpoint.TRAINING_DIR) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(opt_state=ocp.args.StandardRestore()))
  return restored['opt_state']


def test_sigterm_saves_the_step_reached_and_exits_cleanly(training_runs):
  run = training_runs.sigterm
  run.wait_until(lambda: run.last_step() >= 1, 'training step')
  run.proc.send_signal(signal.SIGTERM)
  assert run.wait() == 0, run.failure('SIGTERM did not end the run cleanly')
  reached = run.last_step()
  assert 1 <= reached < LONG_RUN_STEPS
  assert run.checkpoint_steps() == [reached]
  assert f'saved step {reached}, exiting' in run.log()
  assert 'Traceback' not in run.log()

  # Resumed with stop_after_step: one more step, a checkpoint there, a clean exit, long before total_steps.
  run.start(['train.py', *run.args, f'--config.stop_after_step={reached + 1}'])
  assert run.wait() == 0, run.failure('the stop_after_step run failed')
  assert run.checkpoint_steps() == [reached, reached + 1]
  assert run.last_step() == reached + 1
  assert 'Traceback' not in run.log()


def test_resume_after_sigkill_is_bitwise(training_runs, straight_run, tmp_path):
  run = training_runs.resumed
  run.wait_until(lambda: 'checkpoint committed, sleeping' in run.log(), 'sleep after the step-3 checkpoint')
  assert run.checkpoint_steps() == [CHECKPOINT_EVERY]
  run.proc.send_signal(signal.SIGKILL)
  assert run.wait() == -signal.SIGKILL
  assert run.last_step() == CHECKPOINT_EVERY

  run.restart()
  assert run.wait() == 0, run.failure('the resumed run failed')
  assert f'at step {CHECKPOINT_EVERY}' in run.log().split('Resumed from', 1)[-1].splitlines()[0]

  expected_digests = straight_run.digests()
  assert sorted(expected_digests) == list(range(1, TOTAL_STEPS + 1))
  assert run.digests() == expected_digests  # steps 1-3 before the kill, 4-6 after the resume
  params, _, meta = checkpoint.restore_training_params(run.workdir)
  expected_params, _, expected_meta = checkpoint.restore_training_params(straight_run.workdir)
  assert meta['step'] == expected_meta['step'] == TOTAL_STEPS
  _assert_bitwise_equal(params, expected_params, 'params')
  _assert_bitwise_equal(_restore_opt_state(run.workdir, TOTAL_STEPS),
                        _restore_opt_state(straight_run.workdir, TOTAL_STEPS), 'opt_state')
  losses_by_step = lambda r: {m['step']: m['loss'] for m in r.metrics()}
  assert losses_by_step(run) == losses_by_step(straight_run)

  # What an outside check does: export both runs (one from the bucket) to local inference checkpoints.
  exported = {}
  for source in (run, straight_run):
    output = tmp_path / source.name
    result = subprocess.run([sys.executable, '-m', 'vfusion_jax.export', '--workdir', str(source.workdir),
                             '--output', str(output)], cwd=REPO, env=run.env, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    exported[source.name] = checkpoint.load_inference_checkpoint(output)[0]
  _assert_bitwise_equal(exported['resumed'], exported['straight'], 'exported params')
  bucket_steps = sorted(int(p.parent.name) for p in (run.workdir / checkpoint.TRAINING_DIR).glob(
      '*/_CHECKPOINT_METADATA'))
  assert bucket_steps == [CHECKPOINT_EVERY, TOTAL_STEPS]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(training_runs):
  run = training_runs.nan
  assert run.wait() != 0, run.failure('the NaN run did not fail')
  log = run.log()
  assert 'FloatingPointError' in log
  message = log[log.index('FloatingPointError'):]
  assert f'at step {NAN_STEP}' in message
  assert f'last good checkpoint is step {CHECKPOINT_EVERY}' in message
  assert run.checkpoint_steps() == [CHECKPOINT_EVERY]
  assert run.last_step() == NAN_STEP - 1


def _loss_term_names() -> set[str]:
  """The names of the loss terms the demo's train step logs, from an abstract evaluation of its loss."""
  clip = lambda c: jax.ShapeDtypeStruct((BATCH, FRAMES, SIZE, SIZE, c), jnp.float32)
  outputs = {k: clip(3) for k in ('fusion', 'ir', 'vi')}
  batch = {'ir_lq': clip(1), 'vi_lq': clip(3), 'ir_gt': clip(1), 'vi_gt': clip(3)}
  loss_config = demo.get_config().loss
  _, terms = jax.eval_shape(lambda o, b: losses.compute_loss(o, b, loss_config), outputs, batch)
  return set(terms)


def test_demo_run_writes_metrics_events_and_previews(straight_run):
  workdir = straight_run.workdir
  records = straight_run.metrics()
  assert [r['step'] for r in records] == list(range(1, TOTAL_STEPS + 1))
  wanted = _loss_term_names() | {'loss', 'learning_rate', 'grad_norm', 'steps_per_sec', 'examples_per_sec',
                                 'eta_seconds'}
  for record in records:
    assert wanted <= set(record), f'missing {sorted(wanted - set(record))} at step {record["step"]}'
    assert all(np.isfinite(record[k]) for k in wanted if k != 'eta_seconds')
  assert records[-1]['eta_seconds'] == 0.0
  assert f'step {TOTAL_STEPS}/{TOTAL_STEPS}' in straight_run.log()  # the console progress line

  events = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  events.Reload()
  tags = events.Tags()
  assert wanted <= set(tags['scalars'])
  loss_events = events.Scalars('loss')
  assert [e.step for e in loss_events] == list(range(1, TOTAL_STEPS + 1))
  np.testing.assert_allclose([e.value for e in loss_events], [r['loss'] for r in records], rtol=1e-6)
  assert tags['images'] == ['preview']
  images = events.Images('preview')
  assert [e.step for e in images] == [CHECKPOINT_EVERY, TOTAL_STEPS]
  panels, separators = 5, 4 * logging_utils.SEPARATOR_PX  # IR in | visible in | fused | restored IR | vis.
  expected_hw = (BATCH * SIZE + (BATCH - 1) * logging_utils.SEPARATOR_PX, panels * SIZE + separators)
  assert (images[-1].height, images[-1].width) == expected_hw

  previews = sorted((workdir / train_lib.PREVIEWS_DIR).iterdir())
  assert [p.name for p in previews] == [f'{CHECKPOINT_EVERY:08d}.png', f'{TOTAL_STEPS:08d}.png']
  assert np.asarray(Image.open(previews[-1])).shape == (*expected_hw, 3)
  png = np.asarray(Image.open(workdir / 'preview.png'))
  assert png.shape == (SIZE, panels * SIZE + separators, 3)
  info = video_io.probe_video(workdir / 'preview.mp4', exact=True)
  assert info.num_frames == PREVIEW_FRAMES
  assert (info.height, info.width) == (SIZE, panels * SIZE)


def test_export_round_trip_and_refusal_to_overwrite(straight_run, tmp_path):
  env = _env(tmp_path)
  output = tmp_path / 'exported'
  cli = lambda *args: subprocess.run(
      [sys.executable, '-m', 'vfusion_jax.export', f'--workdir={straight_run.workdir}', f'--output={output}',
       *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
  first = cli(f'--step={CHECKPOINT_EVERY}')
  assert first.returncode == 0, first.stderr[-4000:]
  params, model_config = checkpoint.load_inference_checkpoint(output)
  expected, expected_config, _ = checkpoint.restore_training_params(straight_run.workdir, CHECKPOINT_EVERY)
  _assert_bitwise_equal(params, expected, 'exported params')
  assert model_config.to_dict() == expected_config.to_dict()
  with open(output / checkpoint.METADATA_FILE) as f:
    assert json.load(f)['step'] == CHECKPOINT_EVERY

  again = cli()
  assert again.returncode != 0
  assert 'already exists' in again.stderr and 'Traceback' not in again.stderr
  _assert_bitwise_equal(checkpoint.load_inference_checkpoint(output)[0], expected, 'params after refusal')

  latest = export.export(str(straight_run.workdir), str(tmp_path / 'latest'))
  expected_latest, _, _ = checkpoint.restore_training_params(straight_run.workdir)
  _assert_bitwise_equal(checkpoint.load_inference_checkpoint(latest)[0], expected_latest, 'latest params')


def test_bucket_problems_are_one_error_line_before_any_compilation(gcs_emulator, tmp_path):
  closed = f'http://127.0.0.1:{conftest.free_port()}'
  cases = [('gs://no-such-bucket-vf/run', gcs_emulator.env,
            'error: gs://no-such-bucket-vf/run: the bucket gs://no-such-bucket-vf does not exist'),
           (f'gs://{gcs_emulator.new_bucket()}/run', dict(gcs_emulator.env, STORAGE_EMULATOR_HOST=closed,
                                                          TENSORSTORE_GCS_HTTP_URL=closed),
            'error: gs://'),
           ]
  for workdir, storage_env, expected in cases:
    result = subprocess.run([sys.executable, str(REPO / 'train.py'), f'--config={REPO / "configs" / "demo.py"}',
                             f'--workdir={workdir}'], cwd=tmp_path, env=dict(_env(tmp_path), **storage_env),
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr and 'train step memory' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-2000:]
  assert 'cannot reach the storage endpoint' in result.stderr
  assert not (tmp_path / 'gs:').exists()  # the URL never became a local folder


def test_m3svd_config_without_data_fails_with_instructions(tmp_path):
  result = subprocess.run([sys.executable, 'train.py', '--config=configs/m3svd.py', f'--workdir={tmp_path / "w"}'],
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert 'error: the m3svd TFDS records were not found' in result.stderr
  for instruction in ('--manual_dir=', '--config.data.data_dir=', 'configs/demo.py'):
    assert instruction in result.stderr
