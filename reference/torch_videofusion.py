r"""PyTorch reference of the official VideoFusion network and released loss, for benchmarking only.

What for: timing the Flax port against PyTorch on the same machine needs a PyTorch model that computes exactly
what the official release computes. This file is that model, written from REFERENCE.md (sections 1-6) in the
official layout: NCHW frames, (B, T, 3, H, W) video inputs/outputs (section 1.2), and module attribute names equal
to the official ones, so the official state-dict names (the fixtures' ``param/<name>`` arrays, or a released
``net_g_*.pth``) load with ``strict=True``. It is a reference, not part of the installed package: torch is not a
project requirement (``pip install .[torch]`` adds it); benchmarks/ and tests/test_torch_reference.py import it.

Verified against the golden fixtures of the official model (``../shared/fixtures``, see
``tests/test_torch_reference.py``): the forward pass of the tiny (T=3, 32x32) and released (T=5, 64x64) configs
matches the stored outputs to < 1e-6 max abs in float32, and ``released_loss`` matches every term of the
official training loss (B=2, T=4, 48x48) to < 1e-5 relative.

  python -m reference.torch_videofusion ../shared/fixtures/videofusion_tiny_T3_32.npz   # parity check, 1 thread

The never-called ``attn.norm`` LayerNorms of the Cross_TransformerBlocks (REFERENCE.md section 3) are created as
in the release so that the official state dict loads strictly; they do not take part in the forward pass.
"""

import argparse
import json
import math
import pathlib
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

# ----------------------------------------------------------------------------------------------------------------
# Network (REFERENCE.md sections 1-3). 2-D modules take (N, C, H, W) frames; N = B*T, b-major, unless stated.
# ----------------------------------------------------------------------------------------------------------------


def _conv1x1(cin: int, cout: int, bias: bool) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, bias=bias)


def _conv3x3(cin: int, cout: int, bias: bool) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


def _dwconv3x3(c: int, bias: bool) -> nn.Conv2d:
  return nn.Conv2d(c, c, 3, padding=1, groups=c, bias=bias)


def _split_heads(x: Tensor, heads: int) -> Tensor:
  """(N, C, H, W) -> (N, heads, C/heads, H*W); heads are contiguous channel blocks, pixels row-major (2.2)."""
  n, c, h, w = x.shape
  return x.reshape(n, heads, c // heads, h * w)


def _merge_heads(x: Tensor, h: int, w: int) -> Tensor:
  """(N, heads, ch, H*W) -> (N, heads*ch, H, W); inverse of `_split_heads`."""
  n, heads, ch, _ = x.shape
  return x.reshape(n, heads * ch, h, w)


def _channel_attention_map(q: Tensor, k: Tensor, temperature: Tensor) -> Tensor:
  """softmax(l2n(q) l2n(k)^T * temperature) over the last axis; q, k (N, h, ch, HW) -> (N, h, ch, ch).

  L2 normalisation over the spatial axis with eps 1e-12, no 1/sqrt(d) scale (2.3 steps 3-4).
  """
  q = F.normalize(q, dim=-1)
  k = F.normalize(k, dim=-1)
  return torch.softmax((q @ k.transpose(-2, -1)) * temperature, dim=-1)


def _to_frames(x: Tensor) -> Tensor:
  """(B, C, T, H, W) -> (B*T, C, H, W), index b*T + t (1.3 merging rule)."""
  b, c, t, h, w = x.shape
  return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _to_video(x: Tensor, b: int) -> Tensor:
  """(B*T, C, H, W) -> (B, C, T, H, W); inverse of `_to_frames`."""
  bt, c, h, w = x.shape
  return x.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)


class WithBiasLayerNorm(nn.Module):
  """Per-pixel LayerNorm over channels, biased variance, eps 1e-5 (2.1). Params `weight`, `bias` (C)."""

  def __init__(self, c: int):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(c))
    self.bias = nn.Parameter(torch.zeros(c))

  def forward(self, x: Tensor) -> Tensor:
    """(N, C, H, W) -> same."""
    mu = x.mean(dim=1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * self.weight[:, None, None] + self.bias[:, None, None]


class BiasFreeLayerNorm(nn.Module):
  """x / sqrt(var + 1e-5) * weight, x not centred, var around the mean (2.1). Param `weight` (C)."""

  def __init__(self, c: int):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(c))

  def forward(self, x: Tensor) -> Tensor:
    """(N, C, H, W) -> same."""
    var = x.var(dim=1, keepdim=True, unbiased=False)
    return x / torch.sqrt(var + 1e-5) * self.weight[:, None, None]


