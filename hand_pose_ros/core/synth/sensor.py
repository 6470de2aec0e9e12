"""
Depth sensor artefacts applied to a clean ray-cast depth image.

Random values are looked up in fixed noise tables at indices hashed from the absolute pixel
coordinates and a per-frame seed, so rendering a window of the image gives the same noise as
the same window of the full image (except for effects that need pixels outside the window:
shadows cast from outside it and edges on its border).
"""

from dataclasses import dataclass, fields, replace

import numpy as np

_TABLE_BITS = 16
_TABLE_MASK = (1 << _TABLE_BITS) - 1
_TABLES = {}


@dataclass(frozen=True)
class SensorConfig:
    """
    Depth camera artefacts; each one can be switched off by its zero value.

    :param noise_sigma_m: depth-independent part of the Gaussian noise, metres.
    :param noise_sigma_z2: noise standard deviation per squared metre of depth (grows as z^2).
    :param disparity_subpixel: disparity quantisation step in pixels (0: off); depth steps grow
        as z^2 / (f * baseline).
    :param baseline_m: emitter/second-camera offset along +x (negative: along -x), for
        disparity quantisation and shadows.
    :param shadows: drop pixels the emitter cannot see (occluded along the baseline).
    :param edge_threshold_m: depth jump between neighbours that makes a pixel an edge.
    :param edge_dropout_prob: probability that an edge pixel is missing.
    :param flying_pixel_prob: probability that an edge pixel gets a depth between the near
        and far side.
    :param holes_per_megapixel: expected number of random elliptic holes per 10^6 pixels.
    :param hole_radius_px: range of hole radii, pixels.
    :param dropout_prob: probability that any pixel is missing.
    :param min_range_m: nearest measurable depth.
    :param max_range_m: farthest measurable depth.
    """

    noise_sigma_m: float = 0.0005
    noise_sigma_z2: float = 0.0012
    disparity_subpixel: float = 0.06
    baseline_m: float = 0.04
    shadows: bool = True
    edge_threshold_m: float = 0.015
    edge_dropout_prob: float = 0.35
    flying_pixel_prob: float = 0.15
    holes_per_megapixel: float = 20.0
    hole_radius_px: tuple = (1.5, 8.0)
    dropout_prob: float = 0.002
    min_range_m: float = 0.15
    max_range_m: float = 4.0

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and item.name != 'baseline_m' and value < 0:
                raise ValueError(f'sensor.{item.name} must be >= 0, got {value}')
        for name in ('edge_dropout_prob', 'flying_pixel_prob', 'dropout_prob'):
            if getattr(self, name) > 1:
                raise ValueError(f'sensor.{name} must be a probability, got '
                                 f'{getattr(self, name)}')
        if self.max_range_m <= self.min_range_m:
            raise ValueError('sensor.max_range_m must exceed sensor.min_range_m')

    @classmethod
    def clean(cls):
        """Return a configuration with every artefact off (only the range limits remain)."""
        return cls(noise_sigma_m=0.0, noise_sigma_z2=0.0, disparity_subpixel=0.0,
                   shadows=False, edge_dropout_prob=0.0, flying_pixel_prob=0.0,
                   holes_per_megapixel=0.0, dropout_prob=0.0, min_range_m=0.0,
                   max_range_m=60.0)

    def with_options(self, **changes):
        """Return a copy with some fields changed."""
        return replace(self, **changes)


def _tables():
    if not _TABLES:
        rng = np.random.default_rng(0x5EED)
        _TABLES['normal'] = rng.standard_normal(1 << _TABLE_BITS).astype(np.float32)
        _TABLES['uniform'] = rng.random(1 << _TABLE_BITS).astype(np.float32)
    return _TABLES


def pixel_random(kind, seed, stream, u_abs, v_abs):
    """
    Return per-pixel random values that depend only on (seed, stream, absolute pixel).

    :param kind: 'normal' (standard normal) or 'uniform' ([0, 1)).
    :param seed: per-frame integer seed.
    :param stream: small integer separating independent uses within a frame.
    :param u_abs: (1, W) integer absolute columns.
    :param v_abs: (H, 1) integer absolute rows.
    :return: (H, W) float32.
    """
    salt = np.uint32((int(seed) * 2654435761 + int(stream) * 40503 + 12345) & 0xFFFFFFFF)
    columns = u_abs.astype(np.uint32) * np.uint32(73856093) ^ salt
    rows = v_abs.astype(np.uint32) * np.uint32(19349663)
    index = (columns ^ rows) & np.uint32(_TABLE_MASK)
    return _tables()[kind][index]


def _shadow_mask(depth, focal, baseline_m):
    """
    Return the (H, W) pixels the emitter cannot see (NaN depth: no surface).

    A pixel at column u and depth z appears at emitter column u - f * b / z; it is hidden
    when a nearer surface on its row lands on an emitter column at or before it.
    """
    height, width = depth.shape
    columns = np.arange(width, dtype=np.float32)[None, :]
    disparity = (focal * abs(baseline_m)) / depth
    shadow = np.zeros(depth.shape, dtype=bool)
    if baseline_m > 0:
        emitter_u = columns - disparity
        ahead = np.fmin.accumulate(emitter_u[:, ::-1], axis=1)[:, ::-1]
        shadow[:, :-1] = emitter_u[:, :-1] > ahead[:, 1:] + 0.5
    else:
        emitter_u = columns + disparity
        behind = np.fmax.accumulate(emitter_u, axis=1)
        shadow[:, 1:] = emitter_u[:, 1:] < behind[:, :-1] - 0.5
    return shadow


