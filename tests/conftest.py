"""Shared test set-up: paths to fixtures and real data, absl flags for grain, a quiet single-device JAX."""

import os
import pathlib

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
