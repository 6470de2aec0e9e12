"""
Training augmentations on normalised depth crops (numpy only).

Geometric augmentations follow the papers (A2J, CrossInfoNet): in-plane rotation up to
+-180 deg, scale, translation / centre jitter (image plane and depth). They are applied to
a *context crop*: the crop of :mod:`hand_pose_ros.core.crop` made with a cube
``context`` times larger than the model's (``context_spec``). Resampling the context crop
with the sampled rotation, scale and shift gives the same patch that ``crop_depth`` would
make around the jittered centre with the rotated, scaled cube, without keeping the full
image, and the joints are transformed by the same map, so labels stay consistent.

Appearance augmentations: Gaussian depth noise and random erasing (papers), and
sensor-realism ones for the synthetic-to-real gap: random holes (blobs of missing depth),
edge dropout (missing pixels along depth discontinuities, as structured-light and stereo
sensors lose them) and per-pixel depth noise.

Crop conventions (see ``crop``): patch value (d - center_z) / (cube_z / 2) in [-1, 1],
background and invalid = 1; normalised joint u, v in [-1, 1] over the crop's outer edges.
"""

from dataclasses import dataclass, fields
import math

import numpy as np

from hand_pose_ros.core.config_io import dataclass_from_dict
from hand_pose_ros.core.crop import BACKGROUND_VALUE, color_input, CropSpec


@dataclass(frozen=True)
class AugmentConfig:
    """
    Ranges of the training augmentations (set a probability or range to 0 to disable).

    :param rotation_deg: maximum in-plane rotation, degrees (uniform in +-).
    :param scale_range: (min, max) factor of the cube size (> 1: the hand looks smaller).
    :param shift_px: standard deviation of the crop centre shift in output pixels.
    :param depth_shift_m: standard deviation of the crop centre depth shift, metres.
    :param noise_mm: maximum standard deviation of Gaussian depth noise, millimetres (the
        per-sample sigma is uniform in [0, noise_mm]).
    :param erase_prob: probability of random erasing of one rectangle.
    :param erase_area: (min, max) fraction of the patch area erased.
    :param hole_prob: probability of adding sensor-like holes.
    :param max_holes: maximum number of elliptical holes.
    :param hole_radius_frac: (min, max) hole radius as a fraction of the patch side.
    :param edge_dropout_prob: probability of dropping pixels along depth edges.
    :param edge_threshold_mm: depth jump between neighbours that counts as an edge.
    :param edge_keep: (min, max) fraction of edge pixels kept when dropout applies.
    :param brightness_range: (min, max) factor of every colour channel (colour crops only).
    :param color_gain_range: (min, max) extra factor drawn per colour channel.
    :param color_noise: maximum standard deviation of Gaussian colour noise (colour values
        in [0, 1]; the per-sample sigma is uniform in [0, color_noise]).
    """

    rotation_deg: float = 180.0
    scale_range: tuple = (0.9, 1.1)
    shift_px: float = 5.0
    depth_shift_m: float = 0.010
    noise_mm: float = 3.0
    erase_prob: float = 0.3
    erase_area: tuple = (0.02, 0.12)
    hole_prob: float = 0.5
    max_holes: int = 4
    hole_radius_frac: tuple = (0.02, 0.08)
    edge_dropout_prob: float = 0.5
    edge_threshold_mm: float = 20.0
    edge_keep: tuple = (0.3, 0.9)
    brightness_range: tuple = (0.6, 1.4)
    color_gain_range: tuple = (0.85, 1.15)
    color_noise: float = 0.03

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            values = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
                       for v in values):
                raise ValueError(f'augment {item.name} must be finite non-negative, '
                                 f'got {value!r}')
            if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(f'augment {item.name} must be a (min, max) pair, '
                                 f'got {value!r}')
        for name in ('erase_prob', 'hole_prob', 'edge_dropout_prob'):
            if getattr(self, name) > 1:
                raise ValueError(f'augment {name} is a probability, got {getattr(self, name)}')
        if self.scale_range[0] <= 0:
            raise ValueError(f'augment scale_range must be positive, got {self.scale_range}')

    @classmethod
    def from_dict(cls, values):
        """Build from a plain dict (YAML); lists become tuples, unknown keys raise."""
        return dataclass_from_dict(cls, values, 'augment')


NO_AUGMENT = AugmentConfig(rotation_deg=0.0, scale_range=(1.0, 1.0), shift_px=0.0,
                           depth_shift_m=0.0, noise_mm=0.0, erase_prob=0.0, hole_prob=0.0,
                           edge_dropout_prob=0.0, brightness_range=(1.0, 1.0),
                           color_gain_range=(1.0, 1.0), color_noise=0.0)


