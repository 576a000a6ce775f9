"""Tests of vfusion_jax.data.pipeline: the training batches (on chunk sources and the M3SVD TFDS records) and
the whole-video evaluation reader."""

import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import REPO
from test_sources import PLAIN, random_video, tiny_release, write_mp4s
from vfusion_jax.data import build
from vfusion_jax.data import degrade
from vfusion_jax.data import pipeline
from vfusion_jax.data import synthetic

NUM_FRAMES = 3
CROP = 8
BATCH = 4
SEED = 7
CHUNK_FRAMES = 4
FRAME_SIZE = (12, 14)
NUM_EXAMPLES = 8
# Constant-valued chunks: example i has clean frames i + 1 and degraded frames LQ_OFFSET + i, so a batch
# element tells which example it came from.
LQ_OFFSET = 100
STREAM_CHANNELS = {'ir_lq': 1, 'vi_lq': 3, 'ir_gt': 1, 'vi_gt': 3}


def constant_source(num_examples=NUM_EXAMPLES, with_lq=True):
  """A list of chunks (the per-example layout of pipeline.py) with constant frames that identify them."""
  shape = (CHUNK_FRAMES, *FRAME_SIZE)
  source = []
  for i in range(num_examples):
    example = dict(video=f'v{i // 2}', frame_index=(i % 2) * CHUNK_FRAMES,
                   ir_gt=np.full((*shape, 1), i + 1, np.uint8), vi_gt=np.full((*shape, 3), i + 1, np.uint8))
    lq_frames = CHUNK_FRAMES if with_lq else 0
    example['ir_lq'] = np.full((lq_frames, *FRAME_SIZE, 1), LQ_OFFSET + i, np.uint8)
    example['vi_lq'] = np.full((lq_frames, *FRAME_SIZE, 3), LQ_OFFSET + i, np.uint8)
    source.append(example)
  return source


def _dataset(source=None, **kwargs):
  options = dict(batch_size=BATCH, num_frames=NUM_FRAMES, crop_size=CROP, seed=SEED)
  options.update(kwargs)
  return pipeline.train_dataset(constant_source() if source is None else source, **options)


def _example_ids(batch):
  """The source example index of every clip of a batch (from the constant clean frames)."""
  return [int(round(v * 255)) - 1 for v in batch['ir_gt'][:, 0, 0, 0, 0]]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_batch_contract_shapes_dtypes_ranges():
  batch = _dataset()[0]
  assert set(batch) == set(STREAM_CHANNELS)
  for key, channels in STREAM_CHANNELS.items():
    assert batch[key].shape == (BATCH, NUM_FRAMES, CROP, CROP, channels)
    assert batch[key].dtype == np.float32
    assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
  assert not np.array_equal(batch['vi_lq'], batch['vi_gt'])  # Synthetic degradation happened.


def test_same_seed_same_batches_other_seed_other_batches():
  first, again, other = _dataset(), _dataset(), _dataset(seed=SEED + 1)
  for i in range(3):
    _assert_batches_equal(first[i], again[i])
  assert any(not np.array_equal(first[i]['ir_lq'], other[i]['ir_lq']) for i in range(3))


def test_iterator_state_resumes_on_the_same_batch():
  iterator = pipeline.make_iterator(_dataset())
  next(iterator)
  next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  resumed = pipeline.make_iterator(_dataset())
  resumed.set_state(state)
  for batch in expected:
    _assert_batches_equal(batch, next(resumed))


