r"""M3SVD record builder throughput: where a process's time goes, and 1 vs N worker processes.

  python benchmarks/bench_build.py --data=../shared/data --workers=1,2 --json=/tmp/bench_build.json

For each layout under --data (``m3svd_sample``: frame folders with the four streams; ``m3svd_videos``: mp4 pairs,
the two clean streams) it times, in one process and in this order: decoding every chunk (PNG or mp4 ->
uint8), encoding it (``features.encode_example``: the zlib compression of the frame tensors), serialising it
and writing it to an ArrayRecord file; then whole builds (``vfusion_jax.data.build.build``) with each worker
count, read back and checked equal to the first (with --copies=N, of a folder holding every video N times, so
that the build lasts minutes and has many shards). Frames/s are frame pairs (all streams of one time step) per
second of wall time. The projection to the full release (153,797 frame pairs) divides by the measured rates;
the video release has the four streams as mp4 files, so its projection doubles the two-stream mp4 costs.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vfusion_jax.data import build  # pylint: disable=wrong-import-position
from vfusion_jax.data import sources  # pylint: disable=wrong-import-position

FULL_RELEASE_FRAME_PAIRS = 153_797
LAYOUTS = {'frames': 'm3svd_sample', 'mp4': 'm3svd_videos'}
# The video release holds infrared_Enhance, visible_Enhance, infrared_noise and visible_Blur as mp4 files; the
# shared mp4 pairs hold the two clean streams.
VIDEO_RELEASE_STREAM_FACTOR = 2.0


def _cpu_name() -> str:
  try:
    for line in open('/proc/cpuinfo', encoding='utf-8'):
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def stage_times(root: pathlib.Path, chunk_frames: int) -> dict:
  """Seconds spent decoding, encoding, serialising and writing every chunk of ``root``, in one process."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  module = build.builder_module()
  with tempfile.TemporaryDirectory() as tmp:
    builder = module.Builder(config=build.make_config(chunk_frames=chunk_frames), data_dir=tmp)
    features = builder.info.features
    serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
    videos = sources.scan(root).videos
    times = dict.fromkeys(('decode', 'encode', 'serialize', 'write'), 0.0)
    frames = sum(v.num_frames for v in videos)
    serialized = []
    for ordinal, video in enumerate(videos):
      examples = module.video_examples(video, ordinal, chunk_frames)
      while True:
        start = time.perf_counter()
        try:
          key, example = next(examples)
        except StopIteration:
          break
        times['decode'] += time.perf_counter() - start
        start = time.perf_counter()
        encoded = features.encode_example(example)
        times['encode'] += time.perf_counter() - start
        start = time.perf_counter()
        serialized.append((key, serializer.serialize_example(encoded)))
        times['serialize'] += time.perf_counter() - start
    start = time.perf_counter()
    writer = builder._example_writer()  # pylint: disable=protected-access
    writer.write(os.path.join(tmp, 'probe.array_record'), serialized)
    times['write'] = time.perf_counter() - start
  total = sum(times.values())
  return dict(frames=frames, seconds=times, total_s=total, frames_per_s=frames / total,
              record_bytes=sum(len(b) for _, b in serialized),
              share={k: v / total for k, v in times.items()})


def replicated(root: pathlib.Path, copies: int, into: pathlib.Path) -> pathlib.Path:
  """A manual folder holding every video of ``root`` ``copies`` times under new names (symlinks, no copying),
  so that a build lasts minutes and has many shards, like a slice of the full release."""
  if copies == 1:
    return root
  for stream_dir in (d for d in root.iterdir() if d.is_dir()):
    for entry in stream_dir.iterdir():
      for copy in range(copies):
        name = f'{entry.stem}c{copy}{entry.suffix}' if entry.is_file() else f'{entry.name}c{copy}'
        link = into / stream_dir.name / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(entry.resolve())
  return into


def timed_build(root: pathlib.Path, chunk_frames: int, workers: int, num_shards=None) -> dict:
  """A whole build in a fresh folder with ``workers`` processes; wall seconds and the records read back."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    builder = build.build(root, tmp, chunk_frames=chunk_frames, num_workers=workers, num_shards=num_shards)
    seconds = time.perf_counter() - start
    name = f'm3svd/{builder.builder_config.name}'
    digest = {}
    for split in builder.info.splits:
      source = tfds.data_source(name, split=split, data_dir=tmp)
      digest[split] = [(bytes(e['video']), int(e['frame_index']), int(np.asarray(e['ir_gt'], np.int64).sum()),
                        int(np.asarray(e['vi_gt'], np.int64).sum())) for e in source]
    frames = sum(v.num_frames for v in sources.scan(root).videos)
  return dict(workers=workers, seconds=seconds, frames=frames, frames_per_s=frames / seconds, digest=digest)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--data', default=str(REPO.parent / 'shared' / 'data'))
  parser.add_argument('--chunk_frames', type=int, default=8)
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--num_shards', type=int, default=None, help='shards per split (default: automatic)')
  parser.add_argument('--layouts', default=','.join(LAYOUTS))
  parser.add_argument('--copies', type=int, default=1,
                      help='build every video this many times under new names (a build of minutes)')
  parser.add_argument('--json', default=None)
  args = parser.parse_args()
  results = dict(cpu=_cpu_name(), cores=os.cpu_count(), layouts={})
  for layout in args.layouts.split(','):
    folder = LAYOUTS[layout]
    root = pathlib.Path(args.data) / folder
    if not root.is_dir():
      print(f'{layout}: {root} is absent, skipped')
      continue
    stages = stage_times(root, args.chunk_frames)
    with tempfile.TemporaryDirectory() as tmp:
      build_root = replicated(root, args.copies, pathlib.Path(tmp))
      builds = [timed_build(build_root, args.chunk_frames, int(w), args.num_shards)
                for w in args.workers.split(',')]
    for b in builds[1:]:
      assert b['digest'] == builds[0]['digest'], f'{layout}: {b["workers"]} workers wrote other records'
    for b in builds:
      del b['digest']
    results['layouts'][layout] = dict(stages=stages, builds=builds, copies=args.copies)
    shares = ', '.join(f'{k} {v:.0%}' for k, v in stages['share'].items())
    print(f'{layout}: {stages["frames"]} frame pairs, one process {stages["frames_per_s"]:.1f} frames/s ({shares}); '
          f'{stages["record_bytes"] / stages["frames"] / 2**20:.2f} MiB of records per frame pair')
    for b in builds:
      print(f'  build, {b["workers"]} worker(s): {b["seconds"]:.1f} s, {b["frames_per_s"]:.1f} frames/s '
            f'({b["frames_per_s"] / builds[0]["frames_per_s"]:.2f}x)')
  projections = {}
  for layout, factor in (('frames', 1.0), ('mp4', VIDEO_RELEASE_STREAM_FACTOR)):
    if layout in results['layouts']:
      rate = results['layouts'][layout]['stages']['frames_per_s'] / factor
      projections[layout] = FULL_RELEASE_FRAME_PAIRS / rate / 3600
      print(f'full release, {"image" if layout == "frames" else "video"} layout: '
            f'{projections[layout]:.1f} process-hours ({FULL_RELEASE_FRAME_PAIRS:,} frame pairs at {rate:.1f}/s)')
  results['projected_process_hours'] = projections
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == '__main__':
  main()
