"""Tests of vfusion_jax.metrics against METRICS.md.

Every expected value comes from a hand computation, a closed form, another
library (scikit-image, scipy.signal, OpenCV, statistics) or a literal
transcription of the MATLAB toolbox written here with loops and 2-D kernels,
never from the code under test. Real M3SVD frames are read from
``../shared/data`` when it exists; synthetic frames are used always.
"""

import math
import pathlib
import statistics

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy import signal

from vfusion_jax import metrics

DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'm3svd_sample'
VIDEOS = ('0111_1716', '0115_1834')

# METRICS.md §9: (kind, tolerance) per metric key.
TOLERANCES = {
    'EN': ('abs', 1e-9),
    'MI': ('abs', 1e-9),
    'MI_nomerge': ('abs', 1e-9),
    'SF': ('rel', 1e-9),
    'SD': ('rel', 1e-9),
    'VIF': ('abs', 1e-6),
    'SSIM': ('abs', 1e-6),
    'SSIM_toolboxL1': ('abs', 1e-6),
    'Qabf': ('abs', 1e-6),
}
FLOWD_TOL = 1e-4
# METRICS_VFBENCH.md B.9, on frames of its size (96 x 128).
VFBENCH_SHAPE = (96, 128)
# Static BiSWE_fb is not exactly 0: Farneback's self-flow is not zero near borders (B.2). B.9 measured 0.005
# on its texture; these textures give 0.005-0.025.
VFBENCH_STATIC_TOL = 0.05
VFBENCH_STEP_TOL = 0.01
VFBENCH_MS2R_STATIC_TOL = 1e-3
VFBENCH_ACCEL_RANGE = (1.3, 1.6)  # (2 + 1) / 2 inside the frame, a little less with the borders.
# scikit-image's Gaussian SSIM matches MATLAB's map 5 px inside the border.
SSIM_BORDER = 5
SKIMAGE_MAP_TOL = 1e-9
GRAY_COEFFS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
EPS = np.finfo(np.float64).eps


def _assert_close(key, got, want):
  kind, tol = TOLERANCES[key]
  err = abs(got - want) if kind == 'abs' else abs(got - want) / abs(want)
  assert err <= tol, f'{key}: got {got!r}, want {want!r} ({kind} err {err:.3g} > {tol})'


# ----------------------------------------------------------------------------
# Frames.


def _smooth_u8(rng, shape, sigma):
  """Textured uint8 frame spanning 0..255 (a blurred noise field)."""
  x = ndimage.gaussian_filter(rng.uniform(0, 1, shape), sigma)
  x = (x - x.min()) / (x.max() - x.min())
  return np.round(255 * x).astype(np.uint8)


def _synthetic_triple(h=64, w=80, seed=0):
  """RGB fused, 3-equal-channel IR, RGB visible; fused has 254/255 pixels."""
  rng = np.random.default_rng(seed)
  ir = np.repeat(_smooth_u8(rng, (h, w), 3)[..., None], 3, axis=-1)
  vi = np.stack([_smooth_u8(rng, (h, w), s) for s in (1.5, 2, 4)], axis=-1)
  fused = np.round((ir.astype(np.float64) + vi) / 2).astype(np.uint8)
  fused[: h // 8, : w // 8] = 255
  fused[h // 8: h // 4, : w // 8] = 254
  return fused, ir, vi


def _load(folder, video, index):
  return np.asarray(Image.open(DATA / folder / video / f'{index:04d}.png').convert('RGB'))


def _real_triple(video, index=0, crop=(slice(200, 296), slice(260, 388))):
  """A crop of real clean IR/visible frames and their average as fused."""
  ir = _load('infrared_Enhance', video, index)[crop]
  vi = _load('visible_Enhance', video, index)[crop]
  fused = np.round((ir.astype(np.float64) + vi) / 2).astype(np.uint8)
  return fused, ir, vi


needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f'real M3SVD frames not found at {DATA}')


# ----------------------------------------------------------------------------
# Independent references (literal transcriptions of the toolbox).


def _ref_gray(img):
  """rgb2gray with round-half-away done per pixel by Python's round on |x|."""
  if img.ndim == 2:
    return img
  r, g, b = (img[..., c].astype(np.float64) for c in range(3))
  v = GRAY_COEFFS[0] * r + GRAY_COEFFS[1] * g + GRAY_COEFFS[2] * b
  return np.vectorize(lambda z: int(math.floor(z + 0.5)))(v).astype(np.uint8)


def _ref_entropy(values):
  _, counts = np.unique(np.asarray(values), return_counts=True, axis=0)
  n = counts.sum()
  return -math.fsum(c / n * math.log2(c / n) for c in counts)


def _ref_mi(f, x, merge):
  """I(F;X) with np.histogram2d on explicit one-level-wide bins."""
  edges = np.arange(257) - 0.5
  fj, xj = (np.minimum(v, 254) if merge else v for v in (f, x))
  joint, _, _ = np.histogram2d(fj.ravel(), xj.ravel(), bins=[edges, edges])
  p = joint[joint > 0] / f.size
  h_joint = -math.fsum(p * np.log2(p))
  return _ref_entropy(f.ravel()) + _ref_entropy(x.ravel()) - h_joint


def _ref_sf(f):
  h, w = f.shape
  rows = [(float(f[i + 1, j]) - float(f[i, j])) ** 2 for i in range(h - 1) for j in range(w)]
  cols = [(float(f[i, j + 1]) - float(f[i, j])) ** 2 for i in range(h) for j in range(w - 1)]
  return math.sqrt(math.fsum(rows) / len(rows) + math.fsum(cols) / len(cols))


def _fspecial_gaussian(n, sigma):
  r = (n - 1) / 2
  y, x = np.mgrid[-r:r + 1, -r:r + 1]
  h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
  h[h < EPS * h.max()] = 0
  return h / h.sum()


def _ref_ssim_map(x, y, dynamic_range):
  """MATLAB ssim map: 2-D window, replicate padding via np.pad('edge')."""
  win = _fspecial_gaussian(11, 1.5)

  def filt(z):
    return signal.correlate2d(np.pad(z, 5, mode='edge'), win, mode='valid')

  x, y = x.astype(np.float64), y.astype(np.float64)
  c1, c2 = (0.01 * dynamic_range) ** 2, (0.03 * dynamic_range) ** 2
  mx, my = filt(x), filt(y)
  sxx, syy, sxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
  return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def _ref_vifp(ref, dist):
  """vifp_mscale.m, statement by statement, with filter2 = correlate2d."""
  ref, dist = ref.astype(np.float64), dist.astype(np.float64)
  sigma_nsq = 2.0
  num = den = 0.0
  for scale in range(1, 5):
    n = 2 ** (4 - scale + 1) + 1
    win = _fspecial_gaussian(n, n / 5)
    if scale > 1:
      ref = signal.correlate2d(ref, win, mode='valid')[::2, ::2]
      dist = signal.correlate2d(dist, win, mode='valid')[::2, ::2]
    mu1 = signal.correlate2d(ref, win, mode='valid')
    mu2 = signal.correlate2d(dist, win, mode='valid')
    sigma1_sq = signal.correlate2d(ref * ref, win, mode='valid') - mu1 * mu1
    sigma2_sq = signal.correlate2d(dist * dist, win, mode='valid') - mu2 * mu2
    sigma12 = signal.correlate2d(ref * dist, win, mode='valid') - mu1 * mu2
    sigma1_sq[sigma1_sq < 0] = 0
    sigma2_sq[sigma2_sq < 0] = 0
    g = sigma12 / (sigma1_sq + 1e-10)
    sv_sq = sigma2_sq - g * sigma12
    m = sigma1_sq < 1e-10
    g[m] = 0
    sv_sq[m] = sigma2_sq[m]
    sigma1_sq[m] = 0
    m = sigma2_sq < 1e-10
    g[m] = 0
    sv_sq[m] = 0
    m = g < 0
    sv_sq[m] = sigma2_sq[m]
    g[m] = 0
    sv_sq[sv_sq <= 1e-10] = 1e-10
    num += np.sum(np.log10(1 + g ** 2 * sigma1_sq / (sv_sq + sigma_nsq)))
    den += np.sum(np.log10(1 + sigma1_sq / sigma_nsq))
  return num / den


def _ref_sobel(x):
  x = x.astype(np.float64)
  sx = signal.convolve2d(x, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]), mode='same')
  sy = signal.convolve2d(x, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]), mode='same')
  return sx, sy


