r"""The PyTorch side of the comparison: the official network's forward and train step timed on this machine.

  python benchmarks/bench_torch.py                           # forward, released, T=7, 128x128 240x320 480x640
  python benchmarks/bench_torch.py --mode=train              # train step, B=1, T=6, 128x128 (the release's recipe)
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
      python benchmarks/bench_torch.py                       # the same with glibc malloc tuned

Needs torch (not a project requirement; on this machine `pip install torch==2.13.0`). The network is
reference/torch_videofusion.py, which reproduces the official model's fixture outputs (tests/test_torch_reference.py),
so the two sides compute the same function with the same weights. Measured the same way as
benchmarks/bench_model.py and benchmarks/bench_train.py: each size in its own process (peak RSS is that size alone),
one warm-up call, the median of --repeats timed calls, --threads intra-op threads (the machine's cores by default).
The train step is the release's iteration: forward, released loss, backward, global-norm clip to 0.01, AdamW
(lr 1e-4, weight decay 1e-5); inference runs under ``torch.inference_mode()``.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RELEASED_CONFIG = dict(in_channels=3, out_channels=3, num_features=32, num_blocks=(2, 2, 4), num_decoder_blocks=2,
                       num_heads=(2, 4, 8), ffn_expansion_factor=1, bias=False, layer_norm_type='WithBias')
CLIP_NORM = 0.01  # REFERENCE.md section 7: clip_grad_norm_(..., 0.01) every step
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 1e-5


def _measure(mode: str, batch: int, frames: int, height: int, width: int, repeats: int, threads: int) -> dict:
  """Times one case in this process; returns seconds per call and peak resident memory."""
  sys.path.insert(0, os.path.dirname(HERE))
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from reference import torch_videofusion  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = torch_videofusion.build_model(RELEASED_CONFIG)
  rng = np.random.default_rng(0)
  clip = lambda: torch.from_numpy(rng.uniform(size=(batch, frames, 3, height, width)).astype(np.float32))
  ir_lq, vi_lq, ir_gt, vi_gt = clip(), clip(), clip(), clip()

  if mode == 'forward':
    model.eval()

    def call():
      with torch.inference_mode():
        model(ir_lq, vi_lq)
  else:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def call():
      optimizer.zero_grad(set_to_none=True)
      loss, _ = torch_videofusion.released_loss(model(ir_lq, vi_lq), {'ir_gt': ir_gt, 'vi_gt': vi_gt})
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
      optimizer.step()

  call()  # warm-up (oneDNN primitive creation, allocator growth)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return dict(mode=mode, batch=batch, frames=frames, size=f'{height}x{width}', threads=threads,
              seconds=statistics.median(times), times=times, torch=torch.__version__,
              peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mode', choices=('forward', 'train'), default='forward')
  parser.add_argument('--sizes', default=None, help='comma-separated HxW list (default: forward 128x128,240x320,'
                      '480x640; train 128x128)')
  parser.add_argument('--frames', type=int, default=None, help='T (default: forward 7, train 6)')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--json', default=None, help='also write the results to this JSON file')
  parser.add_argument('--_child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  frames = args.frames or (7 if args.mode == 'forward' else 6)
  sizes = args.sizes or ('128x128,240x320,480x640' if args.mode == 'forward' else '128x128')
  if args._child:  # pylint: disable=protected-access
    height, width = (int(v) for v in args._child.split('x'))  # pylint: disable=protected-access
    print(json.dumps(_measure(args.mode, args.batch, frames, height, width, args.repeats, args.threads)))
    return

  results = []
  for size in sizes.split(','):
    command = [sys.executable, os.path.abspath(__file__), '--_child', size, '--mode', args.mode,
               '--frames', str(frames), '--batch', str(args.batch), '--repeats', str(args.repeats),
               '--threads', str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
      sys.exit(f'{size}: the measurement failed:\n{done.stderr[-3000:]}')
    results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(results[-1]), flush=True)
  allocator = os.environ.get('GLIBC_TUNABLES', 'glibc default')
  print(f'\ntorch {results[0]["torch"]}, {args.threads} threads, allocator: {allocator}\n')
  print(f'| H×W | B×T | {args.mode} s (median of {args.repeats}) | peak RSS |')
  print('|---|---|---:|---:|')
  for r in results:
    print(f"| {r['size']} | {r['batch']}×{r['frames']} | {r['seconds']:.2f} | {r['peak_rss_gib']:.2f} GiB |")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(allocator=allocator, results=results), f, indent=2)


if __name__ == '__main__':
  main()
