r"""VideoFusion on M3SVD: the released network and training recipe.

  python train.py --config=configs/m3svd.py --workdir=/tmp/vfusion
  python train.py --config=configs/m3svd.py:tiny --workdir=/tmp/vfusion_tiny   # the small CI variant

Variants (the text after ':'): '' (released), 'tiny' (the small network of the tiny parity fixture, small clips).
Every value here is from REFERENCE.md (sections 1.1 and 7) unless marked otherwise.
"""

import ml_collections

from vfusion_jax import losses
from vfusion_jax import optim

VARIANTS = ('', 'tiny')


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
      dtype='float32',  # computation dtype; 'bfloat16' on TPU. Params are always float32.
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

  # Training section (REFERENCE.md 7): 4 GPUs x 3 clips, T = 6, 128 x 128 crops, seed 3047.
  config.seed = 3047
  config.batch_size = 12  # global batch
  config.num_frames = 6
  config.crop_size = 128
  config.total_steps = 117_000  # 10 epochs of ~11.7k iterations
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  config.log_every_steps = 100
  config.preview_every_steps = 5000
  config.remat = False
  # Test hooks (tests/test_train_lib.py): write batch_digests.jsonl; sleep after the checkpoint of this step.
  config.log_batch_digests = False
  config.debug_hang_after_checkpoint_step = 0

  # Loss and optimiser sections (REFERENCE.md 6 and 7).
  config.loss = losses.default_loss_config('released')
  config.optim = optim.default_optim_config()
  config.optim.total_steps = config.get_ref('total_steps')

  # Parallelism: a mesh over batch ('data') and time ('time'); -1 takes the remaining devices.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, time=1))
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
  return config