def _ref_qabf(a, b, f):
  """analysis_Qabf.m with its per-pixel loops and if/else branches."""
  tg, kg, dg, ta, ka, da = 0.9994, -15, 0.5, 0.9879, -22, 0.8

  def grad_angle(x):
    sx, sy = _ref_sobel(x)
    g = np.sqrt(sx ** 2 + sy ** 2)
    ang = np.zeros_like(g)
    for i in range(g.shape[0]):
      for j in range(g.shape[1]):
        ang[i, j] = math.pi / 2 if sx[i, j] == 0 else math.atan(sy[i, j] / sx[i, j])
    return g, ang

  (ga, aa), (gb, ab), (gf, af) = grad_angle(a), grad_angle(b), grad_angle(f)
  nume, deno = [], []
  for i in range(ga.shape[0]):
    for j in range(ga.shape[1]):
      q = []
      for gx, ax in ((ga, aa), (gb, ab)):
        if gx[i, j] > gf[i, j]:
          big_g = gf[i, j] / gx[i, j]
        elif gx[i, j] == gf[i, j]:
          big_g = gf[i, j]
        else:
          big_g = gx[i, j] / gf[i, j]
        big_a = 1 - abs(ax[i, j] - af[i, j]) / (math.pi / 2)
        q.append(tg / (1 + math.exp(kg * (big_g - dg))) * ta / (1 + math.exp(ka * (big_a - da))))
      nume.append(q[0] * ga[i, j] + q[1] * gb[i, j])
      deno.append(ga[i, j] + gb[i, j])
  return math.fsum(nume) / math.fsum(deno)


def _reference_metrics(fused, ir, vi):
  f, a, b = _ref_gray(fused), _ref_gray(ir), _ref_gray(vi)
  ssim_a = {L: _ref_ssim_map(f, a, L).mean() for L in (255, 1)}
  ssim_b = {L: _ref_ssim_map(f, b, L).mean() for L in (255, 1)}
  return {
      'EN': _ref_entropy(f.ravel()),
      'MI': _ref_mi(f, a, True) + _ref_mi(f, b, True),
      'MI_nomerge': _ref_mi(f, a, False) + _ref_mi(f, b, False),
      'SF': _ref_sf(f),
      'SD': statistics.pstdev(float(v) for v in f.ravel()),
      'VIF': _ref_vifp(a, f) + _ref_vifp(b, f),
      'SSIM': 0.5 * ssim_a[255] + 0.5 * ssim_b[255],
      'SSIM_toolboxL1': 0.5 * ssim_a[1] + 0.5 * ssim_b[1],
      'Qabf': _ref_qabf(a, b, f),
  }