def _edge_artefacts(depth, config, seed, u0, v0):
    """
    Turn depth-edge pixels into flying pixels or holes, in place.

    An edge pixel has a 4-neighbour (or a missing neighbour) more than
    ``edge_threshold_m`` away in depth. A flying pixel takes a depth between its nearest and
    farthest neighbour (at most 0.5 m apart).
    """
    valid = np.isfinite(depth)
    filled = np.where(valid, depth, np.float32(1e4))
    threshold = config.edge_threshold_m
    jump_u = np.abs(filled[:, 1:] - filled[:, :-1]) > threshold
    jump_v = np.abs(filled[1:] - filled[:-1]) > threshold
    edge = np.zeros(depth.shape, dtype=bool)
    edge[:, 1:] |= jump_u
    edge[:, :-1] |= jump_u
    edge[1:] |= jump_v
    edge[:-1] |= jump_v
    rows, cols = np.nonzero(edge & valid)
    draw = pixel_random('uniform', seed, 1, cols + u0, rows + v0)
    flying = draw < config.flying_pixel_prob
    dropped = ~flying & (draw < config.flying_pixel_prob + config.edge_dropout_prob)
    height, width = depth.shape
    r, c = rows[flying], cols[flying]
    neighbours = np.stack([
        filled[r, c], filled[np.maximum(r - 1, 0), c], filled[np.minimum(r + 1, height - 1), c],
        filled[r, np.maximum(c - 1, 0)], filled[r, np.minimum(c + 1, width - 1)]])
    near = neighbours.min(axis=0)
    far = np.minimum(neighbours.max(axis=0), near + 0.5)
    # Given a flying pixel, draw / flying_pixel_prob is uniform in [0, 1).
    mix = draw[flying] / max(config.flying_pixel_prob, 1e-12)
    depth[r, c] = near + mix * (far - near)
    depth[rows[dropped], cols[dropped]] = np.nan


def apply_sensor(depth_m, config, intrinsics, seed, offset_uv=(0, 0),
                 full_size=None):
    """
    Apply sensor artefacts to a clean depth image.

    :param depth_m: (H, W) float32 metres, NaN where nothing was hit.
    :param config: :class:`SensorConfig`.
    :param intrinsics: intrinsics of ``depth_m`` (may be a window of the full image).
    :param seed: per-frame integer seed.
    :param offset_uv: absolute pixel of the window's top-left corner in the full image.
    :param full_size: (width, height) of the full image (for hole placement); the window's
        size when None.
    :return: (H, W) float32 metres, NaN invalid.
    """
    depth = np.array(depth_m, dtype=np.float32)
    height, width = depth.shape
    u0, v0 = (int(x) for x in offset_uv)
    u_abs = np.arange(u0, u0 + width, dtype=np.int64)[None, :]
    v_abs = np.arange(v0, v0 + height, dtype=np.int64)[:, None]
    focal = 0.5 * (intrinsics.fx + intrinsics.fy)
    if config.shadows and config.baseline_m != 0:
        depth[_shadow_mask(depth, focal, config.baseline_m)] = np.nan
    if config.edge_dropout_prob > 0 or config.flying_pixel_prob > 0:
        _edge_artefacts(depth, config, seed, u0, v0)
    if config.noise_sigma_m > 0 or config.noise_sigma_z2 > 0:
        sigma = config.noise_sigma_m + config.noise_sigma_z2 * depth * depth
        depth += sigma * pixel_random('normal', seed, 3, u_abs, v_abs)
    if config.disparity_subpixel > 0 and config.baseline_m != 0:
        scale = focal * abs(config.baseline_m)
        step = config.disparity_subpixel
        steps = np.maximum(np.round(scale / (step * depth)), 1.0)
        depth = scale / (step * steps)
    if config.dropout_prob > 0:
        depth[pixel_random('uniform', seed, 4, u_abs, v_abs) < config.dropout_prob] = np.nan
    if config.holes_per_megapixel > 0:
        _punch_holes(depth, config, seed, u0, v0, full_size or (width, height))
    depth[~((depth >= config.min_range_m) & (depth <= config.max_range_m))] = np.nan
    return depth


def _punch_holes(depth, config, seed, u0, v0, full_size):
    """Set random ellipses (placed in full-image coordinates) to NaN, in place."""
    rng = np.random.default_rng([int(seed), 7])
    full_width, full_height = full_size
    count = rng.poisson(config.holes_per_megapixel * full_width * full_height * 1e-6)
    height, width = depth.shape
    for _ in range(count):
        cu, cv = rng.uniform(0, full_width) - u0, rng.uniform(0, full_height) - v0
        ru, rv = rng.uniform(*config.hole_radius_px, size=2)
        left, right = max(int(cu - ru), 0), min(int(cu + ru) + 1, width)
        top, bottom = max(int(cv - rv), 0), min(int(cv + rv) + 1, height)
        if left >= right or top >= bottom:
            continue
        uu = (np.arange(left, right) - cu)[None, :] / ru
        vv = (np.arange(top, bottom) - cv)[:, None] / rv
        depth[top:bottom, left:right][uu * uu + vv * vv <= 1.0] = np.nan
