"""Paths that may live in a bucket (``gs://``), and the project's one way to write files.

Every file the project writes goes through this module, so local disks and object stores behave the same:

* ``path(p)``: an ``etils.epath.Path`` for a local path (made absolute) or a ``gs://bucket/...`` URL (gcsfs
  behind it). Never route URLs through ``os.path``: ``os.path.abspath('gs://b/x')`` is the local ``<cwd>/gs:/b/x``.
* ``write_bytes``, ``write_text``, ``save_png``: atomic single files. Locally a hidden temporary sibling is
  renamed into place; in a bucket one object upload is atomic by itself (an object appears only complete).
* ``StagedFile``: a local file for writers that need one (the mp4 encoder), published by rename or upload.
* ``StagedDirectory``: a directory written under a hidden staging name and published whole: by one rename
  locally; in a bucket (no rename) by copying every object into place, the ``commit_last`` files last, so the
  final name never holds something that reads as complete before it is. ``publish_directory`` does the same
  for a finished local folder (uploaded straight into place, ``commit_last`` files last).
* ``SyncedDir``: files that grow (metric logs, TensorBoard events). Object stores have no append, so such files
  are written in a local folder and uploaded whole, each upload replacing the object atomically: after a crash
  the bucket holds the last complete upload, never a torn line.
* ``check_access``: a short preflight that turns a missing bucket, missing credentials or an unreachable
  endpoint into one ``StorageError`` line naming the path, before any slow work starts.

Only the standard variables are read: ``STORAGE_EMULATOR_HOST`` (gcsfs, google-cloud-storage) and
``TENSORSTORE_GCS_HTTP_URL`` (tensorstore, which Orbax uses for arrays) point both at a local GCS emulator.
"""

import contextlib
import io as _pyio
import os
import secrets
import shutil
import socket
import tempfile
import time
import urllib.parse
from typing import Iterator, Sequence, Union

from etils import epath
import fsspec
import numpy as np

Path = epath.Path
PathLike = Union[str, os.PathLike]

GCS_SCHEME = 'gs'
GCS_ENDPOINT = 'https://storage.googleapis.com'
EMULATOR_ENV = 'STORAGE_EMULATOR_HOST'
TENSORSTORE_ENV = 'TENSORSTORE_GCS_HTTP_URL'
# Seconds to wait for a TCP connection to the storage endpoint in the preflight.
CONNECT_TIMEOUT_S = 10.0
# Concurrent object copies when a staged directory is published in a bucket.
COPY_BATCH_SIZE = 64


# Other writers change a workdir behind gcsfs's back (tensorstore writes Orbax's arrays, other hosts and
# processes write their files), so gcsfs's listing cache would serve stale listings and sizes: a new checkpoint
# step missing, or a grown log read truncated at its old size. Listings are always asked afresh.
fsspec.config.conf.setdefault(GCS_SCHEME, {}).setdefault('use_listings_cache', False)


class StorageError(OSError):
  """A path cannot be used (missing bucket, no credentials, unreachable endpoint); the message says which."""


def is_remote(p: PathLike) -> bool:
  """True for URLs of an object store (``gs://...``), False for local paths."""
  text = os.fspath(p)
  scheme = urllib.parse.urlsplit(text).scheme
  return '://' in text and len(scheme) > 1 and scheme != 'file'


def path(p: PathLike) -> Path:
  """``p`` as an epath.Path: URLs as they are, local paths expanded and made absolute."""
  if isinstance(p, epath.Path) and is_remote(p):
    return p
  text = os.fspath(p)
  if is_remote(text):
    return epath.Path(text)
  if text.startswith('file://'):
    text = urllib.parse.urlsplit(text).path
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def _hidden_sibling(p: Path, tag: str, suffix: str = '') -> Path:
  return p.parent / f'.{p.name}.{secrets.token_hex(4)}.{tag}{suffix}'


def _filesystem(p: Path):
  """The fsspec filesystem behind a remote path: the very instance epath uses, so both see one listing cache."""
  return epath.backend.fsspec_backend.fs(os.fspath(p))


def _fs_path(p: Path) -> str:
  """``gs://bucket/key`` -> ``bucket/key`` (fsspec's form)."""
  return os.fspath(p).split('://', 1)[1]


# ---------------------------------------------------------------------------------------------------------------
# Single files.