# ----------------------------------------------------------------------------
# Grey conversion and quantisation.


def test_rgb_to_gray_hand_values():
  # 0.298936*255 = 76.23, 0.587043*255 = 149.70, 0.114021*255 = 29.08,
  # (0.298936 + 0.587043)*200 = 177.196.
  img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 200, 0]]], np.uint8)
  np.testing.assert_array_equal(metrics.rgb_to_gray(img), [[76, 150, 29, 177]])


def test_rgb_to_gray_equal_channels_and_grey_passthrough():
  levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
  np.testing.assert_array_equal(metrics.rgb_to_gray(np.stack([levels] * 3, -1)), levels)
  np.testing.assert_array_equal(metrics.rgb_to_gray(levels), levels)


def test_rgb_to_gray_matches_reference_on_random_colours():
  img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  np.testing.assert_array_equal(metrics.rgb_to_gray(img), _ref_gray(img))


def test_quantize_fused_hand_values():
  # y = [0, .25, .5, 1] -> 255 y = [0, 63.75, 127.5, 255].
  x = np.array([1.0, 2.0, 3.0, 5.0], np.float32)
  np.testing.assert_array_equal(metrics.quantize_fused(x), [0, 64, 128, 255])


def test_quantize_fused_stretches_over_all_channels_like_tensor2img():
  rng = np.random.default_rng(2)
  x = rng.uniform(0.1, 0.7, (3, 24, 32)).astype(np.float32)
  x[0] *= 0.5  # One channel darker: min/max are global, not per channel.
  lo, hi = x.min(), x.max()
  want = (((x - lo) / (hi - lo)) * np.float32(255.0)).round().astype(np.uint8)
  got = metrics.quantize_fused(x)
  np.testing.assert_array_equal(got, want)
  assert got.min() == 0 and got.max() == 255
  assert got[0].max() < 255  # The dark channel is not stretched on its own.


def test_quantize_fused_constant_frame():
  np.testing.assert_array_equal(metrics.quantize_fused(np.full((3, 4, 5), 0.3)), 0)


