"""Training: state, the pure jitted step, and the loop with checkpoints, logging and preemption handling.

``train_and_evaluate(config, workdir)`` is what ``train.py`` runs. The step is a pure function
``(state, batch) -> (state, metrics)`` jitted once with explicit shardings over a ('data', 'time') mesh.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview
from orbax.checkpoint import multihost

from vfusion_jax import checkpoint
from vfusion_jax import io
from vfusion_jax import logging_utils
from vfusion_jax import losses
from vfusion_jax import optim
from vfusion_jax import preemption
from vfusion_jax import sharding
from vfusion_jax.data import pipeline
from vfusion_jax.models import VideoFusion


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, except the data iterator (checkpointed beside it)."""

  step: jax.Array  # int32 scalar: number of optimiser steps taken
  params: Any
  opt_state: Any


def create_model(config: ml_collections.ConfigDict) -> VideoFusion:
  return VideoFusion(**config.model, remat=bool(config.get('remat', False)))


def initial_params_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The key of a training run's initial params: the first of two split from ``config.seed``, so the same seed
  gives the same initial params as the runs documented in docs/ (and the untrained control of the CPU study)."""
  return jax.random.split(jax.random.key(config.seed))[0]


def init_state(model: VideoFusion, tx: optax.GradientTransformation, rng: jax.Array,
               config: ml_collections.ConfigDict, boxed: bool = False) -> TrainState:
  """Fresh params (PyTorch's default init) and optimiser state. Pure, so it can be jitted with shardings.

  The layers declare their params with ``nn.with_logical_partitioning``, and ``tx.init`` of those boxed params
  boxes the Adam moments with the same logical names. ``boxed=True`` keeps the boxes (what
  `sharding.state_shardings` reads); the default unboxes them to the plain arrays of the train state.
  """
  dummy_ir = jnp.zeros((1, 2, 8, 8, 1), jnp.float32)
  dummy_vi = jnp.zeros((1, 2, 8, 8, config.model.in_channels), jnp.float32)
  params = model.init(rng, dummy_ir, dummy_vi)['params']
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return state if boxed else flax.linen.unbox(state)


def make_train_step(model: VideoFusion, tx: optax.GradientTransformation, loss_config: Any,
                    schedule: Callable) -> Callable:
  """Returns the pure train step ``(state, batch) -> (state, metrics)``.

  ``batch`` is the pipeline's contract (``ir_lq``, ``vi_lq``, ``ir_gt``, ``vi_gt``; float32 in [0, 1]).
  A non-finite loss leaves the state unchanged and reports ``finite = False``; the loop then stops.
  The network has no dropout or other randomness, so the step takes no key and is deterministic.
  """

  def train_step(state: TrainState, batch: dict):
    def loss_fn(params):
      outputs = model.apply({'params': params}, batch['ir_lq'], batch['vi_lq'])
      total, terms = losses.compute_loss(outputs, batch, loss_config)
      return total, terms

    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(total)
    proposed = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), proposed, state)
    metrics = dict(terms)
    metrics.update(loss=total, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params),
                   learning_rate=schedule(state.step), finite=finite)
    return new_state, metrics

  return train_step


class DataNotFoundError(FileNotFoundError):
  """The configured training data is not where the config says; the message tells how to get it."""


def make_train_source(config: ml_collections.ConfigDict):
  """The random-access source of training chunks named by ``config.data.source``."""
  data = config.data
  source = data.get('source', 'tfds')
  if source == 'synthetic':
    from vfusion_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic.SyntheticVideoSource(
        num_videos=data.num_videos, frames_per_video=data.frames_per_video,
        frames_per_example=data.frames_per_example, height=data.height, width=data.width, seed=data.seed)
  if source == 'tfds':
    data_dir = data.get('data_dir')
    if data_dir and io.is_remote(data_dir):
      raise DataNotFoundError(
          f'config.data.data_dir={data_dir}: the input pipeline reads ArrayRecord files from a local path. Mount '
          f'the bucket on every host with gcsfuse (`gcsfuse --implicit-dirs BUCKET /mnt/BUCKET`, docs/tpu.md) '
          f'and pass the mounted folder, e.g. --config.data.data_dir=/mnt/BUCKET/...')
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      decoders = None
      if data.get('degradation', 'synthetic') == 'synthetic':  # the stored LQ frames are not needed
        decoders = {'ir_lq': tfds.decode.SkipDecoding(), 'vi_lq': tfds.decode.SkipDecoding()}
      return tfds.data_source(data.name, split=data.get('train_split', 'train'), data_dir=data_dir,
                              decoders=decoders, download=False)
    except Exception as e:  # pylint: disable=broad-except
      logging.info('tfds.data_source failed: %s', e)
      raise DataNotFoundError(
          f'the {data.name} TFDS records were not found in data_dir={data_dir or "~/tensorflow_datasets"}. '
          'M3SVD cannot be downloaded automatically: get it from the M3SVD release (the image release with '
          'infrared_Enhance/ infrared_noise/ visible_Enhance/ visible_Blur/, or infrared/ visible/ mp4 pairs), '
          'build the records with `python -m vfusion_jax.data.build --manual_dir=<M3SVD folder> '
          '--data_dir=<records dir>` and train with --config.data.data_dir=<records dir>. To try the whole '
          'loop without M3SVD, run `python train.py --config=configs/demo.py --workdir=/tmp/vfusion_demo`.'
      ) from None
  raise ValueError(f'unknown config.data.source {source!r}; use "synthetic" or "tfds"')


def make_train_iterator(config: ml_collections.ConfigDict):
  """This process's checkpointable iterator of host-local training batches."""
  from vfusion_jax.data import degrade  # pylint: disable=g-import-not-at-top

  data = config.data
  degradation_config = degrade.DegradationConfig(**data.get('degradation_ranges', {}))
  clips_per_chunk = data.get('clips_per_chunk', 1)
  dataset = pipeline.train_dataset(
      make_train_source(config), batch_size=config.batch_size, num_frames=config.num_frames,
      crop_size=config.crop_size, seed=config.seed, degradation=data.get('degradation', 'synthetic'),
      degradation_config=degradation_config, flips=data.get('flips', False), rot90=data.get('rot90', False),
      temporal_reverse=data.get('temporal_reverse', False), clips_per_chunk=clips_per_chunk,
      clean_fraction=data.get('clean_fraction', 0.0), process_index=jax.process_index(),
      process_count=jax.process_count())
  return pipeline.make_iterator(dataset, num_workers=data.get('num_workers', 0),
                                batches_per_element=clips_per_chunk)


class _MetricAverages:
  """Averages the step metrics on the devices between log steps (clu.metrics), so no step waits for the host.

  Each step's metrics are merged by a jitted ``Collection.merge`` (dispatched asynchronously, like the step);
  the per-step ``finite`` flags and losses are kept as device scalars. Only ``compute`` and ``first_nonfinite``
  (at log and checkpoint steps) wait for the device.
  """

  def __init__(self):
    self._merge = None
    self._single = None
    self._accumulated = None
    self._checks = []  # (step, finite, loss) as device scalars, since the last first_nonfinite()

  def add(self, step: int, metrics: dict) -> None:
    values = {k: v for k, v in metrics.items() if k != 'finite'}
    if self._merge is None:
      collection = clu_metrics.Collection.create(**{k: clu_metrics.Average.from_output(k) for k in values})
      self._single = jax.jit(lambda m: collection.single_from_model_output(**m))
      self._merge = jax.jit(lambda acc, m: acc.merge(collection.single_from_model_output(**m)))
    self._accumulated = (self._single(values) if self._accumulated is None
                         else self._merge(self._accumulated, values))
    self._checks.append((step, metrics['finite'], metrics['loss']))

  def first_nonfinite(self):
    """(step, loss) of the first step since the last call whose loss was not finite, else None."""
    checks, self._checks = jax.device_get(self._checks), []
    return next(((step, float(loss)) for step, finite, loss in checks if not finite), None)

  def compute(self) -> dict:
    """The averages since the last call, as Python floats."""
    scalars = {k: float(v) for k, v in self._accumulated.compute().items()}
    self._accumulated = None
    return scalars


def _preview_strip(preview: dict) -> np.ndarray:
  """IR in | visible in | fused | restored IR | restored visible, one row per clip (its middle frame)."""
  keys = ('ir_lq', 'vi_lq', 'fusion', 'ir', 'vi')
  return logging_utils.image_strip([[np.asarray(preview[k][b]) for k in keys]
                                    for b in range(preview['vi_lq'].shape[0])])


def make_preview_fn(model: VideoFusion, replicated: jax.sharding.NamedSharding) -> Callable:
  """``(params, batch) -> middle frames`` of the inputs and outputs, replicated on every device.

  Every process calls it on the global batch (a jitted computation needs all of them); the result is whole on
  every host, so process 0 can write it.
  """

  def preview(params, batch):
    outputs = model.apply({'params': params}, batch['ir_lq'], batch['vi_lq'])
    mid = batch['vi_lq'].shape[1] // 2
    frames = {k: batch[k][:, mid] for k in ('ir_lq', 'vi_lq')}
    frames.update({k: outputs[k][:, mid].astype(jnp.float32) for k in ('fusion', 'ir', 'vi')})
    return frames

  return jax.jit(preview, out_shardings=replicated)


def host_params(params: Any) -> Any:
  """The params as numpy arrays on this host; with several processes every process must call it."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def compiled_flops(compiled) -> float:
  """The FLOPs XLA's cost analysis counts in a compiled program (per device), NaN where the backend has none."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def _log_compiled(compiled) -> None:
  """Logs XLA's memory and cost analysis of the compiled train step (per device)."""
  try:
    memory = compiled.memory_analysis()
    flops = compiled_flops(compiled)
  except Exception:  # pylint: disable=broad-except  (not every backend implements the analyses)
    return
  if memory is not None:
    logging.info('train step memory per device: temporaries %.2f GiB, arguments %.2f GiB, outputs %.2f GiB',
                 memory.temp_size_in_bytes / 2**30, memory.argument_size_in_bytes / 2**30,
                 memory.output_size_in_bytes / 2**30)
  if not np.isnan(flops):
    logging.info('train step cost per device: %.1f GFLOP', flops / 1e9)


def sharding_rules(config: ml_collections.ConfigDict) -> tuple:
  """(logical axis rules, FSDP minimum size) of ``config.sharding`` (defaults for configs without it)."""
  section = config.get('sharding') or {}
  rules = tuple(tuple(rule) for rule in section.get('logical_axis_rules', sharding.DEFAULT_LOGICAL_AXIS_RULES))
  return rules, int(section.get('fsdp_min_size', sharding.DEFAULT_FSDP_MIN_SIZE))


class ShardedTrainStep:
  """The train step of a config set up on a mesh: state/batch shardings, sharded init, jitted step.

  The one place where the ('data', 'time') shardings of training are decided; ``train_and_evaluate``, the
  sharding equivalence test and the memory benchmark all build their step here, so what is tested and measured
  is what trains. The state argument is donated: callers replace their state with the step's output.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    sharding.check_batch_fits(mesh, config.batch_size, config.num_frames)
    self.config = config
    self.mesh = mesh
    self.rules, fsdp_min_size = sharding_rules(config)
    self.model = create_model(config)
    self.tx = optim.make_optimizer(config)
    self.schedule = optim.make_schedule(config)
    self.data_sharding = sharding.clip_sharding(mesh, self.rules)
    self.replicated = sharding.replicated(mesh)
    self._init = lambda rng: init_state(self.model, self.tx, rng, config)
    boxed = jax.eval_shape(lambda rng: init_state(self.model, self.tx, rng, config, boxed=True), jax.random.key(0))
    self.abstract_state = flax.linen.unbox(boxed)
    self.state_sharding = sharding.state_shardings(boxed, mesh, self.rules, fsdp_min_size)
    self.step = jax.jit(make_train_step(self.model, self.tx, config.loss, self.schedule),
                        in_shardings=(self.state_sharding, self.data_sharding),
                        out_shardings=(self.state_sharding, self.replicated),
                        donate_argnums=0)

  def init_state(self, rng: jax.Array) -> TrainState:
    """Fresh state from ``rng``, created directly in its shardings (never whole on one device)."""
    return jax.jit(self._init, out_shardings=self.state_sharding)(rng)

  def state_targets(self) -> TrainState:
    """ShapeDtypeStructs of the state with their shardings (restore targets, AOT lowering)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.abstract_state,
                        self.state_sharding)

  def batch_targets(self, height: int, width: int) -> dict:
    """ShapeDtypeStructs of a (B, T, height, width, C) training batch in its sharding."""
    clip = lambda c: jax.ShapeDtypeStruct((self.config.batch_size, self.config.num_frames, height, width, c),
                                          jnp.float32, sharding=self.data_sharding)
    return {'ir_lq': clip(1), 'vi_lq': clip(3), 'ir_gt': clip(1), 'vi_gt': clip(3)}

  def global_batch(self, host_batch: dict) -> dict:
    """This process's numpy batch as global arrays in the data sharding."""
    return sharding.host_batch_to_global(host_batch, self.mesh, self.rules)

  def compile(self, state: Any, batch: dict):
    """Compiles the step for these (possibly abstract) arguments, with the activation constraints active."""
    with sharding.activation_rules(self.mesh, self.rules):
      return self.step.lower(state, batch).compile()


