r"""VideoFusion on M3SVD: the released network and training recipe.

  python train.py --config=configs/m3svd.py --workdir=/tmp/vfusion
  python train.py --config=configs/m3svd.py:tiny --workdir=/tmp/vfusion_tiny   # the small CI variant
  bash scripts/cpu_study.sh                                                        # the cpu_study variant

Variants (the text after ':'): '' (released), 'tiny' (the small network of the tiny parity fixture, small clips),
'cpu_study' (a ~2-hour CPU training run on the real frames of ../shared/data/m3svd_sample: docs/cpu_study.md).
Every value here is from REFERENCE.md (sections 1.1 and 7) unless marked otherwise.
"""

import ml_collections

from vfusion_jax import losses
from vfusion_jax import optim
from vfusion_jax import sharding

VARIANTS = ('', 'tiny', 'cpu_study')


def released_model() -> ml_collections.ConfigDict:
  """The released ``network_g`` (REFERENCE.md 1.1): C = 32/64/128, heads 2/4/8, GDFN expansion 1."""
  return ml_collections.ConfigDict(dict(
      in_channels=3,
      out_channels=3,
      num_features=32,
      num_blocks=(2, 2, 4),
      num_decoder_blocks=2,
      num_heads=(2, 4, 8),
      ffn_expansion_factor=1.0,
      bias=False,
      layernorm_type='WithBias',
      dtype='float32',  # computation dtype; 'bfloat16' on GPU/TPU (docs/precision.md). Params stay float32.
      # How Conv3D and the depthwise convs are computed: 'cpu_tuned' (2-D convs, fused taps; docs/performance.md),
      # 'xla' (XLA's own 3-D / grouped convs, for GPU/TPU) or 'auto' (cpu_tuned on CPU, else xla, decided when
      # the network is traced). The params are the same, so a checkpoint runs with any value.
      layer_impl='auto',
  ))


