"""Procedural registered infrared/visible videos: the built-in data a newcomer can train on without a download.

A scene is a large canvas of textured "materials" (multi-scale power-law noise, soft region boundaries) with
a colour and a temperature each, seen through a drifting, slightly shaking camera (sub-pixel, bilinear), with
warm moving objects (people, vehicles) that are bright in infrared and camouflaged or low-contrast in
visible. By day the visible image is well lit; by night it is dark, flat and noisy, lit by a few lamps, while
the infrared is still informative. Infrared and visible are rendered from the same geometry, so they are
registered pixel for pixel, and motion is smooth, so consecutive frames are strongly correlated.

Every quantity of a video is a closed-form function of time drawn from one generator, so any frame range of
a video can be rendered alone, and `SyntheticVideoSource` serves fixed-length chunks of fixed videos by
index, in the per-example layout of the M3SVD TFDS dataset. Pure numpy, picklable, deterministic.
"""

import colorsys
import dataclasses
import math
import operator
from typing import Optional, Sequence, Union

import numpy as np

from vfusion_jax import metrics

SeedLike = Union[int, np.random.SeedSequence, np.random.Generator]

# Sizes below are for a 128-pixel frame and scale with min(height, width).
REFERENCE_SIZE = 128.0
# Amplitude spectra ~ 1 / f^exponent: larger is smoother.
MATERIAL_EXPONENT = 2.4
FINE_TEXTURE_EXPONENT_RANGE = (1.1, 1.6)
IR_TEXTURE_EXPONENT = 1.9
SHADING_EXPONENT = 2.6
NUM_MATERIALS_RANGE = (2, 5)  # [lo, hi) integers.
# Softmax sharpness of material boundaries (in std units of the material fields).
MATERIAL_SHARPNESS = 6.0
MATERIAL_SATURATION_RANGE = (0.05, 0.45)
MATERIAL_VALUE_RANGE = (0.25, 0.85)
MATERIAL_TEXTURE_CONTRAST_RANGE = (0.05, 0.3)
SHADING_CONTRAST = 0.12
# Background temperatures (IR intensities; real M3SVD IR frames average 0.14-0.20) and their fine texture.
BACKGROUND_TEMPERATURE_RANGE = (0.05, 0.4)
IR_TEXTURE_CONTRAST_RANGE = (0.02, 0.08)
# Share of the visible fine texture in the IR texture: registered, partly shared structure.
IR_SHARED_TEXTURE_WEIGHT = 0.5
# At night the background temperature contrast shrinks by this factor and the scene cools by an offset.
NIGHT_IR_CONTRAST = 0.8
NIGHT_IR_COOLING = 0.05

# Camera: drift (px/frame at 128 px), shake amplitude (px) and period (frames).
CAMERA_DRIFT_RANGE = (-0.25, 0.25)
CAMERA_SHAKE_RANGE = (0.0, 1.5)
CAMERA_SHAKE_PERIOD_RANGE = (20.0, 80.0)

# Objects.
NUM_OBJECTS_RANGE = (2, 7)  # [lo, hi) integers.
PERSON_PROBABILITY = 0.6
PERSON_HALF_WIDTH_RANGE = (2.5, 5.0)
PERSON_ASPECT_RANGE = (2.0, 3.0)  # height / width.
PERSON_EXPONENT_RANGE = (2.0, 2.5)  # superellipse exponent.
VEHICLE_HALF_WIDTH_RANGE = (6.0, 14.0)
VEHICLE_ASPECT_RANGE = (0.45, 0.7)
VEHICLE_EXPONENT_RANGE = (3.0, 5.0)
OBJECT_SPEED_RANGE = (0.15, 1.2)  # px/frame at 128 px.
OBJECT_TEMPERATURE_RANGE = (0.65, 0.95)
OBJECT_TOP_WARMING = 0.08  # extra temperature at the top of an object (heads, engines).
CAMOUFLAGE_PROBABILITY = 0.7
CAMOUFLAGE_COLOUR_STD = 0.04
OBJECT_SHADING = 0.15  # visible darkening from the top to the bottom of an object.

# Illumination: multiplicative light levels, lamps (night only) and visible sensor noise at night.
DAY_LIGHT_RANGE = (0.75, 1.05)
NIGHT_LIGHT_RANGE = (0.1, 0.3)
NIGHT_PROBABILITY = 0.3
NUM_LAMPS_RANGE = (1, 6)  # [lo, hi) integers.
LAMP_INTENSITY_RANGE = (0.3, 0.9)
LAMP_RADIUS_RANGE = (4.0, 15.0)  # px at 128 px.
LAMP_COLOUR = (1.0, 0.8, 0.55)
NIGHT_NOISE_STD_RANGE = (0.004, 0.015)