PREVIEWS_DIR = 'previews'
# How long processes wait for each other before the first step (restores and compiles on a pod can be slow).
FIRST_STEP_BARRIER_TIMEOUT_S = 3600


@dataclasses.dataclass(frozen=True)
class LoopHooks:
  """Callbacks into the training loop for tests and tools (the loop runs the same without them).

  ``before_step(step, host_batch, writer)``: the 1-based step about to run, this process's numpy batch and the
  run's `logging_utils.MetricWriter`. ``after_checkpoint(step, manager)``: a checkpoint of ``step`` was saved
  (perhaps still being written: ``manager.wait_until_finished()`` to be sure).
  """

  before_step: Optional[Callable[[int, dict, logging_utils.MetricWriter], None]] = None
  after_checkpoint: Optional[Callable[[int, Any], None]] = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: io.PathLike,
                       hooks: LoopHooks = LoopHooks()) -> TrainState:
  """Trains ``config`` in ``workdir`` (local or ``gs://``), resuming from the latest checkpoint there if any.

  Every process runs this. Only process 0 writes logs and previews; every process joins the checkpoint saves,
  the previews' forward pass and the stop agreement (``preemption.StopSignal``). The host waits for the device
  only at log, preview and checkpoint steps.
  """
  workdir = io.check_access(workdir, create=True)  # a clear error line before any compilation
  is_main = jax.process_index() == 0
  iterator = make_train_iterator(config)

  mesh = sharding.make_mesh(config.mesh)
  setup = ShardedTrainStep(config, mesh)
  repl = setup.replicated
  init_rng = initial_params_key(config)

  manager = checkpoint.training_manager(workdir, max_to_keep=config.get('keep_checkpoints', 3))
  latest = manager.latest_step()
  if latest is not None:
    targets = setup.state_targets()
    params, opt_state, meta = checkpoint.restore_training(manager, latest, targets.params, targets.opt_state,
                                                          iterator)
    state = TrainState(step=jax.device_put(jnp.asarray(meta['step'], jnp.int32), repl), params=params,
                       opt_state=opt_state)
    logging.info('Resumed from %s at step %d', manager.directory, meta['step'])
  else:
    state = setup.init_state(init_rng)
  start_step = int(state.step)

  writer = logging_utils.MetricWriter(workdir, enabled=is_main)
  if is_main:
    io.write_text(workdir / 'config.json', config.to_json_best_effort(indent=2))
    logging.info('Parameters:\n%s', parameter_overview.get_parameter_overview(state.params))
    writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})

  preview_every = config.get('preview_every_steps', 0)
  preview_fn = make_preview_fn(setup.model, repl) if preview_every else None
  progress = logging_utils.ProgressLine(config.total_steps, batch_size=config.batch_size, start_step=start_step,
                                        print_fn=None if is_main else (lambda *_: None))
  averages = _MetricAverages()

  def check_finite(step):
    bad = averages.first_nonfinite()
    if bad is None:
      return
    manager.wait_until_finished()
    last = manager.latest_step()
    writer.close()
    seen = f' (seen at step {step})' if bad[0] != step else ''
    raise FloatingPointError(
        f'the loss became {bad[1]} at step {bad[0]}{seen}; training stopped. Nothing after step {last} was '
        f'saved: the last good checkpoint is step {last} in {manager.directory}.')

  compiled_step = None
  step = start_step
  # stop_after_step ends this invocation early (with a checkpoint) without changing the schedules, which run to
  # total_steps: a run spent in pieces, or the first stage of a two-stage recipe (docs/cpu_study.md).
  end_step = min(config.total_steps, config.get('stop_after_step') or config.total_steps)
  with preemption.StopSignal(manager) as stop:
    while step < end_step:
      host_batch = next(iterator)
      if hooks.before_step:
        hooks.before_step(step + 1, host_batch, writer)
      batch = setup.global_batch(host_batch)
      if compiled_step is None:  # compile once, up front, and report what the step needs
        compiled_step = setup.compile(state, batch)
        _log_compiled(compiled_step)
        # The first step's cross-process collective opens the CPU collectives' (gloo) connections, which time
        # out when one process is still restoring or compiling: every process starts its first step together.
        multihost.get_barrier_sync_fn()(key='vfusion_first_step', timeout_ms=FIRST_STEP_BARRIER_TIMEOUT_S * 1000)
      state, metrics = compiled_step(state, batch)
      step += 1
      averages.add(step, metrics)
      last_step = step == end_step
      stopping = stop.should_stop(step)
      if step % config.log_every_steps == 0 or last_step:
        check_finite(step)
        scalars = averages.compute()
        progress(step, scalars)
        scalars.update(progress.last_rates)
        writer.write_scalars(step, scalars)
      if preview_every and (step % preview_every == 0 or last_step):
        with sharding.activation_rules(mesh, setup.rules):
          preview = preview_fn(state.params, batch)
        if is_main:
          strip = _preview_strip(jax.device_get(preview))
          writer.write_images(step, {'preview': strip})
          io.save_png(io.makedirs(workdir / PREVIEWS_DIR) / f'{step:08d}.png', strip)
      if step % config.checkpoint_every_steps == 0 or last_step or stopping:
        check_finite(step)
        meta = {'step': step, 'config': json.loads(config.to_json_best_effort())}
        checkpoint.save_training(manager, step, state.params, state.opt_state, meta, iterator)
        writer.flush()
        if hooks.after_checkpoint:
          hooks.after_checkpoint(step, manager)
      if stopping:
        logging.warning('Stop requested (signal %s here): saved step %d, exiting.', stop.signal, step)
        print(f'stop requested: saved step {step}, exiting', flush=True)
        break
  manager.wait_until_finished()
  manager.close()
  writer.close()
  if hasattr(iterator, 'close'):
    iterator.close()
  return state