def test_process_slices_are_disjoint_and_cover_the_global_stream():
  steps = NUM_EXAMPLES // BATCH  # One epoch of the shuffled source.
  single = _dataset(batch_size=1)
  per_process = [_dataset(process_index=p, process_count=2) for p in range(2)]
  ids = []
  for process, dataset in enumerate(per_process):
    process_ids = []
    for step in range(steps):
      batch = dataset[step]
      assert batch['ir_gt'].shape[0] == BATCH // 2
      for k in range(BATCH // 2):
        global_index = (step * BATCH // 2 + k) * 2 + process
        np.testing.assert_array_equal(batch['ir_lq'][k], single[global_index]['ir_lq'][0])
      process_ids += _example_ids(batch)
    ids.append(process_ids)
  assert not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == list(range(NUM_EXAMPLES))
  with pytest.raises(ValueError, match='not divisible'):
    _dataset(batch_size=3, process_count=2)


def test_dataset_degradation_uses_the_chunks_own_lq_frames():
  batch = _dataset(degradation='dataset')[0]
  ids = np.array(_example_ids(batch))
  for key in ('ir_lq', 'vi_lq'):
    expected = (LQ_OFFSET + ids)[:, None, None, None, None] / 255.0
    np.testing.assert_allclose(batch[key], np.broadcast_to(expected, batch[key].shape), atol=1e-6)
  with pytest.raises(ValueError, match='has no ir_lq frames'):
    _dataset(constant_source(with_lq=False), degradation='dataset')[0]


def test_one_worker_process_gives_the_same_batches():
  source = synthetic.SyntheticVideoSource(num_videos=2, frames_per_video=8, frames_per_example=4, height=16,
                                          width=16)
  dataset = _dataset(source, batch_size=2)
  expected = [dataset[i] for i in range(2)]
  iterator = pipeline.make_iterator(dataset, num_workers=1)
  try:
    for batch in expected:
      _assert_batches_equal(batch, next(iterator))
  finally:
    iterator.close()


WORKERS_GONE_TIMEOUT_S = 10 * pipeline.PARENT_CHECK_INTERVAL_S
KILLED_TRAINER = """
import time

from absl import flags
import grain
import numpy as np

from vfusion_jax.data import pipeline

flags.FLAGS.mark_as_parsed()
iterator = pipeline.make_iterator(grain.MapDataset.range(100).map(lambda i: np.full(4, i)), num_workers=2)
print(int(next(iterator)[0]), flush=True)
time.sleep(600)
"""


def test_worker_processes_end_with_a_killed_parent():
  parent = subprocess.Popen([sys.executable, '-c', KILLED_TRAINER], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
  try:
    assert parent.stdout.readline().strip() == '0'
    children = [int(pid) for task in pathlib.Path(f'/proc/{parent.pid}/task').iterdir()
                for pid in (task / 'children').read_text().split()]
    assert len(children) >= 2  # the two workers (and multiprocessing's resource tracker)
  finally:
    parent.kill()
    parent.wait()
  deadline = time.monotonic() + WORKERS_GONE_TIMEOUT_S
  while any(os.path.exists(f'/proc/{pid}') for pid in children) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not [pid for pid in children if os.path.exists(f'/proc/{pid}')]


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  """Tiny M3SVD records with degraded frames: (data_dir, config name, source frames)."""
  root = tmp_path_factory.mktemp('m3svd')
  videos = tiny_release(root, np.random.default_rng(0), {'r1': 6, 'r2': 5})
  data_dir = tmp_path_factory.mktemp('records')
  builder = build.build(root, data_dir, config='pipe', chunk_frames=CHUNK_FRAMES)
  return data_dir, f'm3svd/{builder.builder_config.name}', videos


def test_training_pipeline_reads_the_tfds_records(records):
  data_dir, name, videos = records
  source = tfds.data_source(name, split='train', data_dir=str(data_dir))
  for degradation in ('dataset', 'synthetic'):
    batch = _dataset(source, batch_size=2, degradation=degradation)[0]
    for key, channels in STREAM_CHANNELS.items():
      assert batch[key].shape == (2, NUM_FRAMES, CROP, CROP, channels) and batch[key].dtype == np.float32
  # Every clean clip is a window of a real video.
  clip = np.rint(batch['ir_gt'][0] * 255).astype(np.uint8)
  windows = [ir[start:start + NUM_FRAMES, top:top + CROP, left:left + CROP]
             for ir in (frames['ir_gt'] for frames in videos.values())
             for start in range(len(ir) - NUM_FRAMES + 1)
             for top in range(ir.shape[1] - CROP + 1) for left in range(ir.shape[2] - CROP + 1)]
  assert any(np.array_equal(window, clip) for window in windows)


def test_training_source_of_the_config_crosses_chunks_without_decoding_the_lq_frames(records):
  """train_lib's TFDS source skips decoding the LQ frames (synthetic degradation); the second read must not
  touch them (they arrive as undecoded bytes)."""
  from configs import m3svd  # pylint: disable=g-import-not-at-top
  from vfusion_jax import train_lib  # pylint: disable=g-import-not-at-top
  data_dir, name, videos = records
  config = m3svd.get_config('tiny')
  config.data.name, config.data.data_dir = name, str(data_dir)
  source = train_lib.make_train_source(config)
  assert np.asarray(source[0]['ir_lq']).ndim == 0  # really undecoded
  dataset = _dataset(source, batch_size=1)
  starts = set()
  for i in range(40):
    clip = np.rint(dataset[i]['ir_gt'][0] * 255).astype(np.uint8)
    matches = [(key, s) for key, frames in videos.items() for s in range(len(frames['ir_gt']) - NUM_FRAMES + 1)
               for top in range(frames['ir_gt'].shape[1] - CROP + 1)
               for left in range(frames['ir_gt'].shape[2] - CROP + 1)
               if np.array_equal(frames['ir_gt'][s:s + NUM_FRAMES, top:top + CROP, left:left + CROP], clip)]
    assert matches, 'every clip is NUM_FRAMES consecutive frames of one video'
    starts.update(s for _, s in matches)
  assert any(s % CHUNK_FRAMES + NUM_FRAMES > CHUNK_FRAMES for s in starts)  # some clips crossed a chunk end


def _assert_video(item, name, frames, streams, count=None):
  count = count or len(frames['ir_gt'])
  assert item['video'] == name and item['frame_names'] == [f'{i:04d}.png' for i in range(count)]
  assert set(item) == {'video', 'frame_names', *streams}
  for key in streams:
    np.testing.assert_array_equal(item[key], frames[key][:count])


def test_eval_videos_from_records_by_path_and_by_name(records):
  data_dir, name, videos = records
  version_dir = next(data_dir.rglob('dataset_info.json')).parent
  for items in (list(pipeline.eval_videos(version_dir)),
                list(pipeline.eval_videos(name, split='train', data_dir=str(data_dir)))):
    assert [item['video'] for item in items] == ['r1', 'r2']
    for item in items:  # r2 (5 frames) has overlapping chunks [0, 4) and [1, 5).
      _assert_video(item, item['video'], videos[item['video']], pipeline.STREAM_KEYS)
  (item,) = pipeline.eval_videos(version_dir, videos=['r2'], max_frames=3)
  _assert_video(item, 'r2', videos['r2'], pipeline.STREAM_KEYS, count=3)


def test_eval_videos_from_frame_folders_and_mp4_pairs(tmp_path):
  rng = np.random.default_rng(1)
  folders = tiny_release(tmp_path / 'frames', rng, {'f1': 3}, folders=PLAIN, ir_as_rgb=False)
  (item,) = pipeline.eval_videos(tmp_path / 'frames')
  _assert_video(item, 'f1', folders['f1'], ('ir_gt', 'vi_gt'))
  decoded = write_mp4s(tmp_path / 'mp4', {'m1': random_video(rng, 4)})
  (item,) = pipeline.eval_videos(tmp_path / 'mp4', max_frames=2)
  _assert_video(item, 'm1', decoded['m1'], ('ir_gt', 'vi_gt'), count=2)
  tiny_release(tmp_path / 'split' / 'test', rng, {'t1': 2})
  tiny_release(tmp_path / 'split' / 'train', rng, {'a1': 2})
  assert [v['video'] for v in pipeline.eval_videos(tmp_path / 'split', split='test')] == ['t1']
  with pytest.raises(ValueError, match='no split folders'):
    next(pipeline.eval_videos(tmp_path / 'frames', split='test'))


def test_eval_videos_from_a_synthetic_source():
  source = synthetic.SyntheticVideoSource(num_videos=2, frames_per_video=6, frames_per_example=3, height=8,
                                          width=8)
  items = list(pipeline.eval_videos(source))
  assert [item['video'] for item in items] == [source.video_name(0), source.video_name(1)]
  np.testing.assert_array_equal(items[1]['vi_gt'], np.concatenate([source[2]['vi_gt'], source[3]['vi_gt']]))
  assert set(items[0]) == {'video', 'frame_names', 'ir_gt', 'vi_gt'}


def test_eval_videos_rejects_sources_not_in_video_order():
  chunks = constant_source(4)  # v0: records 0, 1; v1: records 2, 3.
  with pytest.raises(ValueError, match="video 'v0': record 2 is separated"):
    list(pipeline.eval_videos([chunks[0], chunks[2], chunks[1]]))
  with pytest.raises(ValueError, match='starts at frame 4, not 0'):
    list(pipeline.eval_videos([chunks[1]]))
  gap = dict(chunks[1], frame_index=CHUNK_FRAMES + 1)
  with pytest.raises(ValueError, match='frames 4..4 are in no earlier chunk'):
    list(pipeline.eval_videos([chunks[0], gap]))


def test_clips_cross_chunk_boundaries_of_the_same_video():
  """With num_video_frames, clips start anywhere in a chunk and continue into the next chunk (second read)."""
  chunk, total, frames = 4, 10, 3
  starts = [0, 4, 6]  # the last chunk ends on the last frame, overlapping the one before
  source = []
  for video in range(2):
    for s in starts:
      index = np.arange(s, s + chunk, dtype=np.uint8)[:, None, None, None] + 20 * video
      source.append(dict(video=f'v{video}', frame_index=s, num_video_frames=total,
                         ir_gt=np.broadcast_to(index, (chunk, *FRAME_SIZE, 1)).copy(),
                         vi_gt=np.broadcast_to(index, (chunk, *FRAME_SIZE, 3)).copy()))
  dataset = pipeline.train_dataset(source, batch_size=1, num_frames=frames, crop_size=CROP, seed=SEED)
  first_frames = set()
  for i in range(120):
    clip = np.round(dataset[i]['ir_gt'][0, :, 0, 0, 0] * 255).astype(int)
    video, first = divmod(int(clip[0]), 20)
    np.testing.assert_array_equal(clip, 20 * video + first + np.arange(frames))  # consecutive frames
    first_frames.add(first)
  # Every start 0 .. total - frames occurs, including the ones that cross a chunk end (2, 3, 5).
  assert first_frames == set(range(total - frames + 1))


def test_blocks_draw_several_clips_from_each_decoded_chunk():
  """clips_per_chunk=K: an element is K batches; clip b of every batch of a block comes from one chunk."""
  clips_per_chunk = 3
  block = _dataset(clips_per_chunk=clips_per_chunk)[0]
  for key, channels in STREAM_CHANNELS.items():
    assert block[key].shape == (clips_per_chunk, BATCH, NUM_FRAMES, CROP, CROP, channels)
    assert block[key].dtype == np.float32
  ids = [_example_ids({'ir_gt': block['ir_gt'][k]}) for k in range(clips_per_chunk)]
  assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == BATCH  # B different chunks, shared by the K
  # Each clip has its own degradation draw.
  assert not np.array_equal(block['ir_lq'][0], block['ir_lq'][1])


def test_block_iterator_with_a_worker_resumes_inside_a_block():
  clips_per_chunk = 2
  source = synthetic.SyntheticVideoSource(num_videos=2, frames_per_video=8, frames_per_example=4, height=16,
                                          width=16)
  dataset = _dataset(source, batch_size=2, clips_per_chunk=clips_per_chunk)
  expected = [{key: value[k] for key, value in dataset[i].items()} for i in range(3) for k in range(2)]
  for restart in (False, True):
    iterator = pipeline.make_iterator(dataset, num_workers=1, batches_per_element=clips_per_chunk)
    try:
      if restart:
        iterator.set_state(state)
      else:
        _assert_batches_equal(expected[0], next(iterator))
        state = iterator.get_state()  # inside the first block
      for batch in expected[1:]:
        _assert_batches_equal(batch, next(iterator))
    finally:
      iterator.close()


def test_crop_size_zero_keeps_the_whole_frame():
  batch = _dataset(crop_size=0)[0]
  assert batch['vi_lq'].shape == (BATCH, NUM_FRAMES, *FRAME_SIZE, 3)
  with pytest.raises(ValueError, match='rot90 needs square clips'):
    _dataset(crop_size=0, rot90=True)[0]


def _blur_reference(frames, sigma, size):
  """Independent 2-D Gaussian blur of (T, H, W, C) frames, reflect-101 borders (cv2.filter2D's default)."""
  taps = np.exp(-np.arange(-(size // 2), size // 2 + 1)**2 / (2.0 * sigma**2))
  kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
  r = size // 2
  padded = np.pad(frames.astype(np.float64), ((0, 0), (r, r), (r, r), (0, 0)), mode='reflect')
  out = np.zeros(frames.shape, np.float64)
  for dy in range(size):
    for dx in range(size):
      out += kernel[dy, dx] * padded[:, dy:dy + frames.shape[1], dx:dx + frames.shape[2]]
  return out


def test_synthetic_blur_of_a_crop_equals_the_blur_of_the_whole_frame():
  """The degradation runs on the crop plus a margin, so a crop's blur sees its real neighbours."""
  sigma, height, width, crop = 1.7, 40, 44, 12
  rng = np.random.default_rng(3)
  frames = rng.integers(0, 256, (CHUNK_FRAMES, height, width, 3), dtype=np.uint8)
  chunk = dict(video='v', frame_index=0, ir_gt=frames[..., :1].copy(), vi_gt=frames)
  config = degrade.DegradationConfig(blur_sigma_range=(sigma, sigma), vi_gain_range=(1.0, 1.0),
                                     vi_offset_range=(0.0, 0.0), quantize=False)
  dataset = _dataset([chunk], batch_size=1, crop_size=crop, degradation_config=config)
  blurred = _blur_reference(frames / 255.0, sigma, degrade.KERNEL_SIZE)
  positions = set()
  for i in range(12):
    batch = dataset[i]
    clean = np.rint(batch['vi_gt'][0] * 255).astype(np.uint8)
    (start, top, left), = [(s, y, x) for s in range(CHUNK_FRAMES - NUM_FRAMES + 1)
                           for y in range(height - crop + 1) for x in range(width - crop + 1)
                           if np.array_equal(frames[s:s + NUM_FRAMES, y:y + crop, x:x + crop], clean)]
    positions.add((top, left))
    expected = blurred[start:start + NUM_FRAMES, top:top + crop, left:left + crop]
    np.testing.assert_allclose(batch['vi_lq'][0], expected, atol=2e-6)
  assert len(positions) > 1


@pytest.mark.parametrize('degradation', ['synthetic', 'dataset'])
def test_clean_fraction_gives_clean_inputs_to_that_share_of_clips(degradation):
  clean_flags = []
  for batch in (_dataset(degradation=degradation, clean_fraction=0.5, batch_size=8)[i] for i in range(8)):
    for key in ('ir', 'vi'):
      equal = [np.array_equal(lq, gt) for lq, gt in zip(batch[f'{key}_lq'], batch[f'{key}_gt'])]
      clean_flags.append(equal)
    assert clean_flags[-1] == clean_flags[-2]  # both modalities of a clip are clean, or neither
  share = np.mean(clean_flags)
  assert 0.3 < share < 0.7  # 64 clips with p = 0.5: outside this range with probability < 0.1 %
  never = _dataset(degradation=degradation, clean_fraction=0.0)[0]
  assert not any(np.array_equal(lq, gt) for lq, gt in zip(never['ir_lq'], never['ir_gt']))
  always = _dataset(degradation=degradation, clean_fraction=1.0)[0]
  _assert_batches_equal({'ir': always['ir_lq'], 'vi': always['vi_lq']},
                        {'ir': always['ir_gt'], 'vi': always['vi_gt']})


def test_clean_fraction_out_of_range_is_an_error():
  with pytest.raises(ValueError, match='clean_fraction'):
    pipeline.ClipSampler(NUM_FRAMES, CROP, clean_fraction=1.5)