def _as_generator(seed: SeedLike) -> np.random.Generator:
  if isinstance(seed, np.random.Generator):
    return seed
  return np.random.default_rng(seed)


def _power_law_noise(rng: np.random.Generator, height: int, width: int, exponent: float) -> np.ndarray:
  """Zero-mean, unit-std multi-scale noise with amplitude spectrum 1 / f^exponent; (H, W) float32."""
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  freq = np.hypot(fy, fx)
  freq[0, 0] = np.inf
  amplitude = freq**-exponent
  spectrum = amplitude * (rng.standard_normal(amplitude.shape) + 1j * rng.standard_normal(amplitude.shape))
  field = np.fft.irfft2(spectrum, s=(height, width))
  return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Folds x into [lo, hi] like a ball bouncing between walls (a triangle wave)."""
  span = max(hi - lo, 1e-6)
  u = np.mod(x - lo, 2.0 * span)
  return lo + np.where(u < span, u, 2.0 * span - u)


@dataclasses.dataclass(frozen=True)
class _Object:
  """A warm object: superellipse of half sizes (a, b), moving and bouncing inside the canvas."""
  start: np.ndarray  # (2,) canvas (y, x).
  velocity: np.ndarray  # (2,) px/frame.
  half_width: float
  half_height: float
  exponent: float
  temperature: float
  colour: np.ndarray  # (3,) albedo.

  def centre(self, t: np.ndarray, canvas_size: tuple[int, int]) -> np.ndarray:
    """(len(t), 2) canvas positions at times t."""
    pos = self.start[None] + self.velocity[None] * np.asarray(t, np.float64)[:, None]
    margins = (self.half_height, self.half_width)
    return np.stack([_reflect(pos[:, k], margins[k], canvas_size[k] - 1 - margins[k]) for k in range(2)], 1)


@dataclasses.dataclass(frozen=True)
class _Scene:
  """Everything that defines one synthetic video."""
  height: int
  width: int
  num_frames: int
  margin: tuple[int, int]
  canvas: np.ndarray  # (Hc, Wc, 7): albedo RGB, temperature, light RGB.
  camera_drift: np.ndarray  # (2,)
  camera_shake: np.ndarray  # (2,)
  camera_period: np.ndarray  # (2,)
  camera_phase: np.ndarray  # (2,)
  objects: tuple[_Object, ...]
  night: bool
  noise_std: float
  noise_seed: int

  def camera(self, t: float) -> np.ndarray:
    """Canvas (y, x) of the frame's top-left pixel at time t."""
    shake = self.camera_shake * (np.sin(2 * np.pi * t / self.camera_period + self.camera_phase)
                                 - np.sin(self.camera_phase))
    return np.asarray(self.margin, np.float64) + self.camera_drift * t + shake


def _random_colour(rng: np.random.Generator) -> np.ndarray:
  hue = rng.uniform()
  sat = rng.uniform(*MATERIAL_SATURATION_RANGE)
  val = rng.uniform(*MATERIAL_VALUE_RANGE)
  return np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32)


