"""vfusion_jax.io on local disk and on a real GCS protocol (fake-gcs-server on 127.0.0.1): atomic files, staged
directories, growing logs mirrored whole, preflight errors, and the inference checkpoint in a bucket."""

import json
import os
import time

from etils import epath
import jax
import numpy as np
from PIL import Image
import pytest

from configs import m3svd
from conftest import free_port
from vfusion_jax import checkpoint
from vfusion_jax import io
from vfusion_jax import logging_utils

event_accumulator = pytest.importorskip(
    'tensorboard.backend.event_processing.event_accumulator',
    reason='the tensorboard package (event reader) is not installed')

# An unreachable endpoint must fail in the preflight's connect timeout, not in gcsfs's minute of retries.
PREFLIGHT_LIMIT_S = io.CONNECT_TIMEOUT_S + 5


@pytest.fixture(params=['local', 'gcs'])
def root(request, tmp_path):
  """A fresh folder: local, or a prefix in a fresh bucket of the emulator."""
  if request.param == 'local':
    return io.path(tmp_path / 'root')
  emulator = request.getfixturevalue('gcs_emulator')
  return io.path(f'gs://{emulator.new_bucket()}/root')


def _gcs():
  return epath.backend.fsspec_backend.fs('gs://')


def _names(folder: io.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_local_paths_are_absolute_and_urls_stay_urls(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert io.path('a/b') == io.path(tmp_path / 'a' / 'b')
  assert os.fspath(io.path('gs://bucket/run/x')) == 'gs://bucket/run/x'
  assert io.is_remote('gs://bucket/x') and not io.is_remote('/tmp/x') and not io.is_remote('file:///tmp/x')
  assert io.path('file:///tmp/x') == io.path('/tmp/x')
  assert not (tmp_path / 'gs:').exists()


def test_single_files_are_written_whole(root):
  target = root / 'sub' / 'a.json'
  io.makedirs(target.parent)
  io.write_text(target, 'old')
  with pytest.raises(TypeError):
    io.write_bytes(target, 'not bytes')  # fails while writing: the old content stays, no temporary is left
  assert target.read_text() == 'old'
  io.write_text(target, '{"x": 1}')
  assert json.loads(target.read_text()) == {'x': 1}
  assert _names(target.parent) == ['a.json']


def test_png_round_trip_and_validation(root):
  image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  io.makedirs(root)
  path = io.save_png(root / 'strip.png', image)
  with path.open('rb') as f:
    np.testing.assert_array_equal(np.asarray(Image.open(f)), image)
  assert _names(root) == ['strip.png']
  with pytest.raises(ValueError, match='uint8'):
    io.save_png(root / 'bad.png', image.astype(np.float32))
  with pytest.raises(ValueError, match=r'\(H,W\)'):
    io.save_png(root / 'bad.png', np.zeros((2, 3, 4), np.uint8))


def test_staged_file_publishes_or_leaves_nothing(root):
  io.makedirs(root)
  staged = io.StagedFile(root / 'clip.mp4')
  assert staged.local.suffix == '.mp4' and not io.is_remote(staged.local)
  staged.local.write_bytes(b'video bytes')
  assert not (root / 'clip.mp4').exists()
  staged.publish()
  assert (root / 'clip.mp4').read_bytes() == b'video bytes' and not os.path.exists(staged.local)
  dropped = io.StagedFile(root / 'other.mp4')
  dropped.local.write_bytes(b'partial')
  dropped.discard()
  assert _names(root) == ['clip.mp4'] and not os.path.exists(dropped.local)


def test_staged_directory_commit_abort_and_overwrite(root):
  target = root / 'out'
  with io.StagedDirectory(target, commit_last=('config.json',)) as staged:
    io.write_text(io.makedirs(staged.path / 'params') / 'a.bin', 'weights')
    io.write_text(staged.path / 'config.json', '{}')
    assert not target.exists()  # nothing under the final name before the commit
  assert _names(target) == ['config.json', 'params'] and (target / 'params' / 'a.bin').read_text() == 'weights'
  assert _names(root) == ['out']  # the staging copy is gone

  with pytest.raises(FileExistsError, match='already exists'):
    io.StagedDirectory(target)
  with pytest.raises(RuntimeError, match='boom'):
    with io.StagedDirectory(target, overwrite=True) as staged:
      io.write_text(staged.path / 'config.json', '{"new": true}')
      raise RuntimeError('boom')
  assert (target / 'config.json').read_text() == '{}' and _names(root) == ['out']  # untouched, no staging

  with io.StagedDirectory(target, overwrite=True) as staged:
    io.write_text(staged.path / 'config.json', '{"new": true}')
  assert _names(target) == ['config.json'] and _names(root) == ['out']


def test_bucket_commit_publishes_the_commit_files_last(gcs_emulator):
  target = io.path(f'gs://{gcs_emulator.new_bucket()}/ckpt')
  with io.StagedDirectory(target, commit_last=('config.json',)) as staged:
    for i in range(5):
      io.write_text(staged.path / f'part{i}', str(i))
    io.write_text(staged.path / 'config.json', '{}')
  info = {os.path.basename(key): _gcs().info(key) for key in _gcs().find(os.fspath(target)[len('gs://'):])}
  generations = {name: int(meta['generation']) for name, meta in info.items()}
  assert len(generations) == 6
  assert generations['config.json'] > max(g for name, g in generations.items() if name != 'config.json')


def test_synced_dir_uploads_whole_changed_files_and_continues_a_log(gcs_emulator):
  directory = io.path(f'gs://{gcs_emulator.new_bucket()}/run')
  synced = io.SyncedDir(directory)
  assert not io.is_remote(synced.local)
  (synced.local / 'log.jsonl').write_text('{"step": 1}\n')
  (synced.local / 'events').write_bytes(b'abc')
  assert synced.push() == ['events', 'log.jsonl']
  assert synced.push() == []  # nothing changed
  with open(synced.local / 'log.jsonl', 'a') as f:
    f.write('{"step": 2}\n')
  assert synced.push() == ['log.jsonl']
  synced.close()
  assert not os.path.exists(synced.local)
  assert (directory / 'log.jsonl').read_text() == '{"step": 1}\n{"step": 2}\n'

  resumed = io.SyncedDir(directory)
  resumed.pull('log.jsonl')
  resumed.pull('absent.jsonl')  # nothing to continue
  with open(resumed.local / 'log.jsonl', 'a') as f:
    f.write('{"step": 3}\n')
  resumed.close()
  assert [json.loads(line)['step'] for line in (directory / 'log.jsonl').read_text().splitlines()] == [1, 2, 3]


def test_metric_writer_in_a_bucket(gcs_emulator):
  workdir = io.path(f'gs://{gcs_emulator.new_bucket()}/run')
  writer = logging_utils.MetricWriter(workdir, sync_secs=3600)
  writer.write_hparams({'lr': 0.1})
  writer.write_scalars(1, {'loss': 2.0})
  assert not (workdir / logging_utils.METRICS_FILENAME).exists()  # not yet due for an upload
  writer.write_images(1, {'preview': np.zeros((4, 6, 3), np.uint8)})
  writer.flush()
  # What a crash right now leaves: complete lines, readable events.
  assert logging_utils.read_metrics(workdir) == [{'step': 1, 'loss': 2.0}]
  writer.write_scalars(2, {'loss': 1.5})
  writer.append_jsonl('other.jsonl', {'step': 2, 'digest': 'ab'})
  writer.close()
  assert [r['step'] for r in logging_utils.read_metrics(workdir)] == [1, 2]
  assert json.loads((workdir / logging_utils.HPARAMS_FILENAME).read_text()) == {'lr': 0.1}

  with logging_utils.MetricWriter(workdir) as resumed:  # a resumed run keeps the old lines
    resumed.write_scalars(2, {'loss': 1.25})
    resumed.append_jsonl('other.jsonl', {'step': 3, 'digest': 'cd'})
  assert [r['loss'] for r in logging_utils.read_metrics(workdir)] == [2.0, 1.5, 1.25]
  assert [json.loads(line)['step'] for line in (workdir / 'other.jsonl').read_text().splitlines()] == [2, 3]

  events = [p for p in workdir.iterdir() if p.name.startswith('events.out.tfevents')]
  assert len(events) == 2  # one per run
  losses, images = [], []
  for event_file in events:  # TensorBoard reads them in the bucket (through fsspec/gcsfs)
    accumulator = event_accumulator.EventAccumulator(os.fspath(event_file))
    accumulator.Reload()
    losses.append([e.value for e in accumulator.Scalars('loss')])
    images += accumulator.Tags()['images']
  assert sorted(losses) == [[1.25], [2.0, 1.5]] and images == ['preview']


def test_inference_checkpoint_in_a_bucket(gcs_emulator):
  model_config = m3svd.tiny_model()
  abstract = checkpoint.abstract_params(model_config)
  params = jax.tree.map(lambda x: np.random.default_rng(x.size).standard_normal(x.shape, np.float32), abstract)
  target = io.path(f'gs://{gcs_emulator.new_bucket()}/ckpt')
  checkpoint.save_inference_checkpoint(target, params, model_config, metadata={'step': 7})
  loaded, loaded_config = checkpoint.load_inference_checkpoint(os.fspath(target))
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded, params))
  assert loaded_config.to_dict() == checkpoint.model_config_from_dict(
      checkpoint.model_config_to_dict(model_config)).to_dict()
  with pytest.raises(FileExistsError):
    checkpoint.save_inference_checkpoint(target, params, model_config)

  # An interrupted publication: everything but config.json is in place, so it does not load.
  (target / checkpoint.CONFIG_FILE).unlink()
  with pytest.raises(FileNotFoundError, match='config.json is missing'):
    checkpoint.load_inference_checkpoint(target)


