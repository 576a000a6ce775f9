r"""Whole-video evaluation of a VideoFusion checkpoint (the installed command is ``vfusion-eval``; same flags).

  python eval.py --config=configs/m3svd.py --checkpoint=ckpt/ --data=../shared/data/m3svd_sample \
      --setting=degraded --references=clean --output=/tmp/eval_degraded

See vfusion_jax/cli/eval.py.
"""

from vfusion_jax.cli import eval as eval_cli

if __name__ == '__main__':
  eval_cli.run()