def _make_scene(rng: np.random.Generator, num_frames: int, height: int, width: int, night: Optional[bool],
                night_probability: float, num_objects: Optional[int]) -> _Scene:
  """Draws a scene; the draw order is fixed, and `night`/`num_objects` overrides do not change it."""
  scale = min(height, width) / REFERENCE_SIZE
  is_night = bool(rng.uniform() < night_probability)
  if night is not None:
    is_night = bool(night)

  # Camera path and the canvas it needs: the largest excursion over the video, plus interpolation room.
  drift = rng.uniform(*CAMERA_DRIFT_RANGE, size=2) * scale
  shake = rng.uniform(*CAMERA_SHAKE_RANGE, size=2) * scale
  period = rng.uniform(*CAMERA_SHAKE_PERIOD_RANGE, size=2)
  phase = rng.uniform(0, 2 * np.pi, size=2)
  margin = tuple(int(math.ceil(abs(drift[k]) * max(num_frames - 1, 0) + 2 * shake[k])) + 2 for k in range(2))
  canvas_h, canvas_w = height + 2 * margin[0], width + 2 * margin[1]

  # Materials: soft regions with a colour, a temperature and a texture contrast each.
  num_materials = int(rng.integers(*NUM_MATERIALS_RANGE))
  logits = np.stack([_power_law_noise(rng, canvas_h, canvas_w, MATERIAL_EXPONENT)
                     for _ in range(num_materials)], -1) * MATERIAL_SHARPNESS
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  colours = np.stack([_random_colour(rng) for _ in range(num_materials)])
  temperatures = rng.uniform(*BACKGROUND_TEMPERATURE_RANGE, size=num_materials).astype(np.float32)
  contrasts = rng.uniform(*MATERIAL_TEXTURE_CONTRAST_RANGE, size=num_materials).astype(np.float32)

  fine = _power_law_noise(rng, canvas_h, canvas_w, rng.uniform(*FINE_TEXTURE_EXPONENT_RANGE))
  shading = _power_law_noise(rng, canvas_h, canvas_w, SHADING_EXPONENT)
  ir_own = _power_law_noise(rng, canvas_h, canvas_w, IR_TEXTURE_EXPONENT)
  ir_contrast = rng.uniform(*IR_TEXTURE_CONTRAST_RANGE)

  # Mixtures via einsum rather than BLAS, whose threads crawl when data workers share few cores.
  luminance = 1.0 + np.einsum('hwk,k->hw', weights, contrasts) * fine + SHADING_CONTRAST * shading
  albedo = np.clip(np.einsum('hwk,kc->hwc', weights, colours) * luminance[..., None], 0.0, 1.0)
  ir_texture = IR_SHARED_TEXTURE_WEIGHT * fine + (1.0 - IR_SHARED_TEXTURE_WEIGHT) * ir_own
  temperature = (np.einsum('hwk,k->hw', weights, temperatures) + ir_contrast * ir_texture
                 + 0.5 * ir_contrast * shading)
  if is_night:
    temperature = temperature.mean() + NIGHT_IR_CONTRAST * (temperature - temperature.mean()) - NIGHT_IR_COOLING
  temperature = np.clip(temperature, 0.0, 1.0)

  # Light: uniform by day; by night a dim level plus lamp glows fixed in the scene.
  yy, xx = np.mgrid[0:canvas_h, 0:canvas_w].astype(np.float32)
  num_lamps = int(rng.integers(*NUM_LAMPS_RANGE))
  lamps = [(rng.uniform(0, canvas_h), rng.uniform(0, canvas_w), rng.uniform(*LAMP_INTENSITY_RANGE),
            rng.uniform(*LAMP_RADIUS_RANGE) * scale) for _ in range(num_lamps)]
  day_light = rng.uniform(*DAY_LIGHT_RANGE)
  night_light = rng.uniform(*NIGHT_LIGHT_RANGE)
  night_noise_std = float(rng.uniform(*NIGHT_NOISE_STD_RANGE))
  noise_std = night_noise_std if is_night else 0.0
  if is_night:
    glow = np.zeros((canvas_h, canvas_w), np.float32)
    for cy, cx, intensity, radius in lamps:
      glow += intensity * np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2.0 * radius**2))
    light = night_light + glow[..., None] * np.asarray(LAMP_COLOUR, np.float32)
  else:
    light = np.full((canvas_h, canvas_w, 3), day_light, np.float32)

  # Objects, drawn against the canvas: camouflaged ones take the local background colour.
  count = int(rng.integers(*NUM_OBJECTS_RANGE))
  if num_objects is not None:
    count = num_objects
  objects = []
  for _ in range(count):
    person = rng.uniform() < PERSON_PROBABILITY
    if person:
      half_w = rng.uniform(*PERSON_HALF_WIDTH_RANGE) * scale
      half_h = half_w * rng.uniform(*PERSON_ASPECT_RANGE)
      exponent = rng.uniform(*PERSON_EXPONENT_RANGE)
    else:
      half_w = rng.uniform(*VEHICLE_HALF_WIDTH_RANGE) * scale
      half_h = half_w * rng.uniform(*VEHICLE_ASPECT_RANGE)
      exponent = rng.uniform(*VEHICLE_EXPONENT_RANGE)
    start = np.array([rng.uniform(half_h, canvas_h - 1 - half_h), rng.uniform(half_w, canvas_w - 1 - half_w)])
    angle = rng.uniform(0, 2 * np.pi)
    velocity = rng.uniform(*OBJECT_SPEED_RANGE) * scale * np.array([np.sin(angle), np.cos(angle)])
    temp = rng.uniform(*OBJECT_TEMPERATURE_RANGE)
    camouflage = rng.uniform() < CAMOUFLAGE_PROBABILITY
    jitter = rng.normal(0.0, CAMOUFLAGE_COLOUR_STD, size=3)
    random_colour = _random_colour(rng)
    if camouflage:
      iy, ix = int(round(start[0])), int(round(start[1]))
      local = albedo[max(iy - 3, 0):iy + 4, max(ix - 3, 0):ix + 4].reshape(-1, 3).mean(0)
      colour = np.clip(local + jitter, 0.0, 1.0)
    else:
      colour = random_colour
    objects.append(_Object(start=start, velocity=velocity, half_width=float(half_w), half_height=float(half_h),
                           exponent=float(exponent), temperature=float(temp),
                           colour=np.asarray(colour, np.float32)))
  noise_seed = int(rng.integers(2**63))
  canvas = np.concatenate([albedo, temperature[..., None], light], -1).astype(np.float32)
  return _Scene(height=height, width=width, num_frames=num_frames, margin=margin, canvas=canvas,
                camera_drift=drift, camera_shake=shake, camera_period=period, camera_phase=phase,
                objects=tuple(objects), night=is_night, noise_std=noise_std, noise_seed=noise_seed)


