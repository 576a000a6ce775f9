"""Tests of vfusion_jax.losses against the official-loss fixture and by hand."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from vfusion_jax import losses

FIXTURE_DIR = Path(__file__).resolve().parents[2] / 'shared' / 'fixtures'
FIXTURE = FIXTURE_DIR / 'videofusion_losses_B2_T4_48.npz'

# Float32 JAX vs the official float64 values. The manifest's float32_vs_float64
# notes: torch float32 itself is off by <= 1.1e-7 relative on the L1/Sobel/
# temporal terms and by <= 1.8e-6 on the SSIM terms (E[x^2] - mu^2
# cancellation); summation order differs between frameworks, so 1e-5 relative
# leaves a 5x margin over the worst float32 term (measured here: 3.2e-7).
RTOL_F32 = 1e-5
# Gradients: torch float32 vs float64 differs by <= 1.1e-7 absolute (fusion)
# on gradients of magnitude <= 7.1e-3. A single mis-handled non-smooth point
# (sign flip of one L1 element, |x| derivative at 0, clamp boundary) changes a
# gradient entry by >= 0.114 / (B T H W) = 6e-6, so 1e-6 is above float32
# noise (measured: 2.2e-8) and below any convention error.
GRAD_ATOL_F32 = 1e-6
# Float64 JAX vs float64 torch with the same float32-built window: only
# rounding (manifest spec_check: <= 4e-15).
ATOL_F64 = 1e-12

N_ELEMENTS_PER_MAP = 2 * 4 * 48 * 48


def _torch_to_nthwc(x, dtype=np.float32):
  return jnp.asarray(x.transpose(0, 1, 3, 4, 2).astype(dtype))


@pytest.fixture(scope='module')
def fixture():
  if not FIXTURE.exists():
    pytest.skip(f'loss fixture not found at {FIXTURE} (the shared/ folder '
                'must sit beside the repository)')
  return dict(np.load(FIXTURE))


def _inputs(fx, dtype=np.float32):
  outputs = {
      'fusion': _torch_to_nthwc(fx['input/fusion'], dtype),
      'ir': _torch_to_nthwc(fx['input/ir_out'], dtype),
      'vi': _torch_to_nthwc(fx['input/vi_out'], dtype),
  }
  # The project's IR ground truth is single-channel; the official one has
  # three bit-identical channels.
  batch = {
      'ir_gt': _torch_to_nthwc(fx['input/ir_gt'], dtype)[..., :1],
      'vi_gt': _torch_to_nthwc(fx['input/vi_gt'], dtype),
  }
  return outputs, batch


@pytest.fixture(scope='module')
def inputs(fixture):
  return _inputs(fixture)


def _released_value_grad_parts(outputs, batch):
  """(total, terms), d total / d outputs, parts: one compilation for all."""
  cfg = losses.default_loss_config()
  (total, terms), grads = jax.value_and_grad(
      lambda o: losses.compute_loss(o, batch, cfg), has_aux=True)(outputs)
  return total, terms, grads, losses.released_loss_parts(outputs, batch)


@jax.jit
def _released_f32(outputs, batch):
  total, terms, grads, parts = _released_value_grad_parts(outputs, batch)
  # Same loss with the official 3-channel IR ground truth.
  batch3 = dict(batch, ir_gt=jnp.repeat(batch['ir_gt'], 3, axis=-1))
  _, terms3 = losses.compute_loss(outputs, batch3,
                                  losses.default_loss_config())
  return total, {**terms, **parts}, grads, terms3


@pytest.fixture(scope='module')
def released_f32(inputs):
  return _released_f32(*inputs)


def _fixture_keys(fx, prefix):
  keys = [k for k in fx if k.startswith(prefix)]
  assert keys
  return keys


def test_released_terms_match_fixture(fixture, released_f32):
  total, terms, _, _ = released_f32
  for key in _fixture_keys(fixture, 'loss/'):
    name = key[len('loss/'):]
    assert terms[name].dtype == jnp.float32
    np.testing.assert_allclose(float(terms[name]), fixture[key],
                               rtol=RTOL_F32, err_msg=name)
  assert float(total) == float(terms['l_total'])


def test_released_term_names(released_f32):
  _, terms, _, _ = released_f32
  for key in losses.RELEASED_LOGGED_KEYS + ('l_total',):
    assert key in terms
    assert terms[key].shape == ()


def test_paper_terms_match_fixture(fixture, inputs):
  cfgs = {}
  for normalisation in losses.PAPER_NORMALISATIONS:
    cfgs[normalisation] = losses.default_loss_config('paper')
    cfgs[normalisation].paper_normalisation = normalisation

  @jax.jit
  def both(outputs, batch):
    return {n: losses.compute_loss(outputs, batch, c) for n, c in cfgs.items()}

  results = both(*inputs)
  for normalisation, prefix in (('literal', 'paper_loss/'),
                                ('mean', 'paper_loss_mean/')):
    total, terms = results[normalisation]
    terms = dict(terms, L_total=total)
    for key in _fixture_keys(fixture, prefix):
      name = key[len(prefix):]
      np.testing.assert_allclose(float(terms[name]), fixture[key],
                                 rtol=RTOL_F32, err_msg=f'{prefix}{name}')


def test_released_gradients_match_fixture(fixture, released_f32):
  grads = released_f32[2]
  for name, ref_key in (('fusion', 'grad/fusion'), ('ir', 'grad/ir_out'),
                        ('vi', 'grad/vi_out')):
    ref = fixture[ref_key].transpose(0, 1, 3, 4, 2)
    np.testing.assert_allclose(np.asarray(grads[name]), ref, rtol=0,
                               atol=GRAD_ATOL_F32, err_msg=name)


def test_float64_matches_fixture_to_rounding(fixture):
  with jax.enable_x64(True):
    total, terms, grads, _ = jax.jit(_released_value_grad_parts)(
        *_inputs(fixture, np.float64))
    assert total.dtype == jnp.float64
    for key in _fixture_keys(fixture, 'loss/'):
      name = key[len('loss/'):]
      if name.startswith('part_'):
        continue
      np.testing.assert_allclose(float(terms[name]), fixture[key], rtol=0,
                                 atol=ATOL_F64, err_msg=name)
    for name, ref_key in (('fusion', 'grad/fusion'), ('ir', 'grad/ir_out'),
                          ('vi', 'grad/vi_out')):
      np.testing.assert_allclose(
          np.asarray(grads[name]),
          fixture[ref_key].transpose(0, 1, 3, 4, 2), rtol=0, atol=ATOL_F64,
          err_msg=name)


def test_three_channel_ir_gt_is_equivalent(released_f32):
  _, terms, _, terms3 = released_f32
  for key in losses.RELEASED_LOGGED_KEYS:
    np.testing.assert_allclose(float(terms3[key]), float(terms[key]),
                               rtol=1e-6, err_msg=key)


def test_ssim_window_is_torch_window(fixture):
  window = losses.gaussian_window(13, 1.5)
  assert window.dtype == np.float32
  np.testing.assert_array_equal(window, fixture['const/ssim_window_13x13'])


def test_sobel_on_ramp_by_hand():
  a, b = 0.25, 0.5
  rows, cols = np.meshgrid(np.arange(5.0), np.arange(6.0), indexing='ij')
  ramp = (a * rows + b * cols).astype(np.float32)
  # Interior: weights (1, 2, 1) times a two-pixel difference = 8 * slope.
  # Border with replicate padding: a one-pixel difference = 4 * slope.
  expected_gx = np.full(ramp.shape, 8 * b, np.float32)
  expected_gx[:, [0, -1]] = 4 * b
  expected_gy = np.full(ramp.shape, 8 * a, np.float32)
  expected_gy[[0, -1], :] = 4 * a
  gx, gy = losses.sobel(jnp.asarray(-ramp)[None, :, :, None])
  np.testing.assert_allclose(np.asarray(gx)[0, ..., 0], expected_gx, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gy)[0, ..., 0], expected_gy, atol=1e-6)
  sgx, sgy = losses.sobel_xy(jnp.asarray(-ramp)[None, :, :, None])
  assert np.all(np.asarray(sgx) < 0) and np.all(np.asarray(sgy) < 0)


def test_sobel_abs_has_zero_gradient_on_flat_image():
  grad = jax.jit(jax.grad(lambda x: jnp.sum(sum(losses.sobel(x)))))(
      jnp.full((1, 4, 4, 1), 0.3))
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


def _numpy_ssim(x, y, window):
  """Independent float64 SSIM of (H, W) maps, valid correlation."""
  def filt(z):
    return signal.correlate2d(z, window, mode='valid')
  mu1, mu2 = filt(x), filt(y)
  s11 = filt(x * x) - mu1 ** 2
  s22 = filt(y * y) - mu2 ** 2
  s12 = filt(x * y) - mu1 * mu2
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  return np.mean((2 * mu1 * mu2 + c1) * (2 * s12 + c2)
                 / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2)))


def test_ssim_identity_and_numpy_reference():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 20, 17, 3)).astype(np.float32)
  y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
  np.testing.assert_allclose(
      float(losses.ssim(jnp.asarray(x), jnp.asarray(x))), 1.0, atol=1e-6)
  window = losses.gaussian_window().astype(np.float64)
  expected = np.mean([
      _numpy_ssim(x[n, ..., c].astype(np.float64),
                  y[n, ..., c].astype(np.float64), window)
      for n in range(2) for c in range(3)])
  np.testing.assert_allclose(
      float(losses.ssim(jnp.asarray(x), jnp.asarray(y))), expected, rtol=1e-5)


def test_ssim_rejects_small_images():
  with pytest.raises(ValueError):
    losses.ssim(jnp.zeros((1, 12, 20, 1)), jnp.zeros((1, 12, 20, 1)))


def test_ycbcr_values_and_clamp():
  grey = 0.4
  ycc = np.asarray(losses.rgb_to_ycbcr(jnp.array([grey, grey, grey])))
  np.testing.assert_allclose(ycc, [grey, 128 / 255, 128 / 255], atol=1e-6)
  blue = jnp.array([0.0, 0.0, 1.0])
  # Unclamped Cb(blue) = 0.5 + 128/255 > 1; clamped to 1 with zero gradient.
  assert float(losses.rgb_to_ycbcr(blue, clamp=False)[1]) > 1.0
  assert float(losses.rgb_to_ycbcr(blue)[1]) == 1.0
  grad_cb = jax.jit(jax.grad(lambda c: losses.rgb_to_ycbcr(c)[1]))
  np.testing.assert_array_equal(np.asarray(grad_cb(blue)), 0.0)
  np.testing.assert_allclose(np.asarray(grad_cb(jnp.full(3, grey))),
                             [-0.169, -0.331, 0.5], rtol=1e-6)
  # torch.clamp passes the gradient on the boundary itself.
  black = jnp.zeros(3)
  np.testing.assert_allclose(
      np.asarray(jax.jit(jax.grad(lambda c: losses.rgb_to_ycbcr(c)[0]))(black)),
      [0.299, 0.587, 0.114], rtol=1e-6)


def test_gradient_magnitude_is_safe_at_zero():
  flat = jnp.full((1, 5, 5, 1), 0.5)
  grad = jax.jit(jax.grad(
      lambda x: jnp.sum(losses.gradient_magnitude(x))))(flat)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)
  smooth = jax.jit(lambda x: losses.gradient_magnitude(x, eps=1e-6))(flat)
  np.testing.assert_allclose(np.asarray(smooth), 1e-3, rtol=1e-5)


def test_paper_loss_gradients_finite_on_flat_video():
  shape = (1, 3, 16, 16, 3)
  outputs = {k: jnp.full(shape, 0.5) for k in ('fusion', 'ir', 'vi')}
  batch = {'ir_gt': jnp.full(shape[:-1] + (1,), 0.5),
           'vi_gt': jnp.full(shape, 0.5)}
  cfg = losses.default_loss_config('paper')
  grads = jax.jit(jax.grad(
      lambda o: losses.compute_loss(o, batch, cfg)[0]))(outputs)
  for g in grads.values():
    assert np.all(np.isfinite(np.asarray(g)))


def test_default_configs_and_errors(inputs):
  released = losses.default_loss_config()
  assert released.name == 'released'
  assert (released.weights.intensity_max, released.weights.color,
          released.weights.temporal) == (15.0, 100.0, 10.0)
  paper = losses.default_loss_config('paper')
  assert dict(paper.weights) == {'intensity': 15.0, 'grad': 1.0,
                                 'color': 100.0, 'fidelity': 10.0,
                                 'temporal': 100.0}
  with pytest.raises(ValueError):
    losses.default_loss_config('nope')
  outputs, batch = inputs
  one_frame = ({k: v[:, :1] for k, v in outputs.items()},
               {k: v[:, :1] for k, v in batch.items()})
  with pytest.raises(ValueError):
    losses.compute_loss(*one_frame, released)
  released.name = 'nope'
  with pytest.raises(ValueError):
    losses.compute_loss(outputs, batch, released)
