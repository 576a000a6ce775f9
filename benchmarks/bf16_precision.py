r"""Forward error of bfloat16 compute against the official float64 outputs, op group by op group.

  python benchmarks/bf16_precision.py                 # the released fixture (../shared/fixtures)
  python benchmarks/bf16_precision.py --fixture=tests/fixtures/videofusion_tiny_T3_32.npz

``config.model.dtype='bfloat16'`` keeps four groups of operations in float32 (docs/precision.md): LayerNorm
statistics, the channel-attention logits (Gram matrix, L2 normalisation) and their softmax, the pooled means
of CBAM and of the aggregation weights, and the (tanh + 1) / 2 output head. Each variant below computes one
of the first three groups in bfloat16 instead, so the table shows what each float32 island buys. Errors are
max and mean |output - golden| over the three outputs (fusion, ir, vi), against the official model run in
float64; the float32 row is the reference's own rounding level. Prints a Markdown table.
"""

import argparse
import contextlib
import json
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position

from vfusion_jax import convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax.models import VideoFusion  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax.models import blocks  # pylint: disable=g-import-not-at-top,wrong-import-position
from vfusion_jax.models import layers  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_FIXTURE = REPO.parent / 'shared' / 'fixtures' / 'videofusion_released_T5_64.npz'


class _LayerNormInComputeDtype(layers.LayerNorm):
  """LayerNorm whose statistics are computed in the input's dtype (the ablation of its float32 island)."""

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    weight = self.param('scale', jax.nn.initializers.ones, (features,), jnp.float32).astype(x.dtype)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    inv = jax.lax.rsqrt(var + self.epsilon)
    if self.layernorm_type == 'BiasFree':
      return x * inv * weight
    bias = self.param('bias', jax.nn.initializers.zeros, (features,), jnp.float32).astype(x.dtype)
    return (x - mean) * inv * weight + bias


def _logits_in_compute_dtype(q, k, temperature, heads):
  """``blocks._attention_logits`` with the Gram product, norms and logits in q's dtype (softmax follows)."""
  *batch, h, w, c = q.shape
  ch = c // heads
  q2 = q.reshape(*batch, h * w, c)
  k2 = k.reshape(*batch, h * w, c)
  gram = jnp.einsum('...nc,...nd->...cd', q2, k2, preferred_element_type=q.dtype)
  gram = jnp.einsum('...hihj->...hij', gram.reshape(*batch, heads, ch, heads, ch))
  norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(x), axis=-2))
  q_inv = 1.0 / jnp.maximum(norm(q2), blocks._L2_EPS).reshape(*batch, heads, ch)  # pylint: disable=protected-access
  k_inv = 1.0 / jnp.maximum(norm(k2), blocks._L2_EPS).reshape(*batch, heads, ch)  # pylint: disable=protected-access
  return gram * q_inv[..., :, None] * k_inv[..., None, :] * temperature[:, None, None].astype(q.dtype)


def _mean_in_compute_dtype(x, axis):
  return jnp.mean(x, axis=axis, keepdims=True)


@contextlib.contextmanager
def _patched(module, name, value):
  original = getattr(module, name)
  setattr(module, name, value)
  try:
    yield
  finally:
    setattr(module, name, original)


# name -> (compute dtype, the float32 islands turned to bfloat16)
VARIANTS = {
    'float32': ('float32', ()),
    'bfloat16 (project policy)': ('bfloat16', ()),
    'bfloat16, LayerNorm statistics in bf16': ('bfloat16', ('layernorm',)),
    'bfloat16, attention logits + softmax in bf16': ('bfloat16', ('attention',)),
    'bfloat16, pooled means in bf16': ('bfloat16', ('means',)),
    'bfloat16, no float32 islands': ('bfloat16', ('layernorm', 'attention', 'means')),
}


def _ablations(groups):
  stack = contextlib.ExitStack()
  if 'layernorm' in groups:
    stack.enter_context(_patched(layers, 'LayerNorm', _LayerNormInComputeDtype))
  if 'attention' in groups:
    stack.enter_context(_patched(blocks, '_attention_logits', _logits_in_compute_dtype))
  if 'means' in groups:
    stack.enter_context(_patched(blocks, '_mean_in_float32', _mean_in_compute_dtype))
  return stack


def load_fixture(npz_path: pathlib.Path):
  """(model config, params, inputs {'ir': (B,T,H,W,1), 'vi'}, golden outputs {'fusion','ir','vi'}) channels-last."""
  manifest_path = npz_path.with_name(npz_path.name.split('_T')[0] + '_manifest.json')
  config = convert.model_config_from_official(json.loads(manifest_path.read_text())['config'])
  data = np.load(npz_path)
  params = convert.torch_to_flax(convert.load_state_dict(str(npz_path)), config)
  to_last = lambda x: np.asarray(x).transpose(0, 1, 3, 4, 2)
  inputs = {'ir': to_last(data['input/ir'])[..., :1], 'vi': to_last(data['input/vi'])}
  golden = {k: to_last(data[f'output/{k}']) for k in ('fusion', 'ir', 'vi')}
  return config, params, inputs, golden


def forward_errors(config, params, inputs, golden, dtype: str, groups=()) -> dict:
  """max / mean |output - golden| over the three outputs for one variant."""
  with _ablations(groups):
    model = VideoFusion(**dict(config, dtype=dtype))
    out = jax.jit(model.apply)({'params': params}, inputs['ir'], inputs['vi'])
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
  errors = {k: np.abs(out[k] - golden[k]) for k in golden}
  return dict(max=max(float(e.max()) for e in errors.values()),
              mean=float(np.mean([e.mean() for e in errors.values()])),
              per_output={k: float(e.max()) for k, e in errors.items()})


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--fixture', type=pathlib.Path, default=DEFAULT_FIXTURE)
  args = parser.parse_args()
  if not args.fixture.exists():
    sys.exit(f'error: {args.fixture} does not exist (the shared fixtures sit in ../shared/fixtures)')
  config, params, inputs, golden = load_fixture(args.fixture)
  shape = inputs['vi'].shape
  print(f'{args.fixture.name}: B, T, H, W = {shape[:4]}, jax {jax.__version__}, {jax.devices()[0].device_kind}, '
        f'{os.cpu_count()} CPUs\n')
  print('| variant | max error | mean error | max error per output (fusion / ir / vi) |')
  print('|---|---|---|---|')
  for name, (dtype, groups) in VARIANTS.items():
    e = forward_errors(config, params, inputs, golden, dtype, groups)
    per = ' / '.join(f'{v:.2e}' for v in e['per_output'].values())
    print(f'| {name} | {e["max"]:.2e} | {e["mean"]:.2e} | {per} |', flush=True)


if __name__ == '__main__':
  main()