def test_to_uint8_clips_and_rounds_half_to_even():
  np.testing.assert_array_equal(metrics.to_uint8(np.array([-0.1, 0.5 / 255, 1.5 / 255, 2.0])), [0, 0, 2, 255])
  x = np.random.default_rng(3).random((6, 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(metrics.to_uint8(x), np.round(x * np.float32(255)).astype(np.uint8))
  u8 = np.arange(256, dtype=np.uint8)
  assert metrics.to_uint8(u8) is u8
  with pytest.raises(ValueError, match='uint8 or a float'):
    metrics.to_uint8(np.zeros(3, np.int32))


def test_fused_to_uint8_is_quantize_fused_or_to_uint8():
  x = np.random.default_rng(3).random((6, 5, 3)).astype(np.float32) * 0.5 + 0.2
  np.testing.assert_array_equal(metrics.fused_to_uint8(x), metrics.quantize_fused(x))
  assert metrics.fused_to_uint8(x).max() == 255 and metrics.fused_to_uint8(x).min() == 0
  np.testing.assert_array_equal(metrics.fused_to_uint8(x, minmax=False), metrics.to_uint8(x))


# ----------------------------------------------------------------------------
# EN.


def test_en_hand_values():
  assert metrics.en(np.full((8, 8), 77, np.uint8)) == 0.0
  two_level = np.array([[0, 255], [255, 0]], np.uint8)
  assert metrics.en(two_level) == 1.0
  # p = (1/2, 1/4, 1/4) -> 1.5 bits.
  assert metrics.en(np.array([[5, 5], [9, 200]], np.uint8)) == pytest.approx(1.5, abs=1e-12)


def test_en_uniform_histogram_is_8_bits():
  levels = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
  assert metrics.en(levels) == 8.0


def test_en_counts_grey_levels_not_min_max_bins():
  # Two levels far apart and two adjacent ones: np.histogram(bins=256) would
  # still give 1 and 1 here, but levels 10 and 11 next to 250 must not merge.
  img = np.array([[10, 11], [250, 250]], np.uint8)
  assert metrics.en(img) == pytest.approx(1.5, abs=1e-12)


# ----------------------------------------------------------------------------
# MI.


def test_mi_of_identical_frames_is_twice_en_without_254_255():
  f = _smooth_u8(np.random.default_rng(3), (40, 50), 2)
  f = np.minimum(f, 253).astype(np.uint8)
  want = 2 * _ref_entropy(f.ravel())
  assert metrics.mi(f, f, f) == pytest.approx(want, abs=1e-9)
  assert metrics.mi(f, f, f, joint_254_255_merge=False) == pytest.approx(want, abs=1e-9)


def test_mi_254_255_merge_hand_values():
  # Four levels, each 1/4: H(F) = 2. Merged joint: {0, 100, 254|255} with
  # (1/4, 1/4, 1/2) -> 1.5, so I(F;F) = 2.5 and MI = 5. Unmerged: 4.
  f = np.array([[0, 100], [254, 255]], np.uint8)
  assert metrics.mi(f, f, f) == pytest.approx(5.0, abs=1e-12)
  assert metrics.mi(f, f, f, joint_254_255_merge=False) == pytest.approx(4.0, abs=1e-12)
  assert metrics.mutual_information(f, f) == pytest.approx(2.5, abs=1e-12)


def test_mi_of_independent_frames_is_zero():
  # Each value of F meets each value of X equally often.
  f = np.array([[0, 0], [7, 7]], np.uint8)
  x = np.array([[3, 9], [3, 9]], np.uint8)
  assert metrics.mi(f, x, x) == pytest.approx(0.0, abs=1e-12)


def test_mi_matches_histogram2d_reference():
  fused, ir, vi = _synthetic_triple()
  f, a, b = _ref_gray(fused), _ref_gray(ir), _ref_gray(vi)
  for merge, key in ((True, 'MI'), (False, 'MI_nomerge')):
    want = _ref_mi(f, a, merge) + _ref_mi(f, b, merge)
    _assert_close(key, metrics.mi(fused, ir, vi, joint_254_255_merge=merge), want)
  assert metrics.mi(fused, ir, vi) > metrics.mi(fused, ir, vi, joint_254_255_merge=False)


# ----------------------------------------------------------------------------
# SF and SD.


def test_sf_hand_values():
  ramp = np.tile(np.arange(0, 60, 3, dtype=np.uint8), (7, 1))  # f[i, j] = 3 j.
  assert metrics.sf(ramp) == pytest.approx(3.0, rel=1e-12)
  assert metrics.sf(np.full((5, 6), 9, np.uint8)) == 0.0
  # Means over the number of differences: RF^2 = CF^2 = 100/2, SF = 10
  # (dividing by H*W instead would give 7.07).
  assert metrics.sf(np.array([[0, 0], [0, 10]], np.uint8)) == pytest.approx(10.0, rel=1e-12)
  checker = (np.indices((6, 6)).sum(0) % 2 * 255).astype(np.uint8)
  assert metrics.sf(checker) == pytest.approx(255 * math.sqrt(2), rel=1e-12)


def test_sd_hand_values():
  assert metrics.sd(np.full((5, 6), 200, np.uint8)) == 0.0
  assert metrics.sd(np.array([[0, 255], [255, 0]], np.uint8)) == pytest.approx(127.5, rel=1e-12)
  # Population (ddof = 0): values 1, 3 -> 1, not sqrt(2).
  assert metrics.sd(np.array([[1, 3]] * 2, np.uint8)) == pytest.approx(1.0, rel=1e-12)


# ----------------------------------------------------------------------------
# SSIM.


def test_ssim_of_identical_frames_is_exactly_one():
  x = _smooth_u8(np.random.default_rng(4), (30, 40), 2)
  for dynamic_range in (255.0, 1.0):
    assert metrics.ssim_pair(x, x, dynamic_range) == 1.0
    assert metrics.ssim(x, x, x, dynamic_range) == 1.0


def test_ssim_is_symmetric():
  rng = np.random.default_rng(5)
  x, y = _smooth_u8(rng, (30, 40), 2), _smooth_u8(rng, (30, 40), 3)
  assert metrics.ssim_pair(x, y) == pytest.approx(metrics.ssim_pair(y, x), abs=1e-15)


def test_ssim_constant_frames_closed_form():
  # sigma = 0 everywhere: map = (2cd + C1) / (c^2 + d^2 + C1).
  c, d, c1 = 100.0, 60.0, (0.01 * 255) ** 2
  x, y = np.full((12, 13), c, np.uint8), np.full((12, 13), d, np.uint8)
  want = (2 * c * d + c1) / (c * c + d * d + c1)
  np.testing.assert_allclose(metrics.ssim_map(x, y), want, rtol=1e-12)


def test_ssim_fusion_is_an_average():
  rng = np.random.default_rng(6)
  f, a, b = (_smooth_u8(rng, (30, 40), s) for s in (2, 3, 4))
  want = 0.5 * _ref_ssim_map(f, a, 255).mean() + 0.5 * _ref_ssim_map(f, b, 255).mean()
  _assert_close('SSIM', metrics.ssim(f, a, b), want)


@pytest.mark.parametrize('dynamic_range', [255.0, 1.0])
def test_ssim_map_full_matches_replicate_padded_reference(dynamic_range):
  fused, ir, _ = _synthetic_triple(48, 56, seed=7)
  got = metrics.ssim_map(fused, ir, dynamic_range)
  want = _ref_ssim_map(_ref_gray(fused), _ref_gray(ir), dynamic_range)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


@needs_data
@pytest.mark.parametrize('dynamic_range', [255.0, 1.0])
def test_ssim_map_interior_matches_skimage_on_real_frames(dynamic_range):
  skimage_metrics = pytest.importorskip('skimage.metrics')
  ir, vi = _load('infrared_Enhance', VIDEOS[1], 0), _load('visible_Enhance', VIDEOS[1], 0)
  x, y = _ref_gray(ir).astype(np.float64), _ref_gray(vi).astype(np.float64)
  _, want = skimage_metrics.structural_similarity(
      x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
      data_range=dynamic_range, full=True)
  got = metrics.ssim_map(ir, vi, dynamic_range)
  inner = (slice(SSIM_BORDER, -SSIM_BORDER),) * 2
  np.testing.assert_allclose(got[inner], want[inner], rtol=0, atol=SKIMAGE_MAP_TOL)


# ----------------------------------------------------------------------------
# VIF.


def test_vifp_of_identical_frames_is_about_one():
  x = _smooth_u8(np.random.default_rng(8), (64, 80), 2)
  assert abs(metrics.vifp(x, x) - 1.0) < 1e-9
  assert abs(metrics.vif(x, x, x) - 2.0) < 2e-9  # A sum, not a mean.


def test_vifp_matches_literal_transcription_and_order_matters():
  fused, ir, vi = _synthetic_triple(64, 80, seed=9)
  f, a = _ref_gray(fused), _ref_gray(ir)
  _assert_close('VIF', metrics.vifp(ir, fused), _ref_vifp(a, f))
  _assert_close('VIF', metrics.vifp(fused, ir), _ref_vifp(f, a))
  assert abs(_ref_vifp(a, f) - _ref_vifp(f, a)) > 1e-3


def test_vif_handles_flat_regions_like_the_toolbox():
  # Flat reference and flat distorted areas exercise every mask of §7.
  fused, ir, vi = _synthetic_triple(64, 80, seed=10)
  ir = ir.copy()
  ir[:32] = 128
  fused = fused.copy()
  fused[:, :40] = 90
  want = _ref_vifp(_ref_gray(ir), _ref_gray(fused)) + _ref_vifp(_ref_gray(vi), _ref_gray(fused))
  _assert_close('VIF', metrics.vif(fused, ir, vi), want)


# ----------------------------------------------------------------------------
# Qabf.


def test_qabf_of_identical_frames_closed_form():
  # G = g at equal gradients (toolbox quirk), orientation factor 0.9879 / (1 + e^-4.4).
  x = _smooth_u8(np.random.default_rng(11), (48, 64), 1.5)
  sx, sy = _ref_sobel(x)
  g = np.sqrt(sx ** 2 + sy ** 2)
  q = 0.9994 / (1 + np.exp(-15 * (g - 0.5))) * 0.9879 / (1 + math.exp(-22 * 0.2))
  want = np.sum(2 * q * g) / np.sum(2 * g)
  got = metrics.qabf(x, x, x)
  _assert_close('Qabf', got, want)
  assert 0.97 < got < 0.98


def test_qabf_matches_loop_transcription():
  fused, ir, vi = _synthetic_triple(36, 44, seed=12)
  want = _ref_qabf(_ref_gray(ir), _ref_gray(vi), _ref_gray(fused))
  _assert_close('Qabf', metrics.qabf(fused, ir, vi), want)


# ----------------------------------------------------------------------------
# fusion_metrics against the references, with the §9 tolerance table.


def test_fusion_metrics_keys():
  out = metrics.fusion_metrics(*_synthetic_triple(24, 24))
  assert tuple(out) == metrics.METRIC_KEYS
  assert set(out) == set(TOLERANCES)
  assert all(isinstance(v, float) for v in out.values())


def test_fusion_metrics_tolerance_table_synthetic():
  triple = _synthetic_triple(48, 60, seed=13)
  got = metrics.fusion_metrics(*triple)
  want = _reference_metrics(*triple)
  for key in TOLERANCES:
    _assert_close(key, got[key], want[key])


@needs_data
def test_fusion_metrics_tolerance_table_real_frames_and_video_mean():
  frames = [_real_triple(VIDEOS[0], i, crop=(slice(180, 228), slice(300, 360))) for i in (0, 10)]
  frames.append(_real_triple(VIDEOS[1], 5, crop=(slice(300, 348), slice(100, 160))))
  got = [metrics.fusion_metrics(*t) for t in frames]
  want = [_reference_metrics(*t) for t in frames]
  for key in TOLERANCES:
    for g, w in zip(got, want):
      _assert_close(key, g[key], w[key])
    _assert_close(key, np.mean([g[key] for g in got]), np.mean([w[key] for w in want]))


@needs_data
def test_fusion_metrics_full_frame_ranges():
  fused, ir, vi = _real_triple(VIDEOS[0], 0, crop=(slice(None), slice(None)))
  out = metrics.fusion_metrics(fused, ir, vi)
  assert 0 < out['EN'] <= 8 and 0 < out['MI'] <= 16
  assert out['MI'] >= out['MI_nomerge']
  assert 0 < out['SF'] and 0 < out['SD'] <= 127.5
  assert 0 < out['VIF'] and 0 < out['Qabf'] < 1
  assert 0 < out['SSIM_toolboxL1'] < out['SSIM'] < 1
  _assert_close('EN', out['EN'], _ref_entropy(_ref_gray(fused).ravel()))


def test_rgb_fused_equals_its_grey():
  fused, ir, vi = _synthetic_triple(32, 40, seed=14)
  a = metrics.fusion_metrics(fused, ir, vi)
  b = metrics.fusion_metrics(_ref_gray(fused), _ref_gray(ir)[..., None], _ref_gray(vi))
  assert a == b


# ----------------------------------------------------------------------------
# Input validation.


def test_rejects_non_uint8():
  x = np.zeros((8, 8), np.float32)
  with pytest.raises(ValueError, match='uint8'):
    metrics.en(x)
  with pytest.raises(ValueError, match='uint8'):
    metrics.fusion_metrics(x, x.astype(np.uint8), x.astype(np.uint8))


def test_rejects_mismatched_and_bad_shapes():
  a, b = np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8)
  with pytest.raises(ValueError, match=r'\(H, W\)'):
    metrics.fusion_metrics(a, a, b)
  with pytest.raises(ValueError, match='shape'):
    metrics.sd(np.zeros((8, 8, 4), np.uint8))
  with pytest.raises(ValueError, match='at least'):
    metrics.sf(np.zeros((1, 8), np.uint8))
  with pytest.raises(ValueError, match='float'):
    metrics.quantize_fused(a)


def test_temporal_input_validation():
  seq = np.zeros((3, 8, 8), np.uint8)
  with pytest.raises(ValueError, match='at least 2 frames'):
    metrics.tdiff(seq[:1])
  with pytest.raises(ValueError, match='uint8'):
    metrics.tdiff(seq.astype(np.float32))
  with pytest.raises(ValueError, match='share'):
    metrics.flowd_fb(seq, seq[:2])


# ----------------------------------------------------------------------------
# Temporal metrics.


def test_tdiff_hand_values():
  grey = np.stack([np.full((4, 5), v, np.uint8) for v in (10, 13, 7)])
  assert metrics.tdiff(grey) == pytest.approx((3 + 6) / 2, rel=1e-12)
  rgb = np.zeros((2, 4, 5, 3), np.uint8)
  rgb[1, ..., 0], rgb[1, ..., 1] = 3, 4  # L2 over channels: 5.
  assert metrics.tdiff(rgb) == pytest.approx(5.0, rel=1e-12)


def test_sequence_metrics_are_the_means_of_their_pair_terms():
  """Streaming evaluation adds up flowd_fb_term / tdiff_term: exactly what flowd_fb / tdiff return."""
  pytest.importorskip('cv2')
  rng = np.random.default_rng(18)
  fused = np.stack([_smooth_u8(rng, (24, 32, 3), 2) for _ in range(4)])
  guide = np.stack([_smooth_u8(rng, (24, 32, 3), 2) for _ in range(4)])
  grey = [metrics.rgb_to_gray(v) for v in guide]
  flows = [metrics.farneback_backward_flow(grey[t], grey[t - 1]) for t in range(1, 4)]
  assert metrics.flowd_fb(fused, guide) == np.mean(
      [metrics.flowd_fb_term(fused[t], fused[t - 1], flows[t - 1]) for t in range(1, 4)])
  assert metrics.tdiff(fused) == np.mean([metrics.tdiff_term(fused[t], fused[t - 1]) for t in range(1, 4)])
  assert metrics.tdiff_term(fused[1][..., :1], fused[0][..., :1]) == metrics.tdiff(fused[:2, ..., 0])
  with pytest.raises(ValueError, match='share one shape'):
    metrics.tdiff_term(fused[0], fused[1][:-1])
  with pytest.raises(ValueError, match='uint8'):
    metrics.flowd_fb_term(fused[0].astype(np.float32), fused[1], flows[0])


def test_warp_bilinear_matches_map_coordinates():
  rng = np.random.default_rng(15)
  frame = rng.uniform(0, 255, (20, 30, 3))
  flow = rng.uniform(-6, 6, (20, 30, 2))  # Includes samples outside the frame.
  rows, cols = np.meshgrid(np.arange(20.0), np.arange(30.0), indexing='ij')
  coords = [rows + flow[..., 1], cols + flow[..., 0]]
  want = np.stack([ndimage.map_coordinates(frame[..., c], coords, order=1, mode='nearest')
                   for c in range(3)], -1)
  np.testing.assert_allclose(metrics.warp_bilinear(frame, flow), want, rtol=0, atol=1e-10)


def test_warp_bilinear_integer_shift_replicates_edge():
  frame = np.arange(12.0).reshape(3, 4)
  flow = np.zeros((3, 4, 2))
  flow[..., 0] = 1.0  # Sample one column to the right.
  want = np.array([[1, 2, 3, 3], [5, 6, 7, 7], [9, 10, 11, 11]], np.float64)
  np.testing.assert_array_equal(metrics.warp_bilinear(frame, flow), want)


def test_flowd_fb_static_and_zero_flow_cases():
  rng = np.random.default_rng(16)
  still = np.stack([_smooth_u8(rng, (32, 40), 2)] * 3)
  assert metrics.tdiff(still) == 0.0
  # Farneback returns small non-zero flows near the border of still frames.
  assert metrics.flowd_fb(still, still) < 0.1
  # A flat guide gives zero Farneback flow, so flowD_fb reduces to tdiff.
  flat_guide = np.full((3, 32, 40), 120, np.uint8)
  flicker = np.stack([_smooth_u8(rng, (32, 40), 2) for _ in range(3)])
  assert metrics.flowd_fb(flicker, flat_guide) == pytest.approx(metrics.tdiff(flicker), abs=1e-12)


def test_backward_flow_direction_and_motion_compensation():
  rng = np.random.default_rng(17)
  base = _smooth_u8(rng, (64, 96), 2.5)
  shift = 2
  # Content moves right by `shift`: V_t(x) = V_{t-1}(x - shift), so u ~ -shift.
  video = np.stack([base[:, 8 - shift * t: 8 - shift * t + 80] for t in range(3)])
  flow = metrics.farneback_backward_flow(video[1], video[0])
  assert np.median(flow[12:-12, 12:-12, 0]) == pytest.approx(-shift, abs=0.05)
  assert np.median(np.abs(flow[12:-12, 12:-12, 1])) < 0.05
  assert metrics.flowd_fb(video, video) < 0.25 * metrics.tdiff(video)


@needs_data
def test_flowd_fb_matches_independent_warp_on_real_video():
  cv2 = pytest.importorskip('cv2')
  crop = (slice(120, 240), slice(200, 360))
  fused = np.stack([_real_triple(VIDEOS[0], i, crop)[0] for i in range(3)])
  guide = np.stack([_load('visible_Enhance', VIDEOS[0], i)[crop] for i in range(3)])
  guide_gray = [_ref_gray(v) for v in guide]
  h, w = fused.shape[1:3]
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                           indexing='ij')
  dists = []
  for t in (1, 2):
    u = cv2.calcOpticalFlowFarneback(guide_gray[t], guide_gray[t - 1], None,
                                     0.5, 3, 15, 3, 5, 1.2, 0)
    u = u.astype(np.float64)
    coords = [rows + u[..., 1], cols + u[..., 0]]
    warped = np.stack([ndimage.map_coordinates(fused[t - 1, ..., c].astype(np.float64), coords,
                                               order=1, mode='nearest') for c in range(3)], -1)
    dists.append(np.mean(np.linalg.norm(fused[t].astype(np.float64) - warped, axis=-1)))
  assert abs(metrics.flowd_fb(fused, guide) - np.mean(dists)) <= FLOWD_TOL