def context_spec(spec, context=1.5):
    """
    Return the larger crop spec whose patches :func:`augment_crop` resamples.

    :param spec: the model's :class:`CropSpec`.
    :param context: cube and patch enlargement factor (>= 1); it must cover the largest
        rotated, scaled and shifted window: about sqrt(2) * max scale + shift.
    """
    if not context >= 1.0:
        raise ValueError(f'context factor must be >= 1, got {context}')
    return CropSpec(input_size=int(math.ceil(spec.input_size * context)),
                    cube_size_m=tuple(c * context for c in spec.cube_size_m),
                    interpolation=spec.interpolation)


@dataclass(frozen=True)
class GeometricJitter:
    """
    One sample's geometric augmentation.

    :param rotation_rad: in-plane rotation of the crop window.
    :param scale: cube size factor.
    :param shift_norm: (2,) window centre shift in normalised output units.
    :param depth_shift_norm: centre depth shift in units of the output cube_z / 2.
    """

    rotation_rad: float = 0.0
    scale: float = 1.0
    shift_norm: tuple = (0.0, 0.0)
    depth_shift_norm: float = 0.0


def sample_jitter(rng, config, spec):
    """Draw a :class:`GeometricJitter` from ``config`` for output crops of ``spec``."""
    rotation = math.radians(rng.uniform(-config.rotation_deg, config.rotation_deg))
    scale = rng.uniform(*config.scale_range)
    shift = rng.normal(0.0, 1.0, 2) * config.shift_px * 2.0 / spec.input_size
    depth_shift = rng.normal() * config.depth_shift_m / (spec.cube_size_m[2] / 2.0)
    return GeometricJitter(rotation, scale, (float(shift[0]), float(shift[1])), depth_shift)


def _context_from_output(jitter, context):
    """Return (A, t): context-normalised coords c = A @ n + t of output coords n."""
    cos_r, sin_r = math.cos(jitter.rotation_rad), math.sin(jitter.rotation_rad)
    matrix = np.array([[cos_r, -sin_r], [sin_r, cos_r]]) * (jitter.scale / context)
    return matrix, np.asarray(jitter.shift_norm, dtype=np.float64) / context


def _context_pixels(matrix, offset, size_in, output_size):
    """Return the (S, S) rows, cols and inside mask of the context pixel of each output pixel."""
    grid = (np.arange(output_size) + 0.5) / output_size * 2.0 - 1.0
    n = np.stack(np.meshgrid(grid, grid, indexing='xy'), axis=-1)
    index = np.floor(((n @ matrix.T + offset) + 1.0) / 2.0 * size_in).astype(np.int64)
    inside = np.all((index >= 0) & (index < size_in), axis=-1)
    index = np.clip(index, 0, size_in - 1)
    return index[..., 1], index[..., 0], inside


def resample_context(context_patch, context_joints, jitter, context, output_size):
    """
    Cut the jittered output crop out of a context crop.

    :param context_patch: (P, P) normalised context crop (see :func:`context_spec`).
    :param context_joints: (21, 3) joints normalised in the context crop (NaN allowed).
    :param jitter: :class:`GeometricJitter`.
    :param context: the context factor the context crop was made with.
    :param output_size: side S of the output patch.
    :return: ((S, S) float32 patch, (21, 3) float64 joints normalised in the output crop).
    """
    context_patch = np.asarray(context_patch)
    if context_patch.ndim != 2 or context_patch.shape[0] != context_patch.shape[1]:
        raise ValueError(f'context patch must be square (P, P), got {context_patch.shape}')
    matrix, offset = _context_from_output(jitter, context)
    rows, cols, inside = _context_pixels(matrix, offset, context_patch.shape[0], output_size)
    values = context_patch[rows, cols].astype(np.float64)
    depth = (values * context - jitter.depth_shift_norm) / jitter.scale
    foreground = inside & (values < BACKGROUND_VALUE) & (np.abs(depth) <= 1.0)
    patch = np.where(foreground, depth, BACKGROUND_VALUE).astype(np.float32)
    joints = np.asarray(context_joints, dtype=np.float64)
    uv = (joints[:, :2] - offset) @ np.linalg.inv(matrix).T
    z = (joints[:, 2] * context - jitter.depth_shift_norm) / jitter.scale
    return patch, np.concatenate([uv, z[:, None]], axis=1)


def resample_color(context_color, jitter, context, output_size):
    """
    Cut the jittered output window out of a context colour crop (as :func:`resample_context`).

    :param context_color: (P, P, 3) uint8 colour crop of the context window.
    :return: (3, S, S) float32 colour in [0, 1], black outside the context crop.
    """
    context_color = np.asarray(context_color)
    if context_color.ndim != 3 or context_color.shape[2] != 3 \
            or context_color.shape[0] != context_color.shape[1]:
        raise ValueError(f'context colour crop must be (P, P, 3), got {context_color.shape}')
    rows, cols, inside = _context_pixels(*_context_from_output(jitter, context),
                                         context_color.shape[0], output_size)
    return color_input(np.where(inside[..., None], context_color[rows, cols], 0))


