"""The Flax network against the official release: parity fixtures, parameter count, input checks, fuse()."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import vfusion_jax
from configs import m3svd
from conftest import LOCAL_FIXTURES, shared_fixture
from vfusion_jax import checkpoint, convert
from vfusion_jax.models import VideoFusion

# Tolerance of the parity tests. The fixtures hold the official model's outputs computed in float64; the
# official model itself, run in float32, is off from them by at most 2.1e-7 (released) / 8.6e-8 (tiny)
# (manifest: determinism_and_precision.*.f32_vs_f64_maxabs). Our float32 forward sums in another order, so
# its error is of the same float32 rounding kind; 1e-4 is the contract and leaves a 500x margin over
# that gap while still catching any real error (a wrong op moves outputs by >= 1e-3 on these fixtures).
PARITY_ATOL = 1e-4
# Tighter bound we actually expect and check too: a few times the official float32 gap.
ROUNDING_ATOL = 2e-6

# bfloat16 compute (config.model.dtype='bfloat16', float32 params) on the released fixture, against the
# official float64 outputs: measured 4.3e-3 max / 3.3e-4 mean error (benchmarks/bf16_precision.py,
# docs/precision.md), i.e. 1.1 and 0.08 grey levels of 255. bfloat16 keeps 8 significant bits (a relative
# rounding of 2^-9 = 2e-3 per stored activation), so the error is rounding, not a wrong op (which moves outputs
# by >= 1e-3 on average); the bounds are about twice the measured errors.
BF16_MAX_ATOL = 1e-2
BF16_MEAN_ATOL = 7e-4

RELEASED_USED_PARAMS = 6_750_742 - 1_216  # REFERENCE.md 5.3 minus the never-used attn.norm LayerNorms
# Model config fields that change how the network computes, not its parameters (absent from the fixtures).
COMPUTE_ONLY_FIELDS = ('dtype', 'layer_impl')


def _to_channels_last(x):
  return np.asarray(x).transpose(0, 1, 3, 4, 2)


def _load_fixture(npz_path, manifest_path):
  manifest = json.loads(manifest_path.read_text())
  model_config = convert.model_config_from_official(manifest['config'])
  data = np.load(npz_path)
  params = convert.torch_to_flax(convert.load_state_dict(str(npz_path)), model_config)
  inputs = {k: _to_channels_last(data[f'input/{k}']) for k in ('ir', 'vi')}
  outputs = {k: _to_channels_last(data[f'output/{k}']) for k in ('fusion', 'ir', 'vi')}
  return model_config, params, inputs, outputs


def _check_parity(model_config, params, inputs, outputs, gap):
  model = VideoFusion(**model_config)
  # IR goes in as one grey channel: the network replicates it to the 3 identical channels of the release.
  result = jax.jit(model.apply)({'params': params}, inputs['ir'][..., :1], inputs['vi'])
  for key, expected in outputs.items():
    got = np.asarray(result[key])
    assert got.shape == expected.shape
    err = np.abs(got - expected).max()
    assert err <= PARITY_ATOL, (key, err)
    assert err <= max(ROUNDING_ATOL, 10 * gap[key]['f32_vs_f64_maxabs']), (key, err)


@pytest.fixture(scope='module')
def tiny_fixture():
  manifest = LOCAL_FIXTURES / 'videofusion_tiny_manifest.json'
  loaded = _load_fixture(LOCAL_FIXTURES / 'videofusion_tiny_T3_32.npz', manifest)
  return loaded + (json.loads(manifest.read_text())['determinism_and_precision'],)


# Both formulations of Conv3D and the depthwise convs (layers.resolve_layer_impl) against the official outputs,
# with the same float32 rounding bounds: they change only the order of float32 sums.
@pytest.mark.parametrize('layer_impl', ['cpu_tuned', 'xla'])
def test_tiny_fixture_parity(tiny_fixture, layer_impl):
  cfg, params, inputs, outputs, gap = tiny_fixture
  assert cfg == {k: v for k, v in m3svd.tiny_model().items() if k not in COMPUTE_ONLY_FIELDS}, 'tiny != fixture'
  _check_parity(dict(cfg, layer_impl=layer_impl), params, inputs, outputs, gap)


def test_released_fixture_parity():
  npz = shared_fixture('videofusion_released_T5_64.npz')
  manifest = shared_fixture('videofusion_released_manifest.json')
  cfg, params, inputs, outputs = _load_fixture(npz, manifest)
  assert cfg == {k: v for k, v in m3svd.released_model().items() if k not in COMPUTE_ONLY_FIELDS}, 'config != release'
  _check_parity(cfg, params, inputs, outputs, json.loads(manifest.read_text())['determinism_and_precision'])


def test_released_fixture_bfloat16_error_is_bounded():
  npz = shared_fixture('videofusion_released_T5_64.npz')
  cfg, params, inputs, outputs = _load_fixture(npz, shared_fixture('videofusion_released_manifest.json'))
  model = VideoFusion(**dict(cfg, dtype='bfloat16'))
  result = jax.jit(model.apply)({'params': params}, inputs['ir'][..., :1], inputs['vi'])
  errors = {k: np.abs(np.asarray(result[k], np.float64) - outputs[k]) for k in outputs}
  assert all(result[k].dtype == jnp.float32 for k in result)  # outputs come back in float32
  assert max(e.max() for e in errors.values()) <= BF16_MAX_ATOL, {k: e.max() for k, e in errors.items()}
  assert np.mean([e.mean() for e in errors.values()]) <= BF16_MEAN_ATOL, {k: e.mean() for k, e in errors.items()}
  # ... and it is bfloat16 rounding, not float32: a float32 forward sits 1e4 times closer.
  assert min(e.max() for e in errors.values()) > 100 * ROUNDING_ATOL


def _param_count(model_config):
  shapes = convert.expected_param_shapes(model_config)
  return sum(int(np.prod(s)) for s in shapes.values()), len(shapes)


def test_released_parameter_count():
  count, tensors = _param_count(m3svd.released_model())
  assert count == RELEASED_USED_PARAMS == 6_749_526
  assert tensors == 464 - 14  # 464 official tensors minus 7 unused LayerNorms x (weight, bias)


@pytest.fixture(scope='module')
def tiny():
  cfg = m3svd.tiny_model()
  model = VideoFusion(**cfg)
  x = jnp.zeros((1, 2, 8, 8, 3))
  params = nn.unbox(model.init(jax.random.key(0), x, x)['params'])
  return cfg, model, params


@pytest.mark.parametrize('ir_shape, vi_shape, message', [
    ((1, 1, 8, 8, 1), (1, 1, 8, 8, 3), 'at least 2 frames'),
    ((1, 2, 6, 8, 1), (1, 2, 6, 8, 3), 'multiples of 4'),
    ((1, 2, 8, 10, 1), (1, 2, 8, 10, 3), 'multiples of 4'),
    ((1, 2, 8, 8, 2), (1, 2, 8, 8, 3), 'ir must have 1 or 3 channels'),
    ((1, 2, 8, 8, 1), (1, 2, 8, 8, 1), 'vi must have 3 channels'),
    ((1, 2, 8, 8, 1), (1, 3, 8, 8, 3), 'same (B, T, H, W)'),
    ((2, 8, 8, 1), (2, 8, 8, 3), '5-D'),
])
def test_bad_shapes_raise(tiny, ir_shape, vi_shape, message):
  _, model, params = tiny
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    model.apply({'params': params}, jnp.zeros(ir_shape), jnp.zeros(vi_shape))


def test_bad_values_raise(tiny):
  _, model, params = tiny
  ok = np.zeros((1, 2, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match='float'):
    model.apply({'params': params}, ok.astype(np.uint8), ok)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    model.apply({'params': params}, ok + 2.0, ok)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    vfusion_jax.fuse(params, m3svd.tiny_model(), ok, ok * np.nan)


def test_fuse_pads_and_crops(tiny):
  cfg, model, params = tiny
  rng = np.random.default_rng(0)
  ir = rng.uniform(size=(2, 10, 14, 1)).astype(np.float32)  # unbatched, H and W not multiples of 4
  vi = rng.uniform(size=(2, 10, 14, 3)).astype(np.float32)
  out = vfusion_jax.fuse(params, {'model': cfg}, ir, vi)
  assert set(out) == {'fusion', 'ir', 'vi'}
  for value in out.values():
    assert value.shape == (2, 10, 14, 3)
    assert np.all((value > 0) & (value < 1))
  # Independent padding: numpy reflect (torch 'reflect') to 12 x 16, run the module, crop.
  pad = ((0, 0), (0, 2), (0, 2), (0, 0))
  ref = model.apply({'params': params}, np.pad(ir, pad, mode='reflect')[None], np.pad(vi, pad, mode='reflect')[None])
  for key in out:
    np.testing.assert_allclose(out[key], np.asarray(ref[key])[0, :, :10, :14], atol=1e-6)


def test_bfloat16_compute_keeps_float32_params(tiny):
  cfg, _, params = tiny
  cfg_bf16 = dict(cfg, dtype='bfloat16')
  model = VideoFusion(**cfg_bf16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  rng = np.random.default_rng(1)
  ir = rng.uniform(size=(1, 2, 8, 8, 1)).astype(np.float32)
  vi = rng.uniform(size=(1, 2, 8, 8, 3)).astype(np.float32)
  out16 = model.apply({'params': params}, ir, vi)
  out32 = VideoFusion(**cfg).apply({'params': params}, ir, vi)
  for key in out32:
    assert out16[key].dtype == jnp.float32
    # bfloat16 has an 8-bit mantissa: outputs agree to ~1e-2, not to float32 rounding.
    np.testing.assert_allclose(np.asarray(out16[key]), np.asarray(out32[key]), atol=3e-2)


def test_traced_graph_does_not_grow_with_time(tiny):
  _, model, params = tiny

  def count(t):
    x = jax.ShapeDtypeStruct((1, t, 8, 8, 3), jnp.float32)
    return len(jax.make_jaxpr(model.apply)({'params': params}, x, x).jaxpr.eqns)

  assert count(2) == count(9)


def test_checkpoint_written_before_layer_impl_loads(tiny, tmp_path):
  """A config.json without layer_impl (older checkpoints, the converter's fixtures) loads; the network is 'auto'."""
  cfg, _, params = tiny
  assert cfg.layer_impl == 'auto'
  older = {k: v for k, v in cfg.items() if k != 'layer_impl'}
  checkpoint.save_inference_checkpoint(tmp_path / 'ckpt', params, older)
  loaded, stored = checkpoint.load_inference_checkpoint(tmp_path / 'ckpt', dict(cfg, layer_impl='xla'))
  assert 'layer_impl' not in stored and VideoFusion(**stored).layer_impl == 'auto'
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded, params))