def test_preflight_missing_bucket(gcs_emulator, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(io.StorageError, match=r'^gs://no-such-bucket-x/run: the bucket gs://no-such-bucket-x '
                     'does not exist'):
    io.check_access('gs://no-such-bucket-x/run', create=True)
  with pytest.raises(io.StorageError, match='at least 3 characters'):
    io.check_access('gs://ab/run')
  bucket = gcs_emulator.new_bucket()
  assert io.check_access(f'gs://{bucket}/run', create=True) == io.path(f'gs://{bucket}/run')
  assert list(tmp_path.iterdir()) == []  # no local `gs:` folder


def test_preflight_unreachable_endpoint_is_quick(gcs_emulator, monkeypatch):
  closed = f'http://127.0.0.1:{free_port()}'
  monkeypatch.setenv(io.EMULATOR_ENV, closed)
  monkeypatch.setenv(io.TENSORSTORE_ENV, closed)
  started = time.monotonic()
  with pytest.raises(io.StorageError, match=f'^gs://bucket/run: cannot reach the storage endpoint {closed}'):
    io.check_access('gs://bucket/run')
  assert time.monotonic() - started < PREFLIGHT_LIMIT_S


def test_preflight_credentials_and_tensorstore_variable(gcs_emulator, tmp_path, monkeypatch):
  monkeypatch.delenv(io.TENSORSTORE_ENV)
  with pytest.raises(io.StorageError, match=f'{io.TENSORSTORE_ENV} is not set'):
    io.check_access('gs://bucket/run')
  monkeypatch.delenv(io.EMULATOR_ENV)
  monkeypatch.setenv('GOOGLE_APPLICATION_CREDENTIALS', str(tmp_path / 'absent.json'))
  with pytest.raises(io.StorageError, match='^gs://bucket/run: no Google Cloud credentials'):
    io.check_access('gs://bucket/run')