# ----------------------------------------------------------------------------
# BiSWE_fb and MS2R_fb (METRICS_VFBENCH.md Part B).


def _ref_fb(a, b):
  """FB(a, b) of B.2, straight from OpenCV on the reference grey."""
  cv2 = pytest.importorskip('cv2')
  flow = cv2.calcOpticalFlowFarneback(_ref_gray(a), _ref_gray(b), None, 0.5, 3, 15, 3, 5, 1.2, 0)
  return flow.astype(np.float64)


def _ref_warp(img, flow):
  """Border-clamped exact bilinear backward warp of (H, W, C) by map_coordinates."""
  h, w = img.shape[:2]
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing='ij')
  coords = [rows + flow[..., 1], cols + flow[..., 0]]
  return np.stack([ndimage.map_coordinates(img[..., c], coords, order=1, mode='nearest')
                   for c in range(img.shape[-1])], -1)


def _ref_vfbench(fused, sources):
  """Per-centre (BiSWE_fb, valid_frac, MS2R_fb), window by window as VF-Bench does (18 flows each)."""
  fused = fused.astype(np.float64).reshape(fused.shape[:3] + (-1,))
  sources = [s[..., 0] if s.ndim == 4 and s.shape[-1] == 1 else s for s in sources]
  last = len(fused) - 1
  out = []
  for c in range(last + 1):
    p, n = max(c - 1, 0), min(c + 1, last)
    errors, fractions = [], []
    for side in (p, n):
      mask = np.ones(fused.shape[1:3])
      for s in sources:
        a, b = _ref_fb(s[c], s[side]), _ref_fb(s[side], s[c])
        cycle = a + _ref_warp(b, a)
        mask *= np.hypot(cycle[..., 0], cycle[..., 1]) < 1.0
      warped = _ref_warp(fused[side], _ref_fb(fused[c].astype(np.uint8), fused[side].astype(np.uint8)))
      error = np.abs(fused[c] - warped).mean(-1)
      errors.append((mask * error).sum() / (mask.sum() + 1e-10))
      fractions.append(mask.mean())
    g8 = fused.astype(np.uint8)
    d_fused = _ref_fb(g8[c], g8[n]) - _ref_fb(g8[p], g8[c])
    ms2r = 0.5 * sum(np.abs(d_fused - (_ref_fb(s[c], s[n]) - _ref_fb(s[p], s[c]))).mean() for s in sources)
    out.append((errors[0] + errors[1], 0.5 * (fractions[0] + fractions[1]), ms2r))
  return out


