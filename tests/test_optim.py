"""Tests of vfusion_jax.optim against REFERENCE.md §7 and PyTorch formulas."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vfusion_jax import optim

# REFERENCE.md §7: lr of the k-th optimiser step (k = 1, 2, ...), as printed.
REFERENCE_LR = (
    (1, '2.0e-8'), (2500, '5.0e-5'), (5000, '9.998e-5'), (50000, '9.758e-5'),
    (100000, '9.055e-5'), (117000, '8.72e-5'), (233000, '5.58e-5'),
    (500000, '1e-6'))


# One AdamW step vs float64 PyTorch formulas. Float32 rounding of the Adam
# direction is ~1e-7 relative; optax.adamw's float32 bias correction would be
# ~6e-6 off (see vfusion_jax.optim), so RTOL_STEP = 2e-6 tells them apart.
# Where the decay and Adam terms cancel, the error is relative to the terms
# (|adam| <= ~1, so ~1e-7 * lr), hence an absolute floor proportional to lr.
RTOL_STEP = 2e-6
ATOL_PER_LR = 1e-6


def _half_unit_in_last_place(printed):
  mantissa, exponent = printed.split('e')
  decimals = len(mantissa.split('.')[1]) if '.' in mantissa else 0
  return 0.5 * 10.0 ** (int(exponent) - decimals)


def _spec_lr(k):
  """REFERENCE.md §7 formula in float64."""
  if k < 5000:
    return 1e-4 * k / 5000
  return 1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * (k - 1) / 500000))


def test_released_schedule_reference_values():
  schedule = jax.jit(optim.make_schedule(optim.default_optim_config()))
  for k, printed in REFERENCE_LR:
    lr = float(schedule(k - 1))
    assert abs(lr - float(printed)) <= _half_unit_in_last_place(printed), k
    np.testing.assert_allclose(lr, _spec_lr(k), rtol=1e-5, err_msg=str(k))


def test_released_schedule_warmup_boundary():
  schedule = optim.make_schedule(optim.default_optim_config())
  counts = jnp.arange(4997, 5003)
  expected = [_spec_lr(int(c) + 1) for c in counts]
  np.testing.assert_allclose(np.asarray(schedule(counts)), expected, rtol=1e-6)


def test_paper_and_constant_schedules():
  cfg = optim.default_optim_config()
  cfg.schedule = 'paper'
  with pytest.raises(ValueError):
    optim.make_schedule(cfg)
  cfg.total_steps = 1000
  schedule = optim.make_schedule(cfg)
  np.testing.assert_allclose(
      [float(schedule(c)) for c in (0, 500, 1000, 2000)],
      [1e-4, 5.5e-5, 1e-5, 1e-5], rtol=1e-5)
  cfg.schedule = 'constant'
  assert float(optim.make_schedule(cfg)(123)) == pytest.approx(1e-4)
  cfg.schedule = 'nope'
  with pytest.raises(ValueError):
    optim.make_schedule(cfg)


def _torch_clip(grads, max_norm):
  """torch.nn.utils.clip_grad_norm_ (norm_type 2, foreach), float64."""
  total = np.linalg.norm([np.linalg.norm(g) for g in grads])
  coef = min(max_norm / (total + 1e-6), 1.0)
  return [g * coef for g in grads]


def _torch_adamw(params, grads, state, lr, b1, b2, eps, wd):
  """torch.optim.AdamW single-tensor step, float64."""
  step, ms, vs = state
  step += 1
  new_params, new_ms, new_vs = [], [], []
  for p, g, m, v in zip(params, grads, ms, vs):
    p = p * (1 - lr * wd)
    m = m + (g - m) * (1 - b1)
    v = v * b2 + (1 - b2) * g * g
    step_size = lr / (1 - b1 ** step)
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** step) + eps
    new_params.append(p - step_size * m / denom)
    new_ms.append(m)
    new_vs.append(v)
  return new_params, (step, new_ms, new_vs)


def _check_against_torch(cfg, grad_scales, lrs, rtol, opt=None,
                         atol_per_lr=ATOL_PER_LR):
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(3, 4)).astype(np.float32),
            'b': rng.normal(size=(4,)).astype(np.float32)}
  opt = opt or optim.make_optimizer(cfg)
  state = opt.init(params)
  update = jax.jit(opt.update)
  jax_params = jax.tree.map(jnp.asarray, params)
  ref_params = [params['b'].astype(np.float64), params['w'].astype(np.float64)]
  ref_state = (0, [np.zeros_like(p) for p in ref_params],
               [np.zeros_like(p) for p in ref_params])
  for scale, lr in zip(grad_scales, lrs):
    grads = {'w': (scale * rng.normal(size=(3, 4))).astype(np.float32),
             'b': (scale * rng.normal(size=(4,))).astype(np.float32)}
    updates, state = update(grads, state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
    ref_grads = _torch_clip([grads['b'].astype(np.float64),
                             grads['w'].astype(np.float64)],
                            cfg.grad_clip_norm)
    old = ref_params
    ref_params, ref_state = _torch_adamw(
        ref_params, ref_grads, ref_state, lr, cfg.b1, cfg.b2, cfg.eps,
        cfg.weight_decay)
    for name, i in (('b', 0), ('w', 1)):
      np.testing.assert_allclose(
          np.asarray(updates[name], np.float64), ref_params[i] - old[i],
          rtol=rtol, atol=atol_per_lr * lr, err_msg=name)


def test_adamw_clip_matches_torch_formulas():
  # Constant lr and a large weight decay so every ingredient is visible:
  # clipping active (scale 1) or not (scale 1e-3, norm < 0.01), bias
  # correction over several steps, decoupled decay multiplied by lr.
  cfg = optim.default_optim_config()
  cfg.schedule = 'constant'
  cfg.learning_rate = 1e-2
  cfg.weight_decay = 0.5
  _check_against_torch(cfg, grad_scales=(1.0, 1e-3, 2.0, 0.5),
                       lrs=(1e-2,) * 4, rtol=RTOL_STEP)


def test_optax_adamw_decay_is_torch_decoupled_decay():
  # optax.adamw multiplies the weight decay by the (scheduled) lr like
  # PyTorch; it differs only by its float32 bias correction (~1e-5 relative
  # here), far below the lr * wd * p = 5e-3 * |p| a non-decoupled decay
  # would change.
  cfg = optim.default_optim_config()
  cfg.schedule = 'constant'
  cfg.learning_rate = 1e-2
  cfg.weight_decay = 0.5
  opt = optax.chain(
      optim.clip_by_global_norm_torch(cfg.grad_clip_norm),
      optax.adamw(optim.make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay))
  _check_against_torch(cfg, grad_scales=(1.0, 1e-3, 2.0, 0.5),
                       lrs=(1e-2,) * 4, rtol=5e-5, opt=opt,
                       atol_per_lr=1e-5)
  params = {'p': jnp.ones(3)}
  assert (jax.tree.structure(opt.init(params))
          == jax.tree.structure(optim.make_optimizer(cfg).init(params)))


def test_first_released_update_uses_k_equals_one():
  cfg = optim.default_optim_config()
  _check_against_torch(cfg, grad_scales=(1.0, 1.0),
                       lrs=(_spec_lr(1), _spec_lr(2)), rtol=RTOL_STEP)


def test_clip_uses_torch_epsilon():
  grads = {'a': jnp.array([0.006, 0.008])}  # Global norm exactly 0.01.
  clip = optim.clip_by_global_norm_torch(0.01)
  clipped, _ = clip.update(grads, clip.init(grads))
  np.testing.assert_allclose(np.asarray(clipped['a']),
                             np.array([0.006, 0.008]) * 0.01 / (0.01 + 1e-6),
                             rtol=1e-6)
  small = {'a': jnp.array([0.003, 0.004])}
  unchanged, _ = clip.update(small, clip.init(small))
  np.testing.assert_array_equal(np.asarray(unchanged['a']),
                                np.asarray(small['a']))


def test_optimizer_accepts_parent_config_and_no_clip():
  parent = ml_collections.ConfigDict(
      {'optim': optim.default_optim_config()})
  parent.optim.grad_clip_norm = None
  opt = optim.make_optimizer(parent)
  params = {'p': jnp.ones(2)}
  updates, _ = opt.update({'p': jnp.full(2, 10.0)}, opt.init(params), params)
  # Adam's first step is lr * sign(g) (+ decay), independent of |g|.
  np.testing.assert_allclose(np.asarray(updates['p']),
                             -2e-8 * (1 + 1e-5), rtol=1e-5)
