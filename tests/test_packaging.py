"""The installable package: the wheel that ``pip install .`` builds, and its console scripts run from elsewhere.

The wheel is built once (pip, with build isolation: setuptools comes from the package index) and installed with
``--no-deps --target`` next to this environment's dependencies, so the installed code, not the checkout, is what
runs: every command starts in an empty directory with only the target folder on PYTHONPATH.
"""

import email
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ('vfusion-train', 'vfusion-eval', 'vfusion-infer', 'vfusion-export', 'vfusion-convert',
           'vfusion-build-m3svd')
EXTRAS = ('test', 'torch', 'gpu', 'tpu')
BUILD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 900


def _requirements(path: pathlib.Path) -> list[str]:
  lines = (line.strip() for line in path.read_text().splitlines())
  return [line for line in lines if line and not line.startswith('#')]


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp('wheel')
  proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--quiet', '-w', str(out), str(REPO)],
                        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (path,) = out.glob('vfusion_jax-*.whl')
  return path


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory) -> pathlib.Path:
  target = tmp_path_factory.mktemp('site')
  proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--quiet', '--target', str(target),
                         str(wheel)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return target


def _run(installed: pathlib.Path, cwd: pathlib.Path, *argv: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(installed), JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1',
             VFUSION_JAX_CACHE_DIR='', TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


def test_wheel_has_the_configs_the_builder_and_the_pinned_dependencies(wheel):
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    info = next(n for n in names if n.endswith('.dist-info/METADATA'))
    metadata = email.message_from_bytes(archive.read(info))
    entry_points = archive.read(info.replace('METADATA', 'entry_points.txt')).decode()
  for module in ('vfusion_jax/configs/m3svd.py', 'vfusion_jax/configs/demo.py', 'vfusion_jax/configs/tpu_v5e.py',
                 'vfusion_jax/data/m3svd_dataset_builder.py', 'vfusion_jax/cli/train.py',
                 'vfusion_jax/models/network.py'):
    assert module in names, f'{module} is not in the wheel'
  assert not any(n.startswith(('tests/', 'benchmarks/', 'reference/', 'configs/')) for n in names), sorted(names)
  scripts = dict(re.findall(r'^(vfusion-[\w-]+) = (\S+)$', entry_points, re.M))
  assert sorted(scripts) == sorted(SCRIPTS)
  requires = metadata.get_all('Requires-Dist')
  runtime = [r for r in requires if 'extra ==' not in r]
  assert runtime == _requirements(REPO / 'requirements' / 'runtime.txt')
  assert sorted(metadata.get_all('Provides-Extra')) == sorted(EXTRAS)
  test_extra = [r.split(';')[0].strip() for r in requires if r.endswith('extra == "test"')]
  assert test_extra == _requirements(REPO / 'requirements' / 'test.txt')
  # requirements.txt (the README's CPU set-up) is exactly the runtime pins plus the test ones.
  assert _requirements(REPO / 'requirements.txt') == ['-r requirements/runtime.txt', '-r requirements/test.txt']


def test_console_scripts_answer_help_from_another_directory(installed, tmp_path):
  for script in SCRIPTS:
    flag = '--helpfull' if script == 'vfusion-train' else '--help'
    proc = _run(installed, tmp_path, str(installed / 'bin' / script), flag)
    assert proc.returncode == 0, f'{script} {flag}: rc={proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}'
    assert '--' in proc.stdout + proc.stderr, f'{script} printed no flags'
  proc = _run(installed, tmp_path, sys.executable, '-c',
              'import vfusion_jax, vfusion_jax.models, vfusion_jax.data.build; '
              'b = vfusion_jax.data.build.builder_module(); print(vfusion_jax.__file__); print(b.__file__)')
  assert proc.returncode == 0, proc.stderr[-3000:]
  package_file, builder_file = proc.stdout.split()
  assert pathlib.Path(package_file).is_relative_to(installed), package_file
  assert pathlib.Path(builder_file).is_relative_to(installed), builder_file


def test_installed_vfusion_train_trains_and_checkpoints(installed, tmp_path):
  """``vfusion-train --config=<checkout>/configs/demo.py`` and the packaged config both resolve; 2 tiny steps."""
  workdir = tmp_path / 'run'
  proc = _run(installed, tmp_path, str(installed / 'bin' / 'vfusion-train'), f'--config={REPO / "configs" / "demo.py"}',
              f'--workdir={workdir}', '--config.total_steps=2', '--config.checkpoint_every_steps=2',
              '--config.data.num_videos=2', '--config.data.frames_per_video=4', '--config.data.frames_per_example=4',
              '--config.data.height=32', '--config.data.width=32', '--config.num_frames=2',
              '--config.preview_every_steps=0', '--config.preview_video_frames=0', '--config.log_every_steps=1')
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert (workdir / 'checkpoints' / '2').is_dir(), sorted(p.name for p in workdir.rglob('*'))
  proc = _run(installed, tmp_path, sys.executable, '-c',
              'import vfusion_jax.configs as c; from ml_collections import config_flags; print(c.path("demo"))')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert pathlib.Path(proc.stdout.strip()).is_relative_to(installed)
