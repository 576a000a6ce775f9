"""Tests of the M3SVD TFDS builder (data/m3svd) and vfusion_jax.data.build, without TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys

from etils import epath
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import demo
from conftest import REPO, shared_data
from test_sources import PLAIN, RELEASE, random_video, tiny_release, write_mp4s
from vfusion_jax import io
from vfusion_jax import train_lib
from vfusion_jax import windows
from vfusion_jax.data import build
from vfusion_jax.data import pipeline
from vfusion_jax.data import sources
from vfusion_jax.data import video_io

CHUNK = 2
FEATURES = ('video', 'frame_index', 'num_video_frames', 'frame_names', 'ir_gt', 'vi_gt', 'ir_lq', 'vi_lq')


def _examples(name, split, data_dir):
  source = tfds.data_source(name, split=split, data_dir=str(data_dir))
  return [source[i] for i in range(len(source))]


def _assert_chunks_match(examples, videos, chunk, streams=sources.STREAMS):
  """Every example is window_starts' chunk of its video, in video-then-frame order, frames equal to ``videos``."""
  expected = [(name, start) for name in videos for start in windows.window_starts(len(videos[name]['ir_gt']), chunk)]
  assert [(e['video'].decode(), int(e['frame_index'])) for e in examples] == expected
  for example in examples:
    name, start = example['video'].decode(), int(example['frame_index'])
    count = min(chunk, len(videos[name]['ir_gt']))
    assert int(example['num_video_frames']) == len(videos[name]['ir_gt'])
    assert [n.decode() for n in example['frame_names']] == [f'{i:04d}.png' for i in range(start, start + count)]
    for key in streams:
      assert example[key].dtype == np.uint8 and example[key].shape[-1] == sources.CHANNELS[key]
      np.testing.assert_array_equal(example[key], videos[name][key][start:start + count])


@pytest.fixture(scope='module')
def release_build(tmp_path_factory):
  """A tiny release with train/ and test/ split folders and degraded frames, built in 2 shards."""
  root = tmp_path_factory.mktemp('release')
  rng = np.random.default_rng(0)
  videos = {'train': tiny_release(root / 'train', rng, {'b01': 5, 'b02': 3}),
            'test': tiny_release(root / 'test', rng, {'b03': 4})}
  data_dir = tmp_path_factory.mktemp('records')
  builder = build.build(root, data_dir, num_shards=2, chunk_frames=CHUNK)
  return builder, videos, data_dir, root


def test_release_with_split_folders_reads_back_in_order(release_build):
  builder, videos, data_dir, _ = release_build
  assert builder.builder_config.name == f'chunk{CHUNK}'
  assert set(builder.info.splits) == {'train', 'test'}
  assert len(list(pathlib.Path(builder.data_dir).glob('m3svd-train.array_record-*-of-00002'))) == 2
  assert set(builder.info.features) == set(FEATURES)
  for split in ('train', 'test'):
    _assert_chunks_match(_examples(f'm3svd/chunk{CHUNK}', split, data_dir), videos[split], CHUNK)
  assert 'tensorflow' not in sys.modules


def test_build_into_a_bucket_gives_the_same_records(release_build, gcs_emulator, tmp_path):
  _, videos, local_data_dir, root = release_build
  bucket = gcs_emulator.new_bucket()
  data_dir = f'gs://{bucket}/tfds'
  command = [sys.executable, '-m', 'vfusion_jax.data.build', f'--manual_dir={root}', f'--data_dir={data_dir}',
             '--num_shards=2', f'--chunk_frames={CHUNK}']
  env = dict(os.environ, PYTHONPATH=str(REPO), **gcs_emulator.env)
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  version = io.path(data_dir) / 'm3svd' / f'chunk{CHUNK}' / '1.0.0'
  assert str(version) in done.stdout
  names = sorted(p.name for p in version.iterdir())
  assert {'dataset_info.json', 'features.json'} <= set(names)
  assert len([n for n in names if '.array_record-' in n]) == 4  # 2 splits x 2 shards

  # What a gcsfuse mount of the bucket shows the input pipeline: the same records as the local build.
  mirror = tmp_path / 'mount'
  epath.backend.fsspec_backend.fs(data_dir).get(f'{bucket}/tfds/', str(mirror), recursive=True)
  for split in ('train', 'test'):
    examples = _examples(f'm3svd/chunk{CHUNK}', split, mirror)
    _assert_chunks_match(examples, videos[split], CHUNK)
    for mine, theirs in zip(examples, _examples(f'm3svd/chunk{CHUNK}', split, local_data_dir)):
      for key in FEATURES:
        np.testing.assert_array_equal(np.asarray(mine[key]), np.asarray(theirs[key]))

  again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert again.returncode == 0 and 'already holds the records' in again.stderr
  config = demo.get_config()
  with config.unlocked():
    config.data.source, config.data.name, config.data.data_dir = 'tfds', f'm3svd/chunk{CHUNK}', data_dir
  with pytest.raises(train_lib.DataNotFoundError, match='gcsfuse'):
    train_lib.make_train_source(config)