def _sample_window(canvas: np.ndarray, top_left: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (height, width) window of the canvas whose top-left lies at the sub-pixel `top_left`."""
  iy, ix = (int(math.floor(v)) for v in top_left)
  fy, fx = (float(v - math.floor(v)) for v in top_left)
  patch = canvas[iy:iy + height + 1, ix:ix + width + 1]
  top = (1.0 - fx) * patch[:-1, :-1] + fx * patch[:-1, 1:]
  bottom = (1.0 - fx) * patch[1:, :-1] + fx * patch[1:, 1:]
  return (1.0 - fy) * top + fy * bottom


def _paint_object(obj: _Object, centre: np.ndarray, albedo: np.ndarray, temperature: np.ndarray,
                  mask: np.ndarray) -> None:
  """Composites one object (frame coordinates `centre`) into the frame buffers, in place."""
  height, width = temperature.shape
  cy, cx = centre
  y0, y1 = max(int(cy - obj.half_height) - 1, 0), min(int(cy + obj.half_height) + 3, height)
  x0, x1 = max(int(cx - obj.half_width) - 1, 0), min(int(cx + obj.half_width) + 3, width)
  if y0 >= y1 or x0 >= x1:
    return
  dy = (np.arange(y0, y1, dtype=np.float32)[:, None] - cy) / obj.half_height
  dx = (np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / obj.half_width
  rho = (np.abs(dy)**obj.exponent + np.abs(dx)**obj.exponent)**(1.0 / obj.exponent)
  # A one-pixel linear edge: the object covers a pixel fully once it is half a pixel inside the outline.
  cover = np.clip((1.0 - rho) * min(obj.half_width, obj.half_height) + 0.5, 0.0, 1.0)
  obj_temp = obj.temperature - OBJECT_TOP_WARMING * dy
  obj_colour = obj.colour[None, None] * (1.0 - OBJECT_SHADING * 0.5 * (dy[..., None] + 1.0))
  region = (slice(y0, y1), slice(x0, x1))
  temperature[region] = (1.0 - cover) * temperature[region] + cover * obj_temp
  albedo[region] = (1.0 - cover[..., None]) * albedo[region] + cover[..., None] * obj_colour
  mask[region] = np.maximum(mask[region], cover)


def _render(scene: _Scene, frames: Sequence[int]) -> dict:
  """Renders the given frame indices of a scene."""
  height, width = scene.height, scene.width
  canvas_size = scene.canvas.shape[:2]
  times = np.asarray(frames, np.float64)
  centres = [obj.centre(times, canvas_size) for obj in scene.objects]
  ir = np.empty((len(frames), height, width, 1), np.float32)
  vi = np.empty((len(frames), height, width, 3), np.float32)
  masks = np.zeros((len(frames), height, width, 1), np.float32)
  for i, t in enumerate(frames):
    top_left = scene.camera(float(t))
    window = _sample_window(scene.canvas, top_left, height, width)
    albedo = window[..., :3].copy()
    temperature = window[..., 3].copy()
    light = window[..., 4:]
    mask = masks[i, ..., 0]
    for obj, centre in zip(scene.objects, centres):
      _paint_object(obj, centre[i] - top_left, albedo, temperature, mask)
    colour = albedo * light
    if scene.noise_std > 0:
      frame_rng = np.random.default_rng([scene.noise_seed, int(t)])
      colour = colour + scene.noise_std * frame_rng.standard_normal(colour.shape, dtype=np.float32)
    ir[i, ..., 0] = temperature
    vi[i] = colour
  np.clip(ir, 0.0, 1.0, out=ir)
  np.clip(vi, 0.0, 1.0, out=vi)
  return dict(ir_gt=ir, vi_gt=vi, mask=masks, night=scene.night)


def synthetic_video_pair(rng: SeedLike = 0, num_frames: int = 16, height: int = 128, width: int = 128, *,
                         night: Optional[bool] = None, night_probability: float = NIGHT_PROBABILITY,
                         num_objects: Optional[int] = None, frames: Optional[Sequence[int]] = None) -> dict:
  """Renders a registered synthetic infrared/visible video (or a frame range of it).

  Args:
    rng: a Generator (consumed) or a seed; the same seed gives the same video.
    num_frames: length of the video; fixes the camera path and the canvas, so chunks of one video agree.
    height: frame height.
    width: frame width.
    night: force night (True) or day (False); None draws it with `night_probability`. Forcing it keeps the
      rest of the scene identical.
    night_probability: chance of a night video when `night` is None.
    num_objects: number of warm objects; None draws 2-6.
    frames: frame indices in [0, num_frames) to render; default all.

  Returns:
    dict with ir_gt (F, H, W, 1) and vi_gt (F, H, W, 3) float32 in [0, 1], mask (F, H, W, 1) float32 object
    coverage in [0, 1], and night (bool); F = len(frames).
  """
  frames = list(range(num_frames)) if frames is None else [operator.index(f) for f in frames]
  if any(not 0 <= f < num_frames for f in frames):
    raise ValueError(f'frames must lie in [0, {num_frames}), got {frames}')
  if height < 1 or width < 1:
    raise ValueError(f'need a positive frame size, got {height}x{width}')
  scene = _make_scene(_as_generator(rng), num_frames, height, width, night, night_probability, num_objects)
  return _render(scene, frames)


class SyntheticVideoSource:
  """Random-access source of synthetic clips, laid out like the M3SVD TFDS examples.

  Video v (seeded by (seed, v)) has `frames_per_video` frames cut into consecutive chunks of
  `frames_per_example`; example i is chunk i % chunks of video i // chunks, as a dict:
    video (str), frame_index (int, the chunk's first frame in its video), num_video_frames (int),
    ir_gt uint8 (F, H, W, 1), vi_gt uint8 (F, H, W, 3).
  Examples are rendered on demand and are identical whenever and wherever they are read.
  """

  def __init__(self, num_videos: int = 64, frames_per_video: int = 48, frames_per_example: int = 16,
               height: int = 128, width: int = 128, seed: int = 0,
               night_probability: float = NIGHT_PROBABILITY):
    if not 0 < frames_per_example <= frames_per_video:
      raise ValueError(f'need 0 < frames_per_example <= frames_per_video, got {frames_per_example}, '
                       f'{frames_per_video}')
    if num_videos < 1:
      raise ValueError(f'need at least one video, got {num_videos}')
    self.num_videos = num_videos
    self.frames_per_video = frames_per_video
    self.frames_per_example = frames_per_example
    self.height = height
    self.width = width
    self.seed = seed
    self.night_probability = night_probability
    self.examples_per_video = frames_per_video // frames_per_example

  def __len__(self) -> int:
    return self.num_videos * self.examples_per_video

  def video_name(self, video: int) -> str:
    return f'synthetic_{video:05d}'

  def __getitem__(self, index: int) -> dict:
    index = operator.index(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'index {index} out of range for {len(self)} examples')
    video, chunk = divmod(index, self.examples_per_video)
    start = chunk * self.frames_per_example
    pair = synthetic_video_pair(np.random.SeedSequence([self.seed, video]), self.frames_per_video, self.height,
                                self.width, night_probability=self.night_probability,
                                frames=range(start, start + self.frames_per_example))
    return dict(video=self.video_name(video), frame_index=start,
                num_video_frames=self.examples_per_video * self.frames_per_example,
                ir_gt=metrics.to_uint8(pair['ir_gt']), vi_gt=metrics.to_uint8(pair['vi_gt']))

  def __repr__(self) -> str:
    return (f'SyntheticVideoSource(num_videos={self.num_videos}, frames_per_video={self.frames_per_video}, '
            f'frames_per_example={self.frames_per_example}, height={self.height}, width={self.width}, '
            f'seed={self.seed})')