def _moving(rng, shape, steps, channels=3, sigma=3.0):
  """uint8 (T, H, W, C) crops of one smooth texture (values 20..220) at cumulative (dx, dy) steps."""
  h, w = shape
  pad = 4 + sum(max(abs(dx), abs(dy)) for dx, dy in steps)
  base = _smooth_u8(rng, (h + 2 * pad, w + 2 * pad, channels), sigma)
  base = (20 + base.astype(np.float64) * 200 / 255).round().astype(np.uint8)
  frames, x, y = [], 0, 0
  for dx, dy in [(0, 0)] + list(steps):
    x, y = x + dx, y + dy
    frames.append(base[pad - y: pad - y + h, pad - x: pad - x + w])  # Content moves by (+x, +y).
  return np.stack(frames)


def _stream_flows(frames):
  stream = metrics.TripletFlowStream()
  flows = [stream.push(f) for f in frames][1:]
  return flows + [stream.finish()]


def test_vfbench_fb_match_an_independent_window_by_window_reference():
  rng = np.random.default_rng(20)
  vi = _moving(rng, (32, 40), [(1, 0), (2, 1), (1, 1)])
  ir = np.stack([_smooth_u8(rng, (32, 40, 1), 2) for _ in range(4)])  # Unrelated frames: partial masks.
  noise = rng.integers(0, 12, vi.shape)
  fused = np.clip((vi.astype(np.float64) + ir) / 2 + noise, 0, 255).round().astype(np.uint8)
  want = _ref_vfbench(fused, [ir, vi])
  assert abs(metrics.biswe_fb(fused, ir, vi) - np.mean([w[0] for w in want])) <= FLOWD_TOL
  assert abs(metrics.ms2r_fb(fused, ir, vi) - np.mean([w[2] for w in want])) <= FLOWD_TOL
  # The streaming terms, centre by centre.
  fused_flows = _stream_flows(fused)
  source_flows = list(zip(_stream_flows(ir), _stream_flows(vi)))
  for t, (biswe, valid, ms2r) in enumerate(want):
    prev, nxt = fused[max(t - 1, 0)], fused[min(t + 1, 3)]
    got = metrics.biswe_fb_term(prev, fused[t], nxt, fused_flows[t], metrics.source_masks(source_flows[t]))
    assert got == pytest.approx((biswe, valid), abs=FLOWD_TOL)
    assert metrics.ms2r_fb_term(fused_flows[t], source_flows[t]) == pytest.approx(ms2r, abs=FLOWD_TOL)
  assert 0 < min(w[1] for w in want) and max(w[1] for w in want) < 1  # The masks matter.