def test_plain_layout_stores_absent_lq_as_zero_frames_and_splits_by_name(tmp_path):
  videos = tiny_release(tmp_path / 'm', np.random.default_rng(1), {'p1': 3, 'p2': 2}, folders=PLAIN,
                        ir_as_rgb=False)
  build.build(tmp_path / 'm', tmp_path / 'd', config='plain', chunk_frames=3, val_videos=['p2'])
  (train,) = _examples('m3svd/plain', 'train', tmp_path / 'd')
  (val,) = _examples('m3svd/plain', 'val', tmp_path / 'd')
  _assert_chunks_match([train], {'p1': videos['p1']}, 3, sources.GT_STREAMS)
  _assert_chunks_match([val], {'p2': videos['p2']}, 3, sources.GT_STREAMS)
  assert train['ir_lq'].shape == (0, *videos['p1']['ir_gt'].shape[1:])
  assert train['vi_lq'].shape == (0, *videos['p1']['vi_gt'].shape[1:])
  assert not pipeline._has_frames(train, 'ir_lq')  # pylint: disable=protected-access


def test_mp4_layout_frames_equal_the_decoded_video(tmp_path):
  truth = write_mp4s(tmp_path / 'm', {'clip': random_video(np.random.default_rng(2), 5)})
  build.build(tmp_path / 'm', tmp_path / 'd', chunk_frames=4)
  examples = _examples('m3svd/chunk4', 'train', tmp_path / 'd')
  _assert_chunks_match(examples, truth, 4, sources.GT_STREAMS)


def test_failed_build_leaves_nothing_that_reads_as_a_dataset_and_skip_works(tmp_path):
  tiny_release(tmp_path / 'm', np.random.default_rng(3), {'good': 3, 'bad': 3})
  frame = tmp_path / 'm' / 'visible_Enhance' / 'bad' / '0002.png'
  frame.write_bytes(frame.read_bytes()[:60])  # Readable header, corrupt pixels: found only while writing.
  with pytest.raises(sources.DataError, match='video bad: cannot decode frame .*visible_Enhance/bad/0002.png'):
    build.build(tmp_path / 'm', tmp_path / 'd', config='c')
  assert not list((tmp_path / 'd').rglob('*.array_record*'))
  assert not list((tmp_path / 'd').rglob('dataset_info.json'))
  with pytest.raises(Exception):
    tfds.data_source('m3svd/c', split='train', data_dir=str(tmp_path / 'd'))
  builder = build.build(tmp_path / 'm', tmp_path / 'd', config='c', skip_bad_videos=True)
  assert [e['video'].decode() for e in _examples('m3svd/c', 'train', tmp_path / 'd')] == ['good']
  metadata = json.loads((pathlib.Path(builder.data_dir) / 'metadata.json').read_text())
  assert [name for name, _ in metadata['skipped_videos']] == ['bad']


def test_bad_options_are_clear_errors(tmp_path):
  tiny_release(tmp_path / 'm', np.random.default_rng(4), {'one': 2})
  with pytest.raises(ValueError, match='lower --num_shards'):
    build.build(tmp_path / 'm', tmp_path / 'd', num_shards=3, config='s')
  with pytest.raises(ValueError, match='change the data'):
    build.make_config('default', chunk_frames=3)
  with pytest.raises(ValueError, match='unknown M3SVD config fields'):
    build.make_config(chunk=3)
  with pytest.raises(ValueError, match='chunk_frames must be >= 1'):
    build.make_config(chunk_frames=0)
  with pytest.raises(FileNotFoundError):
    build.build(tmp_path / 'missing', tmp_path / 'd')
  assert build.config_name() == 'default'
  assert build.config_name(chunk_frames=16, test_percent=10.0) == 'chunk16_test10'


def _all_examples(name, data_dir):
  builder = tfds.builder_from_directory(str(next(pathlib.Path(data_dir).glob(f'{name}/*'))))
  return {split: _examples(name, split, data_dir) for split in builder.info.splits}