def tiny_model() -> ml_collections.ConfigDict:
  """The network of the tiny parity fixture: F = 16, one layer per scale (1.56 M parameters)."""
  model = released_model()
  model.num_features = 16
  model.num_blocks = (1, 1, 1)
  model.num_decoder_blocks = 1
  model.num_heads = (2, 2, 4)
  return model


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is the text after ':' in --config=configs/m3svd.py:<variant>."""
  variant = variant or ''
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r} of configs/m3svd.py; choose one of {VARIANTS}')
  config = ml_collections.ConfigDict()
  config.variant = variant

  # Model section.
  config.model = released_model()

  # Data section: the TFDS M3SVD records (see data/m3svd/) or frame folders.
  config.data = ml_collections.ConfigDict()
  config.data.source = 'tfds'
  config.data.name = 'm3svd'
  config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.data.train_split = 'train'
  # 'synthetic': degrade clean frames on the fly (paper, section 4); 'dataset': the release's LQ frames.
  config.data.degradation = 'synthetic'
  config.data.degradation_ranges = ml_collections.ConfigDict()  # overrides of data.degrade.DegradationConfig
  config.data.flips = False  # the release has augmentation switched off (REFERENCE.md 7)
  config.data.rot90 = False
  config.data.temporal_reverse = False
  config.data.num_workers = 2
  # Clips drawn from each decoded chunk (pipeline.train_dataset): 1 samples as the release does; K > 1 pays a
  # chunk's decompression once for K clips, which a TPU host needs to keep up (docs/data.md).
  config.data.clips_per_chunk = 1
  # Share of training clips whose inputs are their clean frames (the normal setting); the release: 0.
  config.data.clean_fraction = 0.0

  # Training section (REFERENCE.md 7): 4 GPUs x 3 clips, T = 6, 128 x 128 crops, seed 3047.
  config.seed = 3047
  config.batch_size = 12  # global batch
  config.num_frames = 6
  config.crop_size = 128
  config.total_steps = 117_000  # 10 epochs of ~11.7k iterations
  # > 0: this invocation stops there (with a checkpoint); the schedules still run to total_steps.
  config.stop_after_step = 0
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  config.log_every_steps = 100
  config.preview_every_steps = 5000
  config.remat = False

  # Loss and optimiser sections (REFERENCE.md 6 and 7).
  config.loss = losses.default_loss_config('released')
  config.optim = optim.default_optim_config()
  config.optim.total_steps = config.get_ref('total_steps')

  # Parallelism: a mesh over batch ('data') and time ('time'); -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, time=1))
  # One rules table (Flax logical partitioning) maps the model's logical axis names to mesh axes or None
  # (vfusion_jax/sharding.py): activations batch, time, height, width, channels; parameters as the layers declare
  # them (kernel_time, kernel_height, kernel_width, conv_in, conv_out; norm_channels; heads).
  # sharding.FSDP_LOGICAL_AXIS_RULES maps conv_out to 'data': kernels and their Adam moments split over the batch
  # devices; parameters under fsdp_min_size elements, and axes that 'data' does not divide, stay replicated.
  config.sharding = ml_collections.ConfigDict(dict(
      logical_axis_rules=sharding.DEFAULT_LOGICAL_AXIS_RULES,
      fsdp_min_size=sharding.DEFAULT_FSDP_MIN_SIZE,
  ))
  # Multi-host: 'auto' initialises jax.distributed on a Cloud TPU VM (detected from its environment) and
  # otherwise runs single-process; True needs the three fields below (or the cluster's environment).
  config.distributed = ml_collections.ConfigDict(dict(
      enabled='auto',
      coordinator_address=ml_collections.FieldReference(None, field_type=str),
      num_processes=ml_collections.FieldReference(None, field_type=int),
      process_id=ml_collections.FieldReference(None, field_type=int),
  ))

  if variant == 'tiny':
    config.model = tiny_model()
    config.batch_size = 2
    config.num_frames = 3
    config.crop_size = 32
    config.total_steps = 4
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.preview_every_steps = 0
    config.data.num_workers = 0
  elif variant == 'cpu_study':
    _apply_cpu_study(config)
  return config


def _apply_cpu_study(config: ml_collections.ConfigDict) -> None:
  """The CPU-budget study of docs/cpu_study.md: the tiny network on real M3SVD frames, ~2 h on 2 cores.

  Records: ``scripts/cpu_study.sh`` builds ``m3svd/cpu_study`` from ../shared/data/m3svd_sample with 0111_1716
  held out ('test') and 0114_1609, 0115_1834 in 'train'. Width: the tiny network (F = 16, one block per scale,
  1.56 M parameters) costs ~1/6 of the released one per pixel, so 2 cores run a few thousand steps of B = 2,
  48 x 48 clips in the budget; the released width would get a sixth of them. Crops of 48 pixels still hold long
  stripe segments and the whole blur kernel of the degradation (15 px) with context on both sides. This is the
  recipe's second stage (the script runs the first: degraded clips of T = 4 only, stopped at step 2,250 of a
  6,000-step cosine): clips of T = 7, the official inference window, because the Conv3D layers' zero padding in
  time makes every window position its own case, and a model trained on T = 4 fuses positions 2-4 of a window
  of 7 brighter (a flicker every window); a quarter of the clips keep their clean inputs, so the network learns
  to leave clean footage intact (the normal setting); the cosine restarts from the first stage's step to 3,500.
  """
  config.model = tiny_model()
  config.data.name = 'm3svd/cpu_study'
  config.data.num_workers = 0  # the step, not the input, is the bottleneck on 2 cores
  config.data.clean_fraction = 0.25
  config.batch_size = 2
  config.num_frames = 7
  config.crop_size = 48
  config.total_steps = 3500
  config.checkpoint_every_steps = 250
  config.log_every_steps = 10
  config.preview_every_steps = 0
  # A short run from scratch: a short warm-up, then one cosine to a low floor; the released clip (0.01)
  # and peak (1e-4) are tuned for 117k steps and would leave this run barely moved.
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 50
  config.optim.cosine_period = config.get_ref('total_steps')
  config.optim.end_learning_rate = 1e-5
  config.optim.grad_clip_norm = 1.0