def test_triplet_flow_stream_computes_each_neighbour_flow_once(monkeypatch):
  pytest.importorskip('cv2')
  calls = []
  flow = metrics.farneback_backward_flow
  monkeypatch.setattr(metrics, 'farneback_backward_flow', lambda a, b: calls.append(1) or flow(a, b))
  video = _moving(np.random.default_rng(21), (24, 32), [(1, 0)] * 4)
  flows = metrics.sequence_triplet_flows(video)
  assert len(flows) == 5 and len(calls) == 2 * (5 - 1) + 2
  np.testing.assert_array_equal(flows[2].to_next, flows[3].from_prev)  # FB(V_2, V_3), shared.
  np.testing.assert_array_equal(flows[0].to_prev, flows[0].from_prev)  # FB(V_0, V_0), computed once.


def test_vfbench_fb_identical_inputs():
  """G = S1 = S2: MS2R_fb is exactly 0 (static or moving); static BiSWE_fb ~ 0 with full masks."""
  pytest.importorskip('cv2')
  rng = np.random.default_rng(22)
  still = _moving(rng, VFBENCH_SHAPE, [(0, 0)] * 2)
  assert metrics.ms2r_fb(still, still, still) == 0.0
  assert metrics.biswe_fb(still, still, still) < VFBENCH_STATIC_TOL
  flows = _stream_flows(still)
  for t in range(3):
    masks = metrics.source_masks([flows[t]] * 2)
    _, valid = metrics.biswe_fb_term(still[max(t - 1, 0)], still[t], still[min(t + 1, 2)], flows[t], masks)
    assert valid == 1.0
  moving = _moving(rng, VFBENCH_SHAPE, [(2, 1), (2, 1)])
  assert metrics.ms2r_fb(moving, moving, moving) == 0.0


