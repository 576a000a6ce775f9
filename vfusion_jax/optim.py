"""Optimiser and learning-rate schedules of VideoFusion (REFERENCE.md §7).

The released recipe: global-norm gradient clipping to 0.01 with PyTorch's
``clip_grad_norm_`` formula, then AdamW (lr 1e-4, betas (0.9, 0.999),
eps 1e-8, decoupled weight decay 1e-5 on every parameter), with a
5,000-step linear warm-up followed by one cosine period of 500,000 steps down
to 1e-6 (basicsr ``CosineAnnealingRestartLR``). The paper instead states a
plain cosine from 1e-4 to 1e-5 over the run.

optax.adamw is AdamW with PyTorch's decoupled decay (update
-lr * (adam + wd * p), i.e. p <- p - lr * wd * p), but its bias corrections
1 - b^t are computed in float32 from the float32-rounded b2 = 0.99900001,
which makes 1 - b2^t about 1.3e-5 relatively too small for t << 1/(1 - b2)
(first updates scaled by ~1 + 6e-6 compared with PyTorch, whose corrections
are Python doubles). `scale_by_adam_torch` computes them as
-expm1(t * log(b)) with log(b) from the double value (~2e-7 relative), so the
updates match PyTorch to float32 rounding; the state is optax's
``ScaleByAdamState``, so the optimiser state has the same structure as
``optax.adamw``.

Step convention: optax hands a schedule the number of updates already applied
(``count`` = 0 for the first update); the official code numbers iterations
k = 1, 2, ... and uses lr(k) for the k-th update, so ``k = count + 1``.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('released', 'paper', 'constant')

# PyTorch `clip_grad_norm_` scales by max_norm / (total_norm + 1e-6).
TORCH_CLIP_EPS = 1e-6

# Released schedule (train_VideoFusion.yml + basicsr): peak lr, linear warm-up
# length, cosine period and floor (eta_min), all in optimiser steps.
RELEASED_PEAK_LR = 1e-4
RELEASED_WARMUP_STEPS = 5000
RELEASED_COSINE_PERIOD = 500000
RELEASED_END_LR = 1e-6
# Paper: cosine from the peak down to this value over the run.
PAPER_END_LR = 1e-5


def default_optim_config() -> ml_collections.ConfigDict:
  """Operative released optimiser settings (``config.optim``).

  Fields: AdamW ``learning_rate`` (peak), ``b1``, ``b2``, ``eps``,
  ``weight_decay`` (decoupled, multiplied by the current lr like PyTorch);
  ``grad_clip_norm`` (global L2 norm, None or 0 disables) and
  ``grad_clip_eps`` (PyTorch's 1e-6 in the clip coefficient; 0 gives optax's
  ``clip_by_global_norm``); ``schedule`` in `SCHEDULES`; released schedule:
  ``warmup_steps``, ``cosine_period``, ``end_learning_rate`` (eta_min);
  paper schedule: ``paper_end_learning_rate`` and ``total_steps`` (the
  number of optimiser steps of the run, must be set by the caller).
  """
  return ml_collections.ConfigDict({
      'learning_rate': RELEASED_PEAK_LR,
      'b1': 0.9,
      'b2': 0.999,
      'eps': 1e-8,
      'weight_decay': 1e-5,
      'grad_clip_norm': 0.01,
      'grad_clip_eps': TORCH_CLIP_EPS,
      'schedule': 'released',
      'warmup_steps': RELEASED_WARMUP_STEPS,
      'cosine_period': RELEASED_COSINE_PERIOD,
      'end_learning_rate': RELEASED_END_LR,
      'paper_end_learning_rate': PAPER_END_LR,
      'total_steps': ml_collections.config_dict.placeholder(int),
  })


def _optim_config(config: Any) -> Any:
  """Accepts either the optimiser config itself or a parent with ``.optim``."""
  return config.optim if hasattr(config, 'optim') else config


def released_learning_rate(
    count: Any, peak: float = RELEASED_PEAK_LR,
    warmup_steps: int = RELEASED_WARMUP_STEPS,
    cosine_period: int = RELEASED_COSINE_PERIOD,
    end_learning_rate: float = RELEASED_END_LR) -> jax.Array:
  """Released lr for the update with optax step ``count`` (k = count + 1).

  k < warmup: peak * k / warmup; otherwise
  end + (peak - end) / 2 * (1 + cos(pi * (k - 1) / period)). Past one period
  (where basicsr would fail) the lr stays at ``end_learning_rate``.

  Args:
    count: int scalar (or array), number of updates already applied (>= 0).
    peak: initial (peak) learning rate.
    warmup_steps: linear warm-up length in steps (0 disables).
    cosine_period: cosine period in steps.
    end_learning_rate: cosine floor (eta_min).

  Returns:
    float32 learning rate(s), same shape as ``count``.
  """
  count = jnp.asarray(count)
  k = count + 1
  warmup = peak * k.astype(jnp.float32) / max(warmup_steps, 1)
  progress = jnp.minimum(count, cosine_period).astype(jnp.float32)
  cosine = end_learning_rate + 0.5 * (peak - end_learning_rate) * (
      1.0 + jnp.cos(math.pi * progress / cosine_period))
  return jnp.where(k < warmup_steps, warmup, cosine)


def make_schedule(config: Any) -> optax.Schedule:
  """Learning-rate schedule from ``config`` (an optim config or its parent).

  'released': `released_learning_rate`; 'paper': cosine from
  ``learning_rate`` to ``paper_end_learning_rate`` over ``total_steps``
  updates (count 0 -> peak, count total_steps -> end), no warm-up;
  'constant': ``learning_rate``.

  Returns:
    A function of the optax step count (int) returning a float32 lr.
  """
  cfg = _optim_config(config)
  peak = float(cfg.learning_rate)
  if cfg.schedule == 'released':
    warmup_steps = int(cfg.warmup_steps)
    cosine_period = int(cfg.cosine_period)
    end = float(cfg.end_learning_rate)

    def schedule(count):
      return released_learning_rate(count, peak, warmup_steps, cosine_period,
                                    end)

    return schedule
  if cfg.schedule == 'paper':
    if not cfg.total_steps:
      raise ValueError('optim.total_steps must be set for the paper schedule.')
    return optax.cosine_decay_schedule(
        init_value=peak, decay_steps=int(cfg.total_steps),
        alpha=float(cfg.paper_end_learning_rate) / peak)
  if cfg.schedule == 'constant':
    return optax.constant_schedule(peak)
  raise ValueError(f'Unknown schedule {cfg.schedule!r}; expected one of '
                   f'{SCHEDULES}.')


def clip_by_global_norm_torch(
    max_norm: float, eps: float = TORCH_CLIP_EPS
) -> optax.GradientTransformation:
  """PyTorch ``clip_grad_norm_``: g * min(1, max_norm / (||g||_2 + eps)).

  ||g||_2 is the global L2 norm over every leaf. Unlike
  ``optax.clip_by_global_norm`` (max_norm / ||g|| when ||g|| > max_norm), the
  eps makes the factor slightly below 1 even for ||g|| just under max_norm,
  as in the official training (relative difference eps / ||g||).
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    coef = jnp.minimum(max_norm / (norm + eps), 1.0)
    updates = jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def _bias_correction(b: float, count: jax.Array) -> jax.Array:
  """1 - b^count, accurate in float32 (b is a Python double)."""
  log_b = math.log(b) if b > 0.0 else -math.inf
  return -jnp.expm1(count.astype(jnp.float32) * log_b)