def write_preview(config: ml_collections.ConfigDict, workdir: io.PathLike, params: Any) -> dict:
  """Fuses a held-out synthetic video and writes ``preview.png`` (middle frame) and ``preview.mp4``.

  Panels, left to right: degraded IR | degraded visible | fused | restored IR | restored visible. The video is
  cut into consecutive windows of ``config.preview_window`` frames, the last one ending at the last frame
  (``windows.window_starts``, the official test rule, REFERENCE.md 8.4).
  """
  from vfusion_jax import inference, metrics, windows  # pylint: disable=g-import-not-at-top
  from vfusion_jax.data import degrade, synthetic, video_io  # pylint: disable=g-import-not-at-top

  data = config.data
  held_out_seed = data.seed + 10_000  # never a training video: those are seeded by (seed, index)
  pair = synthetic.synthetic_video_pair(held_out_seed, config.preview_video_frames, data.height, data.width)
  ir_lq, vi_lq = degrade.degrade_clip(pair['ir_gt'], pair['vi_gt'], np.random.default_rng(held_out_seed))
  frames = ir_lq.shape[0]
  window = config.preview_window
  outputs = {k: np.zeros(vi_lq.shape, np.float32) for k in ('fusion', 'ir', 'vi')}
  for start in windows.window_starts(frames, window):
    out = inference.fuse(params, config, ir_lq[start:start + window], vi_lq[start:start + window])
    for key in outputs:
      outputs[key][start:start + window] = out[key]
  panels = [np.repeat(ir_lq, 3, -1), vi_lq, outputs['fusion'], outputs['ir'], outputs['vi']]
  video = np.concatenate(panels, axis=2)
  video_u8 = metrics.to_uint8(video)
  workdir = io.path(workdir)
  png_path = workdir / 'preview.png'
  mid = frames // 2
  io.save_png(png_path, logging_utils.image_strip([[p[mid] for p in panels]]))
  mp4_path = workdir / 'preview.mp4'
  with video_io.VideoWriter(mp4_path, fps=10, overwrite=True) as writer:
    for frame in video_u8:
      writer.write(frame)
  return {'png': png_path, 'mp4': mp4_path}


