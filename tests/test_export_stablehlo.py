"""The exported (jax.export) inference function reloads without the model code and reproduces the outputs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import m3svd
from conftest import LOCAL_FIXTURES, REPO
from vfusion_jax import checkpoint, convert, export_stablehlo, inference

pytest.importorskip('flatbuffers', reason='jax.export serialisation needs flatbuffers (requirements.txt)')

TINY_NPZ = LOCAL_FIXTURES / 'videofusion_tiny_T3_32.npz'
WINDOW = (4, 32, 48)  # The shapes of tests/test_infer.py.
# Exported and jitted runs are separate XLA compilations of the same graph (with the params as constants in
# one of them), so they may round differently; the float32 outputs in (0, 1) agree far better than this.
ATOL = 1e-5

# Runs in a fresh interpreter with only JAX and numpy: proves the file needs neither Flax nor this project.
RELOAD_SCRIPT = textwrap.dedent('''
    import sys
    import jax
    import numpy as np
    exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))
    inputs = np.load(sys.argv[2])
    out = exported.call(inputs['ir'], inputs['vi'])
    assert not [m for m in sys.modules if m.startswith(('flax', 'vfusion_jax', 'configs'))], 'model code loaded'
    np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in out.items()})
''')


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  params = convert.torch_to_flax(convert.load_state_dict(str(TINY_NPZ)), m3svd.tiny_model())
  return checkpoint.save_inference_checkpoint(str(tmp_path_factory.mktemp('ckpt') / 'tiny'), params,
                                              m3svd.tiny_model())


def _run(args, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=False,
                        env={**os.environ, 'PYTHONPATH': str(REPO)}, **kwargs)


def test_export_round_trip_without_model_code(tiny_checkpoint, tmp_path):
  exported = tmp_path / 'tiny.jaxexp'
  run = _run(['-m', 'vfusion_jax.export_stablehlo', f'--checkpoint={tiny_checkpoint}',
              f'--window={",".join(map(str, WINDOW))}', f'--output={exported}'])
  assert run.returncode == 0, run.stderr
  info = json.loads((tmp_path / 'tiny.jaxexp.json').read_text())
  assert info['inputs']['vi'] == {'shape': [1, *WINDOW, 3], 'dtype': 'float32'}
  assert info['platforms'] == ['cpu'] and info['model_config']['num_features'] == 16

  rng = np.random.default_rng(0)
  ir = rng.random((1, *WINDOW, 3), dtype=np.float32)
  vi = rng.random((1, *WINDOW, 3), dtype=np.float32)
  np.savez(tmp_path / 'inputs.npz', ir=ir, vi=vi)
  run = _run(['-c', RELOAD_SCRIPT, str(exported), str(tmp_path / 'inputs.npz'), str(tmp_path / 'out.npz')])
  assert run.returncode == 0, run.stderr
  reloaded = np.load(tmp_path / 'out.npz')
  params, model_config = checkpoint.load_inference_checkpoint(tiny_checkpoint)
  expected = inference.fuse(params, model_config, ir, vi)
  for key in ('fusion', 'ir', 'vi'):
    assert reloaded[key].shape == (1, *WINDOW, 3)
    np.testing.assert_allclose(reloaded[key], expected[key], atol=ATOL, rtol=0)

  run = _run(['-m', 'vfusion_jax.export_stablehlo', f'--checkpoint={tiny_checkpoint}', '--window=4,32,48',
              f'--output={exported}'])
  assert run.returncode == 1 and 'already exists; pass --overwrite' in run.stderr


def test_in_process_export_with_grey_ir(tiny_checkpoint, tmp_path):
  params, model_config = checkpoint.load_inference_checkpoint(tiny_checkpoint)
  exported = export_stablehlo.export_model(params, model_config, (2, 8, 8), batch=2, ir_channels=1)
  path = export_stablehlo.save_exported(exported, tmp_path / 'grey.jaxexp')
  reloaded = export_stablehlo.load_exported(path)
  assert [a.shape for a in reloaded.in_avals] == [(2, 2, 8, 8, 1), (2, 2, 8, 8, 3)]
  assert [a.shape for a in reloaded.out_avals] == [(2, 2, 8, 8, 3)] * 3
  assert reloaded.mlir_module_serialized == exported.mlir_module_serialized
  with pytest.raises(FileExistsError, match='--overwrite'):
    export_stablehlo.save_exported(exported, path)
  export_stablehlo.save_exported(exported, path, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['grey.jaxexp', 'grey.jaxexp.json']


@pytest.mark.parametrize('text, message', [
    ('4,32', 'T,H,W'), ('1,32,32', 'T >= 2'), ('4,30,32', 'multiples of 4'), ('4,0,32', 'multiples of 4')])
def test_window_errors(text, message):
  with pytest.raises(ValueError, match=message):
    export_stablehlo.parse_window(text)


def test_checkpoint_and_platform_errors(tiny_checkpoint, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    export_stablehlo.export_checkpoint(tmp_path / 'missing', tmp_path / 'x', (2, 8, 8))
  with pytest.raises(ValueError, match='written for another model config'):
    export_stablehlo.export_checkpoint(tiny_checkpoint, tmp_path / 'x', (2, 8, 8),
                                       model_config=m3svd.released_model())
  params, model_config = checkpoint.load_inference_checkpoint(tiny_checkpoint)
  with pytest.raises(ValueError, match='platforms must be some of'):
    export_stablehlo.export_model(params, model_config, (2, 8, 8), platforms=('gpu',))
  assert not list(tmp_path.iterdir())