def scale_by_adam_torch(b1: float = 0.9, b2: float = 0.999,
                        eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam scaling with PyTorch's formulas (no lr, no weight decay).

  m <- m + (1 - b1)(g - m) (torch ``lerp_``), v <- b2 v + (1 - b2) g^2,
  update = (m / bc1) / (sqrt(v / bc2) + eps) with bc = 1 - b^t computed
  accurately (see the module docstring). State: ``optax.ScaleByAdamState``.
  """

  def init_fn(params):
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=optax.tree.zeros_like(params),
                                  nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: m + (1.0 - b1) * (g - m), updates,
                      state.mu)
    nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * (g * g), updates,
                      state.nu)
    count = optax.safe_increment(state.count)
    bc1 = _bias_correction(b1, count)
    bc2 = _bias_correction(b2, count)
    updates = jax.tree.map(
        lambda m, v: ((m / bc1) / (jnp.sqrt(v / bc2) + eps)).astype(m.dtype),
        mu, nu)
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adamw_torch(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8,
                weight_decay: float = 1e-2) -> optax.GradientTransformation:
  """PyTorch ``AdamW``: optax.adamw's chain with `scale_by_adam_torch`.

  Update -lr * (adam + wd * p), i.e. PyTorch's decoupled
  p <- p - lr * wd * p then p <- p - lr * adam with the same scheduled lr.
  """
  return optax.chain(scale_by_adam_torch(b1, b2, eps),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """Gradient clipping followed by AdamW, as the released training.

  Clipping: `clip_by_global_norm_torch`; AdamW: `adamw_torch` (PyTorch
  formulas, decoupled decay multiplied by the scheduled lr). Weight decay
  applies to all parameters (biases, norms and temperatures included).

  Args:
    config: the optim ConfigDict (`default_optim_config`) or a parent config
      with an ``optim`` field.

  Returns:
    An optax GradientTransformation; apply updates with
    ``optax.apply_updates`` (``update`` needs ``params`` for the decay).
  """
  cfg = _optim_config(config)
  adamw = adamw_torch(
      learning_rate=make_schedule(cfg), b1=float(cfg.b1), b2=float(cfg.b2),
      eps=float(cfg.eps), weight_decay=float(cfg.weight_decay))
  if not cfg.grad_clip_norm:
    return adamw
  clip = clip_by_global_norm_torch(float(cfg.grad_clip_norm),
                                   float(cfg.grad_clip_eps))
  return optax.chain(clip, adamw)
