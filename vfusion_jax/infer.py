r"""Streaming fusion of real footage: registered IR + visible videos (or frame folders) -> fused video.

  vfusion-infer --ir IR.mp4 --vi VI.mp4 --checkpoint DIR --output FUSED.mp4       # the installed command
  python -m vfusion_jax.infer --ir IR.mp4 --vi VI.mp4 --checkpoint DIR --output FUSED.mp4
  python -m vfusion_jax.infer --ir ir_frames/ --vi vi_frames/ --checkpoint DIR --output fused_frames/ \
      --output_ir restored_ir.mp4 --output_vi restored_vi/ --start_frame 100 --num_frames 50 \
      --fuse.window=7 --fuse.overlap=2 --fuse.rule=center

An input is a video file or a folder of PNG frames (natural order); an output whose name ends in a video
suffix (.mp4, .mkv, .mov, .avi, .webm) is encoded as a video, any other name is a folder of PNG frames. Memory
is bounded whatever the length (``inference.fuse_video``, the library behind this program). Any resolution
works (reflect-pad to multiples of 4, crop back; ``--fuse.tile_size`` splits large frames into overlapping
tiles). IR may be grey or RGB: it enters the network as one MATLAB-grey channel, which the network repeats to
three equal channels as the release feeds IR (exact for grey frames, and it removes the chroma noise of decoded
grey video); ``--noir_to_gray`` feeds RGB IR unchanged.

Inputs, outputs and the checkpoint may be local or ``gs://``. A failed run leaves nothing under the final
names, and existing outputs are never replaced without ``--overwrite``. Fused frames are saved as the release
saves them (per-frame min-max stretch; ``--fuse.fused_minmax=false`` for plain clipping), restored frames as
``round(255 * clip(x, 0, 1))``. The ``--fuse.*`` options, ``--checkpoint``, ``--config`` and ``--overwrite`` are
shared with ``vfusion-eval`` (``vfusion_jax.cli.shared``).
"""

import sys

from absl import flags
from absl import logging

from vfusion_jax import inference
from vfusion_jax import io
from vfusion_jax.cli import shared


def _define_flags() -> None:
  """Defines the program's flags (from ``run()``, so importing this module defines none)."""
  flags.DEFINE_string('ir', None, 'infrared video file or PNG frame folder', required=True)
  flags.DEFINE_string('vi', None, 'visible video file or PNG frame folder (registered to --ir)', required=True)
  flags.DEFINE_string('output', None, 'fused output: a video file (.mp4, ...) or a frame folder', required=True)
  flags.DEFINE_string('output_ir', None, 'optional restored-IR output (video file or frame folder)')
  flags.DEFINE_string('output_vi', None, 'optional restored-visible output (video file or frame folder)')
  flags.DEFINE_integer('start_frame', 0, 'first frame to fuse (0-based)')
  flags.DEFINE_integer('num_frames', None, 'frames to fuse (default: to the end)')
  flags.DEFINE_bool('truncate', False, 'if the frame counts differ, fuse the shorter length instead of failing')
  flags.DEFINE_bool('ignore_fps_mismatch', False, 'accept inputs with different frame rates')
  flags.DEFINE_bool('ir_to_gray', True, 'feed IR as one grey channel (exact for grey IR); --noir_to_gray feeds '
                    'RGB IR as it is')
  flags.DEFINE_bool('progress', True, 'print progress (frames/s, ETA) to stderr')
  shared.define_flags()


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f'error: unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  if not f['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and XLA log every restore step at INFO.
  try:
    result = inference.fuse_video(
        f.ir, f.vi, f.output, checkpoint_dir=f.checkpoint,
        model_config=f.config.model if f.config is not None else None, output_ir=f.output_ir,
        output_vi=f.output_vi, window_config=shared.window_config(f.fuse), start_frame=f.start_frame,
        num_frames=f.num_frames, truncate=f.truncate, ignore_fps_mismatch=f.ignore_fps_mismatch, fps=f.fuse.fps,
        overwrite=f.overwrite, fused_minmax=f.fuse.fused_minmax, ir_to_gray=f.ir_to_gray, progress=f.progress)
  except (FileNotFoundError, FileExistsError, ValueError, io.StorageError) as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {result.num_frames} frames ({result.width}x{result.height}, {result.fps:g} fps) in '
        f'{result.seconds:.1f} s ({result.frames_per_sec:.2f} frames/s): '
        + ', '.join(f'{k} -> {v}' for k, v in result.outputs.items()))


def run():
  """Console script ``vfusion-infer``: defines the flags, sets the process up (before JAX starts), runs main."""
  _define_flags()
  shared.run_program(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