def _assert_same_examples(a, b):
  assert a.keys() == b.keys()
  for split in a:
    assert len(a[split]) == len(b[split]), split
    for x, y in zip(a[split], b[split]):
      assert x.keys() == y.keys()
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f'{split} {key}')


def test_parallel_build_writes_the_serial_build_records(release_build, tmp_path):
  """--num_workers=2 (a pool of processes, each writing whole shards) against TFDS's serial writer."""
  builder, videos, data_dir, root = release_build
  parallel = build.build(root, tmp_path / 'p', num_shards=2, chunk_frames=CHUNK, num_workers=2)
  name = f'm3svd/chunk{CHUNK}'
  _assert_same_examples(_all_examples(name, data_dir), _all_examples(name, tmp_path / 'p'))
  for split in ('train', 'test'):
    assert parallel.info.splits[split].shard_lengths == builder.info.splits[split].shard_lengths
    assert parallel.info.splits[split].num_bytes == builder.info.splits[split].num_bytes
    _assert_chunks_match(_examples(name, split, tmp_path / 'p'), videos[split], CHUNK)
  # The default shard count and the command line: the same examples.
  command = [sys.executable, '-m', 'vfusion_jax.data.build', f'--manual_dir={root}', f'--data_dir={tmp_path / "c"}',
             f'--chunk_frames={CHUNK}', '--num_workers=2']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  _assert_same_examples(_all_examples(name, data_dir), _all_examples(name, tmp_path / 'c'))


def test_parallel_build_fails_on_a_bad_video_or_skips_it(tmp_path):
  tiny_release(tmp_path / 'm', np.random.default_rng(3), {'good': 3, 'bad': 3})
  frame = tmp_path / 'm' / 'visible_Enhance' / 'bad' / '0002.png'
  frame.write_bytes(frame.read_bytes()[:60])
  with pytest.raises(sources.DataError, match='video bad: cannot decode frame .*visible_Enhance/bad/0002.png'):
    build.build(tmp_path / 'm', tmp_path / 'd', config='c', num_workers=2)
  assert not list((tmp_path / 'd').rglob('*.array_record*'))
  assert not list((tmp_path / 'd').rglob('dataset_info.json'))
  builder = build.build(tmp_path / 'm', tmp_path / 'd', config='c', skip_bad_videos=True, num_workers=2)
  assert [e['video'].decode() for e in _examples('m3svd/c', 'train', tmp_path / 'd')] == ['good']
  metadata = json.loads((pathlib.Path(builder.data_dir) / 'metadata.json').read_text())
  assert [name for name, _ in metadata['skipped_videos']] == ['bad']


def test_official_split_puts_the_release_test_videos_in_test(tmp_path):
  module = build.builder_module()
  assert len(module.OFFICIAL_TEST_VIDEOS) == len(set(module.OFFICIAL_TEST_VIDEOS)) == 30
  official, other = module.OFFICIAL_TEST_VIDEOS[3], '0112_0000'
  videos = tiny_release(tmp_path / 'm', np.random.default_rng(8), {official: 2, other: 2})
  builder = build.build(tmp_path / 'm', tmp_path / 'd', config='official')
  assert builder.builder_config is build.make_config('official')
  assert [e['video'].decode() for e in _examples('m3svd/official', 'test', tmp_path / 'd')] == [official]
  assert [e['video'].decode() for e in _examples('m3svd/official', 'train', tmp_path / 'd')] == [other]
  _assert_chunks_match(_examples('m3svd/official', 'test', tmp_path / 'd'), {official: videos[official]}, 8)
  with pytest.raises(ValueError, match="registered config 'official'"):
    build.make_config('official', chunk_frames=4)
  # Split folders decide; an official test video under train/ is a contradiction, not silently 'train'.
  tiny_release(tmp_path / 'f' / 'train', np.random.default_rng(9), {official: 2})
  with pytest.raises(sources.DataError, match=f"puts \\['{official}'\\] in 'test'"):
    build.build(tmp_path / 'f', tmp_path / 'd2', config='official')


def test_project_command_builds_the_default_config_read_by_name(tmp_path):
  videos = tiny_release(tmp_path / 'm', np.random.default_rng(5), {'x': 9})
  command = [sys.executable, '-m', 'vfusion_jax.data.build', f'--manual_dir={tmp_path / "m"}',
             f'--data_dir={tmp_path / "d"}', '--num_shards=1']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "tfds.data_source('m3svd'" in done.stdout
  assert (tmp_path / 'd' / 'm3svd' / 'default' / '1.0.0').is_dir()
  _assert_chunks_match(_examples('m3svd', 'train', tmp_path / 'd'), videos, 8)