class LayerNorm(nn.Module):
  """Wrapper named like the release (`<norm>.body.weight`); any type other than 'BiasFree' is WithBias."""

  def __init__(self, c: int, layer_norm_type):
    super().__init__()
    self.body = BiasFreeLayerNorm(c) if layer_norm_type == 'BiasFree' else WithBiasLayerNorm(c)

  def forward(self, x: Tensor) -> Tensor:
    return self.body(x)


class FeedForward(nn.Module):
  """GDFN (2.4): project_in -> dw3x3 -> GELU(first half) * second half -> project_out. (N, C, H, W) -> same."""

  def __init__(self, c: int, ffn_expansion_factor: float, bias: bool):
    super().__init__()
    hidden = int(c * ffn_expansion_factor)
    self.project_in = _conv1x1(c, 2 * hidden, bias)
    self.dwconv = _dwconv3x3(2 * hidden, bias)
    self.project_out = _conv1x1(hidden, c, bias)

  def forward(self, x: Tensor) -> Tensor:
    x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
    return self.project_out(F.gelu(x1) * x2)


class Attention(nn.Module):
  """MDTA transposed channel self-attention (2.3). (N, C, H, W) -> same."""

  def __init__(self, c: int, heads: int, bias: bool):
    super().__init__()
    self.heads = heads
    self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
    self.qkv = _conv1x1(c, 3 * c, bias)
    self.qkv_dwconv = _dwconv3x3(3 * c, bias)
    self.project_out = _conv1x1(c, c, bias)

  def forward(self, x: Tensor) -> Tensor:
    _, _, h, w = x.shape
    q, k, v = (_split_heads(t, self.heads) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
    attn = _channel_attention_map(q, k, self.temperature)
    return self.project_out(_merge_heads(attn @ v, h, w))


class TransformerBlock(nn.Module):
  """Restormer block (2.5): x + attn(norm1 x), then + ffn(norm2 x). (N, C, H, W) -> same."""

  def __init__(self, c: int, heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str):
    super().__init__()
    self.norm1 = LayerNorm(c, layer_norm_type)
    self.attn = Attention(c, heads, bias)
    self.norm2 = LayerNorm(c, layer_norm_type)
    self.ffn = FeedForward(c, ffn_expansion_factor, bias)

  def forward(self, x: Tensor) -> Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.ffn(self.norm2(x))


class CrossAttention(nn.Module):
  """Queries from xa, keys/values from xb (2.6). (N, C, H, W) x2 -> (N, C, H, W).

  `norm` is the release's never-called LayerNorm (section 3): kept only so the official state dict loads strictly.
  """

  def __init__(self, c: int, heads: int, bias: bool):
    super().__init__()
    self.heads = heads
    self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
    self.norm = LayerNorm(c, 'WithBias')  # unused in forward, as in the release
    self.q = _conv1x1(c, c, bias)
    self.kv = _conv1x1(c, 2 * c, bias)
    self.q_dwconv = _dwconv3x3(c, bias)
    self.kv_dwconv = _dwconv3x3(2 * c, bias)
    self.project_out = _conv1x1(c, c, bias)

  def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
    _, _, h, w = xa.shape
    q = _split_heads(self.q_dwconv(self.q(xa)), self.heads)
    k, v = (_split_heads(t, self.heads) for t in self.kv_dwconv(self.kv(xb)).chunk(2, dim=1))
    attn = _channel_attention_map(q, k, self.temperature)
    return self.project_out(_merge_heads(attn @ v, h, w))


class CrossTransformerBlock(nn.Module):
  """x + XA(norm1 x, norm1 s), then + ffn(norm2 x); one norm1 for both inputs (2.6). (N, C, H, W) x2 -> same."""

  def __init__(self, c: int, heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str):
    super().__init__()
    self.norm1 = LayerNorm(c, layer_norm_type)
    self.attn = CrossAttention(c, heads, bias)
    self.norm2 = LayerNorm(c, layer_norm_type)
    self.ffn = FeedForward(c, ffn_expansion_factor, bias)

  def forward(self, x: Tensor, s: Tensor) -> Tensor:
    x = x + self.attn(self.norm1(x), self.norm1(s))
    return x + self.ffn(self.norm2(x))


class CoAttention(nn.Module):
  """Bi-temporal co-attention (2.7): one query, prev/next keys+values, double softmax. (N, C, H, W) x3 -> same."""

  def __init__(self, c: int, heads: int, bias: bool):
    super().__init__()
    self.heads = heads
    self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
    self.q = _conv1x1(c, c, bias)
    self.kv_prev = _conv1x1(c, 2 * c, bias)
    self.kv_next = _conv1x1(c, 2 * c, bias)
    self.q_dwconv = _dwconv3x3(c, bias)
    self.kv_dwconv_prev = _dwconv3x3(2 * c, bias)
    self.kv_dwconv_next = _dwconv3x3(2 * c, bias)
    self.project_out = _conv1x1(c, c, bias)

  def forward(self, xc: Tensor, xp: Tensor, xn: Tensor) -> Tensor:
    _, _, h, w = xc.shape
    q = _split_heads(self.q_dwconv(self.q(xc)), self.heads)
    k_p, v_p = (_split_heads(t, self.heads) for t in self.kv_dwconv_prev(self.kv_prev(xp)).chunk(2, dim=1))
    k_n, v_n = (_split_heads(t, self.heads) for t in self.kv_dwconv_next(self.kv_next(xn)).chunk(2, dim=1))
    a_p = _channel_attention_map(q, k_p, self.temperature)
    a_n = _channel_attention_map(q, k_n, self.temperature)
    a_co = torch.softmax(a_p * a_n, dim=-1)  # the release's second softmax, kept as is
    return self.project_out(_merge_heads(a_co @ v_p, h, w) + _merge_heads(a_co @ v_n, h, w))


class CoTransformerBlock(nn.Module):
  """xc + CoAttn(norm1 xc, norm1 xp, norm1 xn), then + ffn(norm2 xc) (2.7). (N, C, H, W) x3 -> same."""

  def __init__(self, c: int, heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str):
    super().__init__()
    self.norm1 = LayerNorm(c, layer_norm_type)
    self.attn = CoAttention(c, heads, bias)
    self.norm2 = LayerNorm(c, layer_norm_type)
    self.ffn = FeedForward(c, ffn_expansion_factor, bias)

  def forward(self, xc: Tensor, xp: Tensor, xn: Tensor) -> Tensor:
    xc = xc + self.attn(self.norm1(xc), self.norm1(xp), self.norm1(xn))
    return xc + self.ffn(self.norm2(xc))


class CoAttentionModule(nn.Module):
  """One BiCAM layer (2.7) on (B, T, C, H, W): parallel update, boundary frames use themselves as neighbour."""

  def __init__(self, c: int, heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str):
    super().__init__()
    self.co_transformer = CoTransformerBlock(c, heads, ffn_expansion_factor, bias, layer_norm_type)

  def forward(self, x: Tensor) -> Tensor:
    b, t, c, h, w = x.shape
    prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    nxt = torch.cat([x[:, 1:], x[:, -1:]], dim=1)
    flat = lambda v: v.reshape(b * t, c, h, w)  # pylint: disable=unnecessary-lambda-assignment
    return self.co_transformer(flat(x), flat(prev), flat(nxt)).reshape(b, t, c, h, w)


class StackedCoAttention(nn.Module):
  """`layers.0 ... layers.{L-1}` BiCAM layers applied in sequence. (B, T, C, H, W) -> same."""

  def __init__(self, c: int, heads: int, num_layers: int, ffn_expansion_factor: float, bias: bool,
               layer_norm_type: str):
    super().__init__()
    self.layers = nn.Sequential(*[CoAttentionModule(c, heads, ffn_expansion_factor, bias, layer_norm_type)
                                  for _ in range(num_layers)])

  def forward(self, x: Tensor) -> Tensor:
    return self.layers(x)


class FusionModule(nn.Module):
  """CMGF (2.8): Q = ir + vi; CTB(Q, ir) + CTB(Q, vi) with the same block twice. (N, C, H, W) x2 -> same."""

  def __init__(self, c: int, heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str):
    super().__init__()
    self.cross_transformer = CrossTransformerBlock(c, heads, ffn_expansion_factor, bias, layer_norm_type)

  def forward(self, ir: Tensor, vi: Tensor) -> Tensor:
    q = ir + vi
    return self.cross_transformer(q, ir) + self.cross_transformer(q, vi)


class FusionEnhance(nn.Module):
  """`transformer.{i}`: TransformerBlocks in sequence (fusion_enhance_1/2). (N, C, H, W) -> same."""

  def __init__(self, c: int, heads: int, num_blocks: int, ffn_expansion_factor: float, bias: bool,
               layer_norm_type: str):
    super().__init__()
    self.transformer = nn.Sequential(*[TransformerBlock(c, heads, ffn_expansion_factor, bias, layer_norm_type)
                                       for _ in range(num_blocks)])

  def forward(self, x: Tensor) -> Tensor:
    return self.transformer(x)


class CrossModalityDiffEnhance(nn.Module):
  """First half of CmDRM (2.9): CTB(x, suppl - x). (N, C, H, W) x2 -> (N, C, H, W)."""

  def __init__(self, c: int, heads: int, ffn_expansion_factor: float, bias: bool, layer_norm_type: str):
    super().__init__()
    self.cross_transformer = CrossTransformerBlock(c, heads, ffn_expansion_factor, bias, layer_norm_type)

  def forward(self, x: Tensor, suppl: Tensor) -> Tensor:
    return self.cross_transformer(x, suppl - x)


class ChannelAttention(nn.Module):
  """CBAM channel attention, ratio 16, LeakyReLU 0.2 (2.10). (N, C, H, W) -> sigmoid map (N, C, 1, 1)."""

  def __init__(self, c: int):
    super().__init__()
    self.fc1 = nn.Conv2d(c, c // 16, 1, bias=False)
    self.fc2 = nn.Conv2d(c // 16, c, 1, bias=False)

  def forward(self, x: Tensor) -> Tensor:
    mlp = lambda v: self.fc2(F.leaky_relu(self.fc1(v), 0.2))  # pylint: disable=unnecessary-lambda-assignment
    return torch.sigmoid(mlp(x.mean(dim=(2, 3), keepdim=True)) + mlp(x.amax(dim=(2, 3), keepdim=True)))


class SpatialAttention(nn.Module):
  """CBAM spatial attention with a 3x3 conv on [mean_C, max_C] (2.10). (N, C, H, W) -> map (N, 1, H, W)."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(2, 1, 3, padding=1, bias=False)

  def forward(self, x: Tensor) -> Tensor:
    s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    return torch.sigmoid(self.conv1(s))


class CrossModalAggregation(nn.Module):
  """Second half of CmDRM (2.11). (N, C, H, W) main, supple -> (N, C, H, W)."""

  def __init__(self, c: int):
    super().__init__()
    self.conv = nn.Conv2d(2 * c, 2, 1, bias=False)
    self.ChannelAttention = ChannelAttention(c)  # pylint: disable=invalid-name (official name)
    self.SpatialAttention = SpatialAttention()  # pylint: disable=invalid-name (official name)

  def forward(self, x_main: Tensor, x_supple: Tensor) -> Tensor:
    w = torch.sigmoid(self.conv(torch.cat([x_main, x_supple], dim=1))).mean(dim=(2, 3), keepdim=True)
    g1 = w[:, 0:1] * x_main
    g2 = w[:, 1:2] * x_supple
    g1 = self.ChannelAttention(g1) * g1
    g1 = self.SpatialAttention(g1) * g1
    return g1 + g2


class VideoDecomposition(nn.Module):
  """Modality unmixing (2.12): per branch CA then SA. (N, C, H, W) -> (y_ir, y_vi), each (N, C, H, W)."""

  def __init__(self, c: int):
    super().__init__()
    self.channel_attention_ir = ChannelAttention(c)
    self.channel_attention_vi = ChannelAttention(c)
    self.spatial_attention_ir = SpatialAttention()
    self.spatial_attention_vi = SpatialAttention()

  def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
    y_ir = self.channel_attention_ir(x) * x
    y_ir = self.spatial_attention_ir(y_ir) * y_ir
    y_vi = self.channel_attention_vi(x) * x
    y_vi = self.spatial_attention_vi(y_vi) * y_vi
    return y_ir, y_vi


class Decoder3D(nn.Module):
  """2-D decoder (2.13): TransformerBlocks, 1x1 (bias), LReLU 0.2, 3x3 (no bias). (N, C, H, W) -> (N, out, H, W)."""

  def __init__(self, c: int, out_channels: int, heads: int, num_blocks: int, ffn_expansion_factor: float,
               bias: bool, layer_norm_type: str):
    super().__init__()
    self.decoder = nn.Sequential(*[TransformerBlock(c, heads, ffn_expansion_factor, bias, layer_norm_type)
                                   for _ in range(num_blocks)])
    self.conv = nn.Sequential(nn.Conv2d(c, c // 2, 1, bias=True), nn.LeakyReLU(0.2),
                              nn.Conv2d(c // 2, out_channels, 3, padding=1, bias=False))

  def forward(self, x: Tensor) -> Tensor:
    return self.conv(self.decoder(x))


class Conv3DModule(nn.Module):
  """Two 3x3x3 Conv3d (bias, zero padding also in time) with LReLU 0.2 between (2.14). (B, Ci, T, H, W) -> Co."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.module = nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=True), nn.LeakyReLU(0.2),
                                nn.Conv3d(cout, cout, 3, padding=1, bias=True))

  def forward(self, x: Tensor) -> Tensor:
    return self.module(x)


class ResidualBlockNoBN(nn.Module):
  """x + conv2(lrelu_0.1(conv1 x)), 3x3 convs with bias, no scaling (2.15). (N, C, H, W) -> same."""

  def __init__(self, c: int):
    super().__init__()
    self.conv1 = _conv3x3(c, c, True)
    self.conv2 = _conv3x3(c, c, True)

  def forward(self, x: Tensor) -> Tensor:
    return x + self.conv2(F.leaky_relu(self.conv1(x), 0.1))


class ResidualBlocks2D(nn.Module):
  """Four ResidualBlockNoBN, named `blocks.0.{i}` as in the release (2.15). (N, C, H, W) -> same."""

  def __init__(self, c: int, num_block: int = 4):
    super().__init__()
    self.blocks = nn.Sequential(nn.Sequential(*[ResidualBlockNoBN(c) for _ in range(num_block)]))

  def forward(self, x: Tensor) -> Tensor:
    return self.blocks(x)


class Downsample(nn.Module):
  """3x3 conv C -> C/2 (no bias), PixelUnshuffle(2) (2.16). (N, C, H, W) -> (N, 2C, H/2, W/2)."""

  def __init__(self, c: int):
    super().__init__()
    self.body = nn.Sequential(_conv3x3(c, c // 2, False), nn.PixelUnshuffle(2))

  def forward(self, x: Tensor) -> Tensor:
    return self.body(x)


class Upsample(nn.Module):
  """3x3 conv (no bias), bilinear x2 align_corners=True, 3x3 conv (bias) (2.17). (N, C, H, W) -> (N, C/2, 2H, 2W)."""

  def __init__(self, c: int):
    super().__init__()
    self.body = nn.Sequential(_conv3x3(c, c // 2, False),
                              nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True),
                              _conv3x3(c // 2, c // 2, True))

  def forward(self, x: Tensor) -> Tensor:
    return self.body(x)


class VideoFusionTrans(nn.Module):
  """`VideoFusion_Trans` (section 1). forward(x_ir, x_vi), each (B, T, 3, H, W) in [0, 1], T >= 2, H, W % 4 == 0.

  Returns {'fusion', 'ir', 'vi'}, each (B, T, out_channels, H, W) = (tanh(z) + 1) / 2. `embed_dim` and `groups`
  of the release have no effect (section 3) and are accepted and ignored by `build_model`.
  """

  def __init__(self, in_channels: int = 3, out_channels: int = 3, num_features: int = 64,
               num_blocks: Sequence[int] = (2, 2, 4), num_decoder_blocks: int = 2,
               num_heads: Sequence[int] = (2, 4, 8), ffn_expansion_factor: float = 2.66, bias: bool = False,
               layer_norm_type: str = 'WithBias'):
    super().__init__()
    c1, c2, c3 = num_features, 2 * num_features, 4 * num_features
    h1, h2, h3 = num_heads
    kw = {'ffn_expansion_factor': ffn_expansion_factor, 'bias': bias, 'layer_norm_type': layer_norm_type}
    # Scale 1.
    self.conv3d_ir_1 = Conv3DModule(in_channels, c1)
    self.conv3d_vi_1 = Conv3DModule(in_channels, c1)
    self.fusion_1 = FusionModule(c1, h1, **kw)
    self.fusion_enhance_1 = FusionEnhance(c1, h1, num_blocks[0], **kw)
    self.down_ir_1 = Downsample(c1)
    self.down_vi_1 = Downsample(c1)
    # Scale 2.
    self.conv3d_ir_2 = Conv3DModule(c2, c2)
    self.conv3d_vi_2 = Conv3DModule(c2, c2)
    self.ir_conv_enhance_2 = ResidualBlocks2D(c2)
    self.vi_conv_enhance_2 = ResidualBlocks2D(c2)
    self.cross_modal_enhance_ir_2 = CrossModalityDiffEnhance(c2, h2, **kw)
    self.cross_modal_enhance_vi_2 = CrossModalityDiffEnhance(c2, h2, **kw)
    self.CMA_ir_2 = CrossModalAggregation(c2)  # pylint: disable=invalid-name (official names)
    self.CMA_vi_2 = CrossModalAggregation(c2)  # pylint: disable=invalid-name
    self.fusion_2 = FusionModule(c2, h2, **kw)
    self.fusion_enhance_2 = FusionEnhance(c2, h2, num_blocks[1], **kw)
    self.down_ir_2 = Downsample(c2)
    self.down_vi_2 = Downsample(c2)
    # Scale 3.
    self.conv3d_ir_3 = Conv3DModule(c3, c3)
    self.conv3d_vi_3 = Conv3DModule(c3, c3)
    self.ir_conv_enhance_3 = ResidualBlocks2D(c3)
    self.vi_conv_enhance_3 = ResidualBlocks2D(c3)
    self.cross_modal_enhance_ir_3 = CrossModalityDiffEnhance(c3, h3, **kw)
    self.cross_modal_enhance_vi_3 = CrossModalityDiffEnhance(c3, h3, **kw)
    self.CMA_ir_3 = CrossModalAggregation(c3)  # pylint: disable=invalid-name
    self.CMA_vi_3 = CrossModalAggregation(c3)  # pylint: disable=invalid-name
    self.fusion_3 = FusionModule(c3, h3, **kw)
    # Decoder.
    self.co_attention_3 = StackedCoAttention(c3, h3, num_blocks[2], **kw)
    self.up2 = Upsample(c3)
    self.co_attention_2 = StackedCoAttention(c2, h2, num_blocks[1], **kw)
    self.up1 = Upsample(c2)
    self.co_attention_1 = StackedCoAttention(c1, h1, num_blocks[0], **kw)
    self.decomposition = VideoDecomposition(c1)
    self.decoder_ir = Decoder3D(c1, out_channels, h1, num_decoder_blocks, **kw)
    self.decoder_vi = Decoder3D(c1, out_channels, h1, num_decoder_blocks, **kw)
    self.decoder_fusion = Decoder3D(c1, out_channels, h1, num_decoder_blocks, **kw)

  def forward(self, x_ir: Tensor, x_vi: Tensor) -> Dict[str, Tensor]:
    b, t, _, h, w = x_vi.shape
    if t < 2:
      raise ValueError(f'T must be >= 2 (the release fails on T=1), got {x_vi.shape}')
    if h % 4 or w % 4:
      raise ValueError(f'H and W must be multiples of 4, got {x_vi.shape}')
    # Scale 1: Conv3D features, CMGF + enhancement -> S1 (1.3 rows 0-2).
    f_ir1 = _to_frames(self.conv3d_ir_1(x_ir.permute(0, 2, 1, 3, 4)))
    f_vi1 = _to_frames(self.conv3d_vi_1(x_vi.permute(0, 2, 1, 3, 4)))
    s1 = self.fusion_enhance_1(self.fusion_1(f_ir1, f_vi1))
    # Scale 2 (rows 3-8).
    f_ir2 = self.ir_conv_enhance_2(_to_frames(self.conv3d_ir_2(_to_video(self.down_ir_1(f_ir1), b))))
    f_vi2 = self.vi_conv_enhance_2(_to_frames(self.conv3d_vi_2(_to_video(self.down_vi_1(f_vi1), b))))
    e_ir2 = self.CMA_ir_2(self.cross_modal_enhance_ir_2(f_ir2, f_vi2), f_ir2)
    e_vi2 = self.CMA_vi_2(self.cross_modal_enhance_vi_2(f_vi2, f_ir2), f_vi2)
    s2 = self.fusion_enhance_2(self.fusion_2(e_ir2, e_vi2))
    # Scale 3 (rows 9-12): downsample the CMA outputs.
    f_ir3 = self.ir_conv_enhance_3(_to_frames(self.conv3d_ir_3(_to_video(self.down_ir_2(e_ir2), b))))
    f_vi3 = self.vi_conv_enhance_3(_to_frames(self.conv3d_vi_3(_to_video(self.down_vi_2(e_vi2), b))))
    e_ir3 = self.CMA_ir_3(self.cross_modal_enhance_ir_3(f_ir3, f_vi3), f_ir3)
    e_vi3 = self.CMA_vi_3(self.cross_modal_enhance_vi_3(f_vi3, f_ir3), f_vi3)
    x = self.fusion_3(e_ir3, e_vi3)
    # Decoder (rows 13-15): BiCAM on (B, T, C, H, W), upsample + skip.
    split = lambda v: v.reshape(b, t, *v.shape[1:])  # pylint: disable=unnecessary-lambda-assignment
    merge = lambda v: v.reshape(b * t, *v.shape[2:])  # pylint: disable=unnecessary-lambda-assignment
    x = merge(self.co_attention_3(split(x)))
    x = merge(self.co_attention_2(split(self.up2(x) + s2)))
    ff = merge(self.co_attention_1(split(self.up1(x) + s1)))
    # Heads (rows 16-18).
    g_ir, g_vi = self.decomposition(ff)
    heads = {'fusion': self.decoder_fusion(ff), 'ir': self.decoder_ir(g_ir), 'vi': self.decoder_vi(g_vi)}
    return {k: (torch.tanh(split(z)) + 1) / 2 for k, z in heads.items()}


def build_model(model_config: Mapping) -> VideoFusionTrans:
  """The model of an official config dict (keys as the fixture manifests' "config"; embed_dim/groups ignored)."""
  cfg = dict(model_config)
  cfg.pop('embed_dim', None)
  cfg.pop('groups', None)
  if 'LayerNorm_type' in cfg:
    cfg['layer_norm_type'] = cfg.pop('LayerNorm_type')
  return VideoFusionTrans(**cfg)


def fixture_state_dict(npz_path) -> Dict[str, Tensor]:
  """{official name: float32 tensor} from the `param/<name>` arrays of a fixture .npz."""
  with np.load(npz_path) as data:
    return {k[len('param/'):]: torch.from_numpy(np.array(data[k])) for k in data.files if k.startswith('param/')}


def load_fixture_params(model: nn.Module, npz_path) -> nn.Module:
  """Loads a fixture's official-named weights with strict=True (incl. the unused attn.norm); returns the model."""
  model.load_state_dict(fixture_state_dict(npz_path), strict=True)
  return model


# ----------------------------------------------------------------------------------------------------------------
# Released training loss (REFERENCE.md section 6). Videos (B, T, C, H, W), channel order R, G, B.
# ----------------------------------------------------------------------------------------------------------------

_SOBEL_X = ((-1., 0., 1.), (-2., 0., 2.), (-1., 0., 1.))
_SOBEL_Y = ((-1., -2., -1.), (0., 0., 0.), (1., 2., 1.))


def rgb_to_ycbcr(rgb: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
  """(N, 3, H, W) RGB -> Y, Cb, Cr, each (N, 1, H, W), each clamped to [0, 1] as in the release (6.1)."""
  r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
  y = 0.299 * r + 0.587 * g + 0.114 * b
  cb = -0.169 * r - 0.331 * g + 0.5 * b + 128.0 / 255.0
  cr = 0.5 * r - 0.419 * g - 0.081 * b + 128.0 / 255.0
  return y.clamp(0.0, 1.0), cb.clamp(0.0, 1.0), cr.clamp(0.0, 1.0)


def sobel(y: Tensor) -> Tuple[Tensor, Tensor]:
  """|Gx|, |Gy| of (N, 1, H, W) maps: replicate pad 1, cross-correlation (6.2)."""
  k = torch.tensor([[_SOBEL_X], [_SOBEL_Y]], dtype=y.dtype, device=y.device)  # (2, 1, 3, 3)
  g = F.conv2d(F.pad(y, (1, 1, 1, 1), mode='replicate'), k).abs()
  return g[:, 0:1], g[:, 1:2]


def ssim_window(size: int = 13, sigma: float = 1.5) -> Tensor:
  """Gaussian window built in float32 like the release (6.3; sums to 1 + ~5e-9, not exactly 1). (size, size)."""
  g = torch.tensor([math.exp(-(x - size // 2) ** 2 / float(2 * sigma ** 2)) for x in range(size)],
                   dtype=torch.float32)
  g = (g / g.sum())[:, None]
  return g.mm(g.t())


def ssim_loss(img1: Tensor, img2: Tensor, window_size: int = 13) -> Tensor:
  """1 - mean SSIM, depthwise Gaussian window, valid convolution, range from img1 (6.3). (N, C, H, W) x2."""
  c = img1.shape[1]
  window = ssim_window(window_size).to(img1.dtype).expand(c, 1, window_size, window_size).contiguous()
  conv = lambda x: F.conv2d(x, window, groups=c)  # pylint: disable=unnecessary-lambda-assignment
  data_range = (255.0 if img1.max() > 128 else 1.0) - (-1.0 if img1.min() < -0.5 else 0.0)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mu1, mu2 = conv(img1), conv(img2)
  mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
  sigma1_sq = conv(img1 * img1) - mu1_sq
  sigma2_sq = conv(img2 * img2) - mu2_sq
  sigma12 = conv(img1 * img2) - mu1_mu2
  v1 = 2.0 * sigma12 + c2
  v2 = sigma1_sq + sigma2_sq + c2
  ssim_map = ((2.0 * mu1_mu2 + c1) * v1) / ((mu1_sq + mu2_sq + c1) * v2)
  return 1.0 - ssim_map.mean()


def _temporal_consistency(a: Tensor, g: Tensor) -> Tensor:
  """mean |(A[:,1:] - A[:,:-1]) - (G[:,1:] - G[:,:-1])| on (B, T, C, H, W) (6.6)."""
  return ((a[:, 1:] - a[:, :-1]) - (g[:, 1:] - g[:, :-1])).abs().mean()


def _l1(a: Tensor, b: Tensor) -> Tensor:
  return (a - b).abs().mean()


def released_loss(outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
  """Official training loss (6.4-6.7) with the released weights (15, 1, 0.8, 100, 1, 10, 10, consistency 10).

  outputs: {'fusion', 'ir', 'vi'}: (B, T, 3, H, W) model outputs. batch: {'ir_gt': (B, T, 1 or 3, H, W),
  'vi_gt': (B, T, 3, H, W)} clean frames (a 1-channel IR is replicated to 3 channels like the official loader).
  Returns (l_total, terms): terms keyed like the official logged keys plus 'l_fid_total', 'l_cons_total',
  'l_total' (same keys as `vfusion_jax.losses.released_loss`).
  """
  fusion, ir_out, vi_out, vi_gt = outputs['fusion'], outputs['ir'], outputs['vi'], batch['vi_gt']
  ir_gt = batch['ir_gt']
  if ir_gt.shape[2] == 1:
    ir_gt = ir_gt.expand(-1, -1, 3, -1, -1)
  bt = fusion.shape[0] * fusion.shape[1]
  frames = lambda v: v.reshape(bt, *v.shape[2:])  # pylint: disable=unnecessary-lambda-assignment
  f, ir_o, vi_o, ir_g, vi_g = (frames(v) for v in (fusion, ir_out, vi_out, ir_gt, vi_gt))

  # Fusion loss (6.4), frames merged.
  y_f, cb_f, cr_f = rgb_to_ycbcr(f)
  y_vi, cb_vi, cr_vi = rgb_to_ycbcr(vi_g)
  y_ir = rgb_to_ycbcr(ir_g)[0]
  gx_f, gy_f = sobel(y_f)
  gx_vi, gy_vi = sobel(y_vi)
  gx_ir, gy_ir = sobel(y_ir)
  t = {}
  t['loss_intensity_max'] = 15.0 * _l1(y_f, torch.max(y_vi, y_ir))
  t['loss_color'] = 100.0 * (_l1(cb_f, cb_vi) + _l1(cr_f, cr_vi))
  t['loss_grad'] = _l1(gx_f, torch.max(gx_vi, gx_ir)) + _l1(gy_f, torch.max(gy_vi, gy_ir))
  t['loss_intensity_consist'] = _l1(y_vi, y_f) + 0.8 * _l1(y_ir, y_f)
  t['loss_ssim'] = ssim_loss(vi_g, f) + ssim_loss(y_ir, y_f)
  t['loss_fusion'] = (t['loss_ssim'] + t['loss_intensity_max'] + t['loss_intensity_consist'] + t['loss_color']
                      + t['loss_grad'])
  # Fidelity loss (6.5): intensity on RGB, gradients on Y.
  for key, rec, gt, y_gt in (('ir', ir_o, ir_g, y_ir), ('vi', vi_o, vi_g, y_vi)):
    gx_rec, gy_rec = sobel(rgb_to_ycbcr(rec)[0])
    gx_gt, gy_gt = sobel(y_gt)
    t[f'{key}_loss_intensity'] = 10.0 * _l1(rec, gt)
    t[f'{key}_loss_grad'] = 10.0 * _l1(gx_rec, gx_gt) + 10.0 * _l1(gy_rec, gy_gt)
    t[f'{key}_loss_fid'] = t[f'{key}_loss_intensity'] + t[f'{key}_loss_grad']
  # Temporal consistency (6.6) on the 5-D tensors.
  t['l_cons_ir'] = 10.0 * _temporal_consistency(ir_out, ir_gt)
  t['l_cons_vi'] = 10.0 * _temporal_consistency(vi_out, vi_gt)
  t['l_cons_fusion'] = 10.0 * (_temporal_consistency(fusion, ir_gt) + _temporal_consistency(fusion, vi_gt))
  t['l_fid_total'] = t['ir_loss_fid'] + t['vi_loss_fid']
  t['l_cons_total'] = t['l_cons_ir'] + t['l_cons_vi'] + t['l_cons_fusion']
  t['l_total'] = t['loss_fusion'] + t['l_fid_total'] + t['l_cons_total']
  return t['l_total'], t


# ----------------------------------------------------------------------------------------------------------------
# Parity check against a forward fixture (no timing).
# ----------------------------------------------------------------------------------------------------------------


def fixture_parity(npz_path, manifest_path=None) -> Dict[str, float]:
  """Max abs error of each output of the model built and loaded from a forward fixture, in float32."""
  npz_path = pathlib.Path(npz_path)
  if manifest_path is None:
    manifest_path = npz_path.with_name(npz_path.name.split('_T')[0] + '_manifest.json')
  config = json.loads(pathlib.Path(manifest_path).read_text())['config']
  model = load_fixture_params(build_model(config), npz_path).eval()
  with np.load(npz_path) as data:
    x_ir, x_vi = (torch.from_numpy(np.array(data[f'input/{k}'])) for k in ('ir', 'vi'))
    expected = {k: np.array(data[f'output/{k}']) for k in ('fusion', 'ir', 'vi')}
  with torch.no_grad():
    got = model(x_ir, x_vi)
  return {k: float(np.abs(got[k].numpy() - v).max()) for k, v in expected.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('fixture', help='a forward fixture .npz (its *_manifest.json must sit beside it)')
  parser.add_argument('--threads', type=int, default=1)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  for key, err in fixture_parity(args.fixture).items():
    print(f'{key}: max |torch - fixture| = {err:.3e}')


if __name__ == '__main__':
  main()
