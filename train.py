r"""Trains VideoFusion (the installed command is ``vfusion-train``; same flags).

  python train.py --config=configs/demo.py --workdir=/tmp/vfusion_demo        # embedded demo, no download
  python train.py --config=configs/m3svd.py --workdir=DIR                      # the released recipe on M3SVD
  python train.py --config=configs/m3svd.py --config.batch_size=6 --workdir=DIR

See vfusion_jax/cli/train.py.
"""

from vfusion_jax.cli import train

if __name__ == '__main__':
  train.run()