def test_tfds_cli_build_command_with_a_json_config(tmp_path):
  """The `tfds build` command's own code (the `tfds` entry point itself imports TF at start-up in 4.9.10)."""
  simple_parsing = pytest.importorskip('simple_parsing')
  from tensorflow_datasets.scripts.cli import build as tfds_build  # pylint: disable=g-import-not-at-top
  videos = tiny_release(tmp_path / 'm', np.random.default_rng(6), {'y': 3})
  args = simple_parsing.parse(tfds_build.Args, args=[
      str(REPO / 'data' / 'm3svd'), f'--manual_dir={tmp_path / "m"}', f'--data_dir={tmp_path / "d"}',
      '--config={"name": "json3", "chunk_frames": 3}'])
  args.execute()
  _assert_chunks_match(_examples('m3svd/json3', 'train', tmp_path / 'd'), videos, 3)


def test_real_sample_builds_and_equals_the_pngs(tmp_path):
  root = shared_data('m3svd_sample')
  build.build(root, tmp_path, chunk_frames=2, max_frames_per_video=2)
  examples = _examples('m3svd/chunk2_frames2', 'train', tmp_path)
  assert [e['video'].decode() for e in examples] == ['0111_1716', '0114_1609', '0115_1834']
  example = examples[2]
  for key, folder in RELEASE.items():
    png = video_io.load_png(root / folder / '0115_1834' / '0001.png')
    assert example[key].shape == (2, 480, 640, sources.CHANNELS[key])
    np.testing.assert_array_equal(example[key][1], png[..., :sources.CHANNELS[key]])


def test_real_mp4_pairs_build_and_equal_the_decoded_frames(tmp_path):
  root = shared_data('m3svd_videos')
  build.build(root, tmp_path, chunk_frames=2, max_frames_per_video=2)
  examples = _examples('m3svd/chunk2_frames2', 'train', tmp_path)
  assert [(e['video'].decode(), int(e['num_video_frames'])) for e in examples] == [('0111_1716', 2),
                                                                                  ('1230_1202', 2)]
  visible = video_io.read_video(root / 'visible' / '1230_1202.mp4', 0, 2)
  infrared = video_io.read_video(root / 'infrared' / '1230_1202.mp4', 0, 2)
  np.testing.assert_array_equal(examples[1]['vi_gt'], visible)
  np.testing.assert_array_equal(examples[1]['ir_gt'], sources.to_gray(infrared, 'luma'))
  assert examples[1]['ir_lq'].shape == (0, 480, 640, 1)



def test_records_without_the_degraded_frames_hold_the_same_clean_frames(release_build, tmp_path):
  full, videos, _, root = release_build
  builder = build.build(root, tmp_path, chunk_frames=CHUNK, degraded_frames=False)
  assert builder.builder_config.name == f'chunk{CHUNK}_nodegraded'
  for split in ('train', 'test'):
    examples = _examples(f'm3svd/chunk{CHUNK}_nodegraded', split, tmp_path)
    _assert_chunks_match(examples, videos[split], CHUNK, sources.GT_STREAMS)
    for example in examples:
      for key in sources.LQ_STREAMS:
        assert example[key].shape == (0, *example[key.replace('lq', 'gt')].shape[1:])
  serialized_bytes = lambda b: sum(split.num_bytes for split in b.info.splits.values())
  assert serialized_bytes(builder) < 0.6 * serialized_bytes(full)


def test_one_process_build_of_a_split_past_tfds_shuffler_memory_needs_no_tensorflow(monkeypatch, tmp_path):
  """TFDS's own serial writer spills to disk through TensorFlow's GFile past 1 GB per split (a full-release
  split); the builder writes its shards itself, so a build of any size runs without TensorFlow."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 1)  # every split "past 1 GB"
  videos = tiny_release(tmp_path / 'm', np.random.default_rng(4), {'s1': 3, 's2': 2})
  build.build(tmp_path / 'm', tmp_path / 'd', chunk_frames=CHUNK)
  _assert_chunks_match(_examples(f'm3svd/chunk{CHUNK}', 'train', tmp_path / 'd'), videos, CHUNK)
  assert 'tensorflow' not in sys.modules