_TPU_VM_ENV = ('TPU_WORKER_HOSTNAMES', 'CLOUD_TPU_TASK_ID', 'TPU_WORKER_ID')


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> bool:
  """Calls ``jax.distributed.initialize`` when the config asks for it (or 'auto' on a Cloud TPU VM).

  Must run before anything touches a JAX backend. Returns whether the run is multi-process.
  """
  dist = config.get('distributed')
  if dist is None:
    return False
  enabled = dist.get('enabled', 'auto')
  if enabled == 'auto':
    enabled = any(os.environ.get(k) for k in _TPU_VM_ENV)
  if not enabled:
    return False
  kwargs = {k: dist.get(k) for k in ('coordinator_address', 'num_processes', 'process_id')
            if dist.get(k) is not None}
  if kwargs.get('coordinator_address') and jax.config.jax_platforms in (None, '', 'cpu'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # cross-process collectives on CPU
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return jax.process_count() > 1


def run(config: ml_collections.ConfigDict, workdir: io.PathLike, hooks: LoopHooks = LoopHooks()) -> TrainState:
  """Entry point of train.py: trains, then writes the fused preview when the config asks for one."""
  from vfusion_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.enable_compilation_cache()
  maybe_initialize_distributed(config)
  state = train_and_evaluate(config, workdir, hooks)
  if config.get('preview_video_frames') and int(state.step) >= config.total_steps:
    params = host_params(state.params)  # every process joins the gather
    if jax.process_index() == 0:
      paths = write_preview(config, workdir, params)
      print(f'preview: {paths["png"]} {paths["mp4"]}')
  return state