@pytest.mark.parametrize('delta', [5, 10])
def test_vfbench_fb_brightness_step_gives_two_delta(delta):
  """Static scene and sources, centre fused frame + delta: BiSWE_fb(centre) ~ 2 delta, MS2R_fb ~ 0."""
  pytest.importorskip('cv2')
  rng = np.random.default_rng(23)
  fused = _moving(rng, VFBENCH_SHAPE, [(0, 0)] * 2)
  fused[1] += np.uint8(delta)  # Values 20..220: no saturation.
  ir = _moving(rng, VFBENCH_SHAPE, [(0, 0)] * 2, channels=1)
  vi = _moving(rng, VFBENCH_SHAPE, [(0, 0)] * 2)
  fused_flows = _stream_flows(fused)
  sources = list(zip(_stream_flows(ir), _stream_flows(vi)))
  biswe, _ = metrics.biswe_fb_term(fused[0], fused[1], fused[2], fused_flows[1], metrics.source_masks(sources[1]))
  assert biswe == pytest.approx(2 * delta, abs=VFBENCH_STEP_TOL)
  assert metrics.ms2r_fb_term(fused_flows[1], sources[1]) < VFBENCH_MS2R_STATIC_TOL
  # Per video: the end centres see one step each, the middle one two: (1 + 2 + 1) delta / 3.
  assert metrics.biswe_fb(fused, ir, vi) == pytest.approx(4 * delta / 3, abs=VFBENCH_STEP_TOL)


def test_vfbench_fb_acceleration_and_source_swap():
  """Sources at constant velocity, fused accelerating by (+2, +1): MS2R_fb ~ (2 + 1) / 2 inside the frame."""
  pytest.importorskip('cv2')
  rng = np.random.default_rng(24)
  ir = _moving(rng, VFBENCH_SHAPE, [(2, 1), (2, 1)], channels=1)
  vi = _moving(rng, VFBENCH_SHAPE, [(2, 1), (2, 1)])
  fused = _moving(rng, VFBENCH_SHAPE, [(2, 1), (4, 2)])
  fused_flows = _stream_flows(fused)
  sources = list(zip(_stream_flows(ir), _stream_flows(vi)))
  assert VFBENCH_ACCEL_RANGE[0] < metrics.ms2r_fb_term(fused_flows[1], sources[1]) < VFBENCH_ACCEL_RANGE[1]
  assert metrics.biswe_fb(fused, ir, vi) == metrics.biswe_fb(fused, vi, ir)
  assert metrics.ms2r_fb(fused, ir, vi) == metrics.ms2r_fb(fused, vi, ir)


def test_vfbench_fb_grey_fused_equals_three_equal_channels():
  pytest.importorskip('cv2')
  rng = np.random.default_rng(25)
  grey = _moving(rng, (32, 40), [(1, 1), (2, 0)], channels=1)
  vi = _moving(rng, (32, 40), [(1, 1), (2, 0)])
  rgb = np.repeat(grey, 3, axis=-1)
  assert metrics.biswe_fb(grey, grey, vi) == pytest.approx(metrics.biswe_fb(rgb, grey, vi), abs=1e-12)
  assert metrics.biswe_fb(grey[..., 0], grey, vi) == pytest.approx(metrics.biswe_fb(rgb, grey, vi), abs=1e-12)
  assert metrics.ms2r_fb(grey, grey, vi) == metrics.ms2r_fb(rgb, grey, vi)


def test_vfbench_fb_input_validation():
  seq = np.zeros((3, 8, 8), np.uint8)
  with pytest.raises(ValueError, match='share'):
    metrics.biswe_fb(seq, seq[:2], seq)
  with pytest.raises(ValueError, match='at least 2 frames'):
    metrics.ms2r_fb(seq[:1], seq[:1], seq[:1])
  with pytest.raises(ValueError, match='uint8'):
    metrics.biswe_fb(seq.astype(np.float32), seq, seq)
  with pytest.raises(ValueError, match='no frame'):
    metrics.TripletFlowStream().finish()


def test_intensity_curve():
  seq = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)])
  np.testing.assert_array_equal(metrics.intensity_curve(seq), [10.0, 20.0, 30.0])
