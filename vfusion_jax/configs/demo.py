r"""The embedded demo: the tiny VideoFusion network trained for a few minutes on procedural IR/visible videos.

  python train.py --config=configs/demo.py --workdir=/tmp/vfusion_demo

No download: the videos come from vfusion_jax.data.synthetic (textured scenes, camera motion, moving warm
objects, day and night), degraded on the fly with the paper's blur and stripe noise. Writes checkpoints, logs
(metrics.jsonl, TensorBoard events), and a fused preview (preview.png, preview.mp4) to the workdir. About
5 minutes on an idle 2-core CPU machine: about a minute of start-up and compilation, 300 steps at ~0.75 s, the
preview (6 minutes measured on the shared 2-core machine at load 2-6). By the end the fused preview is in
colour, with the warm objects of the infrared in it.
"""

from vfusion_jax.configs import m3svd


def get_config(variant: str = ''):
  config = m3svd.get_config('tiny')
  config.variant = variant or 'demo'
  config.data.source = 'synthetic'
  config.data.num_videos = 32
  config.data.frames_per_video = 24
  config.data.frames_per_example = 12
  config.data.height = 96
  config.data.width = 96
  config.data.seed = 0
  config.data.num_workers = 0

  # 32x32 crops: a train step costs ~1 CPU-second here (64x64: ~3.4), so 300 steps fit in a few minutes; the
  # network is convolutional, and the preview runs on the whole 96x96 frames.
  config.batch_size = 2
  config.num_frames = 4
  config.crop_size = 32
  config.total_steps = 300
  config.checkpoint_every_steps = 100
  config.log_every_steps = 10
  config.preview_every_steps = 100

  # A short run needs no 5,000-step warm-up: a constant learning rate, loosely clipped.
  config.optim.schedule = 'constant'
  config.optim.learning_rate = 1e-3
  config.optim.grad_clip_norm = 1.0

  # The fused preview written at the end: a held-out synthetic video, windows of preview_window frames.
  config.preview_video_frames = 24
  config.preview_window = 4
  return config