def write_bytes(p: PathLike, data: bytes) -> Path:
  """Writes ``data`` to ``p`` atomically: readers see the old file or the whole new one, never a part."""
  p = path(p)
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f'{p}: expected bytes, got {type(data).__name__}')
  if is_remote(p):
    # One upload from memory. Not through an open file object: closing one after a failed write would
    # publish what was written so far.
    _filesystem(p).pipe_file(_fs_path(p), bytes(data))
    return p
  tmp = _hidden_sibling(p, 'tmp')
  try:
    tmp.write_bytes(data)
    os.replace(tmp, p)
  finally:
    if tmp.exists():
      tmp.unlink()
  return p


def write_text(p: PathLike, text: str) -> Path:
  """``write_bytes`` of UTF-8 text."""
  return write_bytes(p, text.encode('utf-8'))


def png_bytes(image: np.ndarray, name: str = 'image') -> bytes:
  """Encodes a uint8 (H, W), (H, W, 1) or (H, W, 3) image as PNG; ValueError names ``name`` otherwise."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f'{name}: expected a uint8 image, got {array.dtype}')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
    raise ValueError(f'{name}: expected an (H,W), (H,W,1) or (H,W,3) image, got {array.shape}')
  buffer = _pyio.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def save_png(p: PathLike, image: np.ndarray) -> Path:
  """Writes a uint8 (H, W), (H, W, 1) or (H, W, 3) image as PNG atomically; the parent folder must exist."""
  p = path(p)
  data = png_bytes(image, os.fspath(p))
  if not is_remote(p) and not p.parent.is_dir():
    raise FileNotFoundError(f'output directory does not exist: {p.parent}')
  return write_bytes(p, data)


class StagedFile:
  """A local file to write (``.local``), published to ``target`` by ``publish()`` or dropped by ``discard()``.

  For writers that need a real local file (FFmpeg through PyAV). Locally the file is a hidden sibling of the
  target, renamed into place; for a bucket it is a local temporary file uploaded as one object. The suffix is
  kept, since encoders pick the container from it.
  """

  def __init__(self, target: PathLike):
    self.target = path(target)
    suffix = ''.join(self.target.suffixes[-1:])
    if is_remote(self.target):
      handle, name = tempfile.mkstemp(prefix='vfusion_', suffix=suffix)
      os.close(handle)
      self.local = epath.Path(name)
    else:
      self.local = _hidden_sibling(self.target, 'partial', suffix)

  def publish(self) -> Path:
    """Moves the finished local file to ``target`` (replacing it)."""
    try:
      if is_remote(self.target):
        _filesystem(self.target).put_file(os.fspath(self.local), _fs_path(self.target))  # one upload
      else:
        os.replace(self.local, self.target)
    finally:
      self.discard()
    return self.target

  def discard(self) -> None:
    if os.path.exists(self.local):
      os.unlink(self.local)


# ---------------------------------------------------------------------------------------------------------------
# Directories.


def _remote_files(root: Path) -> list[str]:
  """Keys (relative to ``root``, '/'-separated) of every object under the remote prefix ``root``."""
  prefix = _fs_path(root).rstrip('/') + '/'
  return sorted(key[len(prefix):] for key in _filesystem(root).find(prefix) if key.startswith(prefix))


def makedirs(p: PathLike) -> Path:
  """Makes the local folder ``p`` and its parents; nothing for a bucket, which has no folders."""
  p = path(p)
  if not is_remote(p):
    p.mkdir(parents=True, exist_ok=True)
  return p


def remove_tree(p: PathLike, first: Sequence[str] = ()) -> None:
  """Deletes the directory ``p`` (all objects under the prefix in a bucket); the ``first`` files go first."""
  p = path(p)
  for name in first:
    if (p / name).exists():
      (p / name).unlink()
  if is_remote(p):
    fs = _filesystem(p)
    keys = fs.find(_fs_path(p))
    if keys:
      fs.rm(keys)
    fs.invalidate_cache(_fs_path(p))
  elif p.exists():
    shutil.rmtree(p)


def publish_directory(source: PathLike, target: PathLike, *, overwrite: bool = False,
                      commit_last: Sequence[str] = ()) -> Path:
  """Copies the finished local folder ``source`` to ``target`` (local or a bucket), so it reads as complete only
  once all of it is there.

  Locally through a hidden sibling and one rename. In a bucket the files are uploaded straight to ``target``,
  the ``commit_last`` ones last (an old ``target``'s commit files are deleted first), which is enough for readers
  that require those files; no server-side copy of a large tree.
  """
  source, target = path(source), path(target)
  if target.exists() and not overwrite:
    raise FileExistsError(f'{target} already exists; pass --overwrite to replace it')
  if not is_remote(target):
    with StagedDirectory(target, overwrite=overwrite) as staged:
      shutil.copytree(source, staged.path, dirs_exist_ok=True)
    return target
  remove_tree(target, first=commit_last)
  files = sorted(os.path.relpath(os.path.join(d, n), source) for d, _, names in os.walk(source) for n in names)
  fs = _filesystem(target)
  for group in ([f for f in files if f not in commit_last], [f for f in files if f in commit_last]):
    for start in range(0, len(group), COPY_BATCH_SIZE):
      batch = group[start:start + COPY_BATCH_SIZE]
      fs.put([os.path.join(source, f) for f in batch], [_fs_path(target / f) for f in batch])
  fs.invalidate_cache(_fs_path(target))
  return target


class StagedDirectory:
  """A directory built under a hidden staging name and published whole.

  Write into ``.path``; ``commit()`` publishes it under ``target``, ``abort()`` deletes it. As a context
  manager it commits when the block succeeds and aborts when it raises. ``target`` must not exist unless
  ``overwrite`` (FileExistsError, checked at construction and again at commit). Locally the commit is one
  rename. In a bucket, which has no rename, every object is copied into place and the ``commit_last`` files
  last (an old target's ``commit_last`` files are deleted first), so a reader that requires those files never
  takes a partial directory for a complete one.
  """

  def __init__(self, target: PathLike, *, overwrite: bool = False, commit_last: Sequence[str] = ()):
    self.target = path(target)
    self._overwrite = overwrite
    self._commit_last = tuple(commit_last)
    self._check_target()
    self.path = makedirs(_hidden_sibling(self.target, 'partial'))
    self._done = False

  def _check_target(self) -> None:
    if self.target.exists() and not self._overwrite:
      raise FileExistsError(f'{self.target} already exists; pass --overwrite to replace it')

  def commit(self) -> Path:
    """Publishes the staged directory as ``target``."""
    if self._done:
      raise RuntimeError(f'{self.target}: already committed or aborted')
    try:
      self._check_target()
      if is_remote(self.target):
        self._commit_remote()
      else:
        self._commit_local()
    except BaseException:
      self.abort()
      raise
    self._done = True
    return self.target

  def _commit_local(self) -> None:
    old = None
    if os.path.lexists(self.target):
      old = _hidden_sibling(self.target, 'old')
      os.rename(self.target, old)
    os.rename(self.path, self.target)
    if old is not None:
      if os.path.isdir(old):
        shutil.rmtree(old)
      else:
        os.unlink(old)

  def _commit_remote(self) -> None:
    remove_tree(self.target, first=self._commit_last)
    fs = _filesystem(self.target)
    files = _remote_files(self.path)
    last = [f for f in files if f in self._commit_last]
    for group in ([f for f in files if f not in self._commit_last], last):
      for start in range(0, len(group), COPY_BATCH_SIZE):
        batch = group[start:start + COPY_BATCH_SIZE]
        fs.copy([_fs_path(self.path / f) for f in batch], [_fs_path(self.target / f) for f in batch])
    fs.invalidate_cache(_fs_path(self.target))
    remove_tree(self.path)

  def abort(self) -> None:
    """Deletes the staging directory; the target is left as it was."""
    self._done = True
    with contextlib.suppress(OSError):
      remove_tree(self.path)

  def __enter__(self) -> 'StagedDirectory':
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.commit()
    elif not self._done:
      self.abort()


# ---------------------------------------------------------------------------------------------------------------
# Growing files.


class SyncedDir:
  """A local folder whose files are mirrored, whole, to ``directory`` (a bucket or a local folder).

  For files that grow by appending (JSON lines, TensorBoard events). For a local ``directory`` the files are
  written in place and ``push`` does nothing. For a bucket they are written in a local temporary folder
  (``.local``); ``push`` uploads every file that changed since the last push, each as one object, so the
  bucket always holds complete copies. ``pull(name)`` first fetches an existing object to append to (a resumed
  run keeps its old log lines).
  """

  def __init__(self, directory: PathLike):
    self.directory = path(directory)
    self.remote = is_remote(self.directory)
    if self.remote:
      self.local = epath.Path(tempfile.mkdtemp(prefix='vfusion_sync_'))
    else:
      self.local = makedirs(self.directory)
    self._pushed: dict[str, tuple[int, int]] = {}
    self.last_push = time.monotonic()

  def pull(self, name: str) -> None:
    """Copies ``directory/name`` (if it exists) into the local folder, as the base to append to."""
    if not self.remote:
      return
    source = self.directory / name
    if source.exists():
      (self.local / name).write_bytes(source.read_bytes())
      self._pushed[name] = self._signature(name)

  def _signature(self, name: str) -> tuple[int, int]:
    stat = os.stat(self.local / name)
    return stat.st_size, stat.st_mtime_ns

  def push(self) -> list[str]:
    """Uploads the files that changed since the last push; returns their names."""
    self.last_push = time.monotonic()
    if not self.remote:
      return []
    changed = []
    for name in sorted(os.listdir(self.local)):
      if not os.path.isfile(self.local / name):
        continue
      signature = self._signature(name)
      if self._pushed.get(name) != signature:
        write_bytes(self.directory / name, (self.local / name).read_bytes())
        self._pushed[name] = signature
        changed.append(name)
    return changed

  def close(self) -> None:
    """Pushes what is left and removes the local copy of a remote directory."""
    self.push()
    if self.remote:
      shutil.rmtree(self.local, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Preflight.


def _endpoint() -> str:
  return os.environ.get(EMULATOR_ENV) or GCS_ENDPOINT


def _check_endpoint(p: Path, endpoint: str) -> None:
  parts = urllib.parse.urlsplit(endpoint if '://' in endpoint else f'http://{endpoint}')
  port = parts.port or (443 if parts.scheme == 'https' else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
      pass
  except OSError as e:
    via = f' (from ${EMULATOR_ENV})' if os.environ.get(EMULATOR_ENV) else ''
    raise StorageError(f'{p}: cannot reach the storage endpoint {endpoint}{via}: {e}') from None


def _check_credentials(p: Path) -> None:
  if os.environ.get(EMULATOR_ENV):
    if not os.environ.get(TENSORSTORE_ENV):
      raise StorageError(f'{p}: ${EMULATOR_ENV} points gcsfs at {os.environ[EMULATOR_ENV]}, but '
                         f'${TENSORSTORE_ENV} is not set, so Orbax (tensorstore) would write arrays to the real '
                         f'GCS; set it to the same endpoint')
    return  # Emulators take anonymous requests.
  try:
    import google.auth  # pylint: disable=g-import-not-at-top
    google.auth.default()
  except Exception as e:  # pylint: disable=broad-except  (DefaultCredentialsError, TransportError, ...)
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise StorageError(
        f'{p}: no Google Cloud credentials ({first_line}); on a Cloud TPU VM the VM service account is used, '
        'elsewhere run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS') from None


def _check_bucket(p: Path) -> None:
  bucket = _fs_path(p).split('/', 1)[0]
  if len(bucket) < 3:
    raise StorageError(f'{p}: bucket names have at least 3 characters, got {bucket!r}')
  fs = _filesystem(p)
  try:
    fs.call('GET', 'b/{}/o', bucket, maxResults=1, json_out=True)
  except FileNotFoundError:
    raise StorageError(f'{p}: the bucket {GCS_SCHEME}://{bucket} does not exist (create it with '
                       f'`gcloud storage buckets create {GCS_SCHEME}://{bucket}`)') from None
  except Exception as e:  # pylint: disable=broad-except  (gcsfs raises OSError, HttpError, ValueError)
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise StorageError(f'{p}: cannot list the bucket {GCS_SCHEME}://{bucket}: {first_line}') from None


def check_access(p: PathLike, *, create: bool = False) -> Path:
  """Checks that ``p`` can be used; returns it as an epath.Path.

  For a ``gs://`` URL: credentials exist, the endpoint answers, the bucket exists and can be listed (each
  failure one StorageError line naming ``p``; seconds, not the minutes of gcsfs's retries). For a local path
  with ``create``: its folder is made. Other URL schemes pass unchecked (epath/fsspec report their errors).
  """
  p = path(p)
  if not is_remote(p):
    return makedirs(p) if create else p
  if urllib.parse.urlsplit(os.fspath(p)).scheme != GCS_SCHEME:
    return p
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise StorageError(f'{p}: gs:// paths need gcsfs (pip install -r requirements.txt)') from None
  _check_credentials(p)
  _check_endpoint(p, _endpoint())
  _check_bucket(p)
  return p


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[Path]:
  """A local path holding the file ``p``: ``p`` itself when local, a downloaded temporary copy when remote."""
  p = path(p)
  if not is_remote(p):
    yield p
    return
  staged = StagedFile(p)
  try:
    with p.open('rb') as f, open(staged.local, 'wb') as out:
      shutil.copyfileobj(f, out)
    yield staged.local
  finally:
    staged.discard()