def add_depth_noise(patch, rng, sigma_norm):
    """Add Gaussian noise (normalised units) to foreground pixels, in place."""
    foreground = patch < BACKGROUND_VALUE
    noise = rng.normal(0.0, sigma_norm, patch.shape).astype(np.float32)
    patch[foreground] = np.clip(patch[foreground] + noise[foreground], -1.0, 1.0)


def random_erase(patch, rng, area_range):
    """Set one random rectangle to background, in place (random erasing)."""
    size = patch.shape[0]
    area = rng.uniform(*area_range) * size * size
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
    height = int(min(size, max(1, round(math.sqrt(area * aspect)))))
    width = int(min(size, max(1, round(math.sqrt(area / aspect)))))
    top = rng.integers(0, size - height + 1)
    left = rng.integers(0, size - width + 1)
    patch[top:top + height, left:left + width] = BACKGROUND_VALUE


def add_holes(patch, rng, max_holes, radius_range):
    """Punch 1..max_holes random elliptical holes (missing depth) into the foreground."""
    size = patch.shape[0]
    foreground = np.argwhere(patch < BACKGROUND_VALUE)
    if len(foreground) == 0 or max_holes < 1:
        return
    rows, cols = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(1, max_holes + 1))):
        row, col = foreground[rng.integers(len(foreground))]
        radius_r, radius_c = rng.uniform(*radius_range, 2) * size + 0.5
        inside = ((rows - row) / radius_r) ** 2 + ((cols - col) / radius_c) ** 2 <= 1.0
        patch[inside] = BACKGROUND_VALUE


def drop_edges(patch, rng, threshold_norm, keep_range):
    """Invalidate a random share of pixels next to depth discontinuities, in place."""
    padded = np.pad(patch, 1, mode='edge')
    jump = np.zeros(patch.shape, dtype=np.float32)
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[dr:dr + patch.shape[0], dc:dc + patch.shape[1]]
        jump = np.maximum(jump, np.abs(neighbour - patch))
    edge = (jump > threshold_norm) & (patch < BACKGROUND_VALUE)
    keep = rng.uniform(*keep_range)
    patch[edge & (rng.random(patch.shape) > keep)] = BACKGROUND_VALUE


def augment_appearance(patch, rng, config, half_depth_m):
    """
    Apply the appearance and sensor augmentations of ``config`` to a patch, in place.

    :param patch: (S, S) float32 normalised crop.
    :param rng: ``numpy.random.Generator``.
    :param config: :class:`AugmentConfig`.
    :param half_depth_m: cube_z / 2 of the crop, metres (converts mm settings).
    """
    if config.edge_dropout_prob and rng.random() < config.edge_dropout_prob:
        drop_edges(patch, rng, config.edge_threshold_mm * 1e-3 / half_depth_m,
                   config.edge_keep)
    if config.hole_prob and rng.random() < config.hole_prob:
        add_holes(patch, rng, config.max_holes, config.hole_radius_frac)
    if config.erase_prob and rng.random() < config.erase_prob:
        random_erase(patch, rng, config.erase_area)
    if config.noise_mm:
        add_depth_noise(patch, rng, rng.uniform(0.0, config.noise_mm) * 1e-3 / half_depth_m)


def augment_color(color, rng, config):
    """
    Apply the colour augmentations of ``config`` (brightness, channel gains, noise) in place.

    :param color: (3, S, S) float32 colour in [0, 1].
    """
    gains = rng.uniform(*config.brightness_range) * rng.uniform(*config.color_gain_range, 3)
    color *= gains.astype(np.float32)[:, None, None]
    if config.color_noise:
        sigma = rng.uniform(0.0, config.color_noise)
        color += rng.normal(0.0, sigma, color.shape).astype(np.float32)
    np.clip(color, 0.0, 1.0, out=color)


def augment_crop(context_patch, context_joints, rng, config, spec, context,
                 context_color=None):
    """
    Make one augmented training crop from a context crop.

    :param context_patch: (P, P) context crop made with ``context_spec(spec, context)``.
    :param context_joints: (21, 3) joints normalised in the context crop.
    :param rng: ``numpy.random.Generator``.
    :param config: :class:`AugmentConfig`.
    :param spec: the model's :class:`CropSpec`.
    :param context: context factor.
    :param context_color: optional (P, P, 3) uint8 colour crop of the same window; it gets
        the same geometric jitter and the colour augmentations.
    :return: ((S, S) float32 patch, (21, 3) float64 normalised joints, (3, S, S) float32
        colour in [0, 1] or None).
    """
    jitter = sample_jitter(rng, config, spec)
    patch, joints = resample_context(context_patch, context_joints, jitter, context,
                                     spec.input_size)
    augment_appearance(patch, rng, config, spec.cube_size_m[2] / 2.0)
    color = None
    if context_color is not None:
        color = resample_color(context_color, jitter, context, spec.input_size)
        augment_color(color, rng, config)
    return patch, joints, color
