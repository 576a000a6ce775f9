"""Official weights -> Flax params: name mapping, strictness, and the CLI round trip."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import m3svd
from conftest import LOCAL_FIXTURES, REPO
from vfusion_jax import checkpoint, convert
from vfusion_jax.models import VideoFusion

TINY_NPZ = LOCAL_FIXTURES / 'videofusion_tiny_T3_32.npz'


@pytest.mark.parametrize('name, path', [
    ('fusion_enhance_1.transformer.0.norm1.body.weight', ('fusion_enhance_1', 'transformer_0', 'norm1', 'scale')),
    ('ir_conv_enhance_3.blocks.0.3.conv2.bias', ('ir_conv_enhance_3', 'blocks_0_3', 'conv2', 'bias')),
    ('co_attention_3.layers.2.co_transformer.attn.kv_dwconv_next.weight',
     ('co_attention_3', 'layers_2', 'co_transformer', 'attn', 'kv_dwconv_next', 'kernel')),
    ('up2.body.2.bias', ('up2', 'body_2', 'bias')),
    ('CMA_vi_2.ChannelAttention.fc1.weight', ('CMA_vi_2', 'ChannelAttention', 'fc1', 'kernel')),
    ('decoder_fusion.conv.0.weight', ('decoder_fusion', 'conv_0', 'kernel')),
])
def test_name_mapping(name, path):
  assert convert.torch_name_to_flax_path(name) == path


@pytest.fixture(scope='module')
def tiny_state():
  return convert.load_state_dict(str(TINY_NPZ))


def test_layouts(tiny_state):
  params = convert.torch_to_flax(tiny_state, m3svd.tiny_model())
  w = tiny_state['conv3d_ir_1.module.0.weight']  # (O, I, kt, kh, kw)
  k = params['conv3d_ir_1']['module_0']['kernel']  # (kt, kh, kw, I, O)
  assert k[2, 1, 0, 1, 5] == w[5, 1, 2, 1, 0]
  w = tiny_state['down_ir_1.body.0.weight']  # (O, I, kh, kw)
  assert params['down_ir_1']['body_0']['kernel'][0, 2, 3, 1] == w[1, 3, 0, 2]
  w = tiny_state['fusion_1.cross_transformer.attn.q_dwconv.weight']  # (C, 1, 3, 3)
  k = params['fusion_1']['cross_transformer']['attn']['q_dwconv']['kernel']
  assert k.shape == (3, 3, 1, 16) and k[1, 2, 0, 7] == w[7, 0, 1, 2]
  np.testing.assert_array_equal(params['fusion_1']['cross_transformer']['attn']['temperature'],
                                tiny_state['fusion_1.cross_transformer.attn.temperature'][:, 0, 0])


def test_unused_layernorms_are_skipped_explicitly(tiny_state):
  unused = [k for k in tiny_state if convert.UNUSED_PARAM_PATTERN.search(k)]
  assert len(unused) == 14  # 7 cross blocks x (weight, bias): manifest unused_param_names
  without = {k: v for k, v in tiny_state.items() if k not in unused}
  a = convert.torch_to_flax(tiny_state, m3svd.tiny_model())
  b = convert.torch_to_flax(without, m3svd.tiny_model())
  assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_strict_errors_name_every_problem(tiny_state):
  state = dict(tiny_state)
  del state['up1.body.2.bias']
  state['module.extra.weight'] = np.zeros(3, np.float32)
  state['decoder_vi.conv.2.weight'] = np.zeros((3, 8, 5, 5), np.float32)
  with pytest.raises(ValueError) as info:
    convert.torch_to_flax(state, m3svd.tiny_model())
  text = str(info.value)
  assert 'missing (2)' in text and 'up1/body_2/bias' in text and 'decoder_vi/conv_2/kernel' in text
  assert 'unexpected (1)' in text and 'extra.weight' in text
  assert 'shape mismatch (1)' in text and 'decoder_vi.conv.2.weight' in text
  with pytest.raises(ValueError, match='missing'):  # weights of the tiny net do not fit the released config
    convert.torch_to_flax(tiny_state, m3svd.released_model())


def test_cli_round_trip(tmp_path):
  out_dir = tmp_path / 'tiny_ckpt'
  cmd = [sys.executable, '-m', 'vfusion_jax.convert', '--torch_checkpoint', str(TINY_NPZ),
         '--config', str(REPO / 'configs' / 'm3svd.py') + ':tiny', '--output', str(out_dir)]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  subprocess.run(cmd, check=True, cwd=tmp_path, env=env, capture_output=True, text=True)
  assert sorted(os.listdir(out_dir)) == ['config.json', 'metadata.json', 'params']
  # A second run refuses to overwrite.
  second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
  assert second.returncode != 0 and 'already exists' in second.stderr

  params, model_config = checkpoint.load_inference_checkpoint(str(out_dir))
  assert model_config.to_dict() == m3svd.tiny_model().to_dict()
  data = np.load(TINY_NPZ)
  ir = data['input/ir'].transpose(0, 1, 3, 4, 2)
  vi = data['input/vi'].transpose(0, 1, 3, 4, 2)
  out = jax.jit(VideoFusion(**model_config).apply)({'params': params}, ir, vi)
  for key in ('fusion', 'ir', 'vi'):
    expected = data[f'output/{key}'].transpose(0, 1, 3, 4, 2)
    assert np.abs(np.asarray(out[key]) - expected).max() <= 1e-4


def test_load_rejects_other_config(tmp_path):
  params = convert.torch_to_flax(convert.load_state_dict(str(TINY_NPZ)), m3svd.tiny_model())
  path = checkpoint.save_inference_checkpoint(str(tmp_path / 'c'), params, m3svd.tiny_model())
  with pytest.raises(ValueError, match='another model config'):
    checkpoint.load_inference_checkpoint(path, m3svd.released_model())
  with pytest.raises(FileNotFoundError):
    checkpoint.load_inference_checkpoint(str(tmp_path / 'nothing'))


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(FileNotFoundError, match='do not exist'):
    convert.load_state_dict(str(tmp_path / 'net_g_latest.pth'))
  (tmp_path / 'net_g_latest.pth').write_bytes(b'not read without torch')
  with pytest.raises(ImportError, match='needs PyTorch'):
    convert.load_state_dict(str(tmp_path / 'net_g_latest.pth'))
