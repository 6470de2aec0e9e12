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


def _salt(seed, stream):
    return np.uint32((int(seed) * 2654435761 + int(stream) * 40503 + 12345) & 0xFFFFFFFF)


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
    columns = u_abs.astype(np.uint32) * np.uint32(73856093) ^ _salt(seed, stream)
    rows = v_abs.astype(np.uint32) * np.uint32(19349663)
    index = (columns ^ rows) & np.uint32(_TABLE_MASK)
    return _tables()[kind][index]


# Seed-independent part of the table index of each pixel of recently used windows.
_GRID_INDEX = {}
_GRID_INDEX_SIZE = 8


def _grid_index(u0, v0, width, height):
    """
    Return the (H, W) intp table index of a window's pixels for salt 0.

    The index is ((u * a) ^ salt ^ (v * b)) & mask, so XOR-ing this with the salt's low bits
    gives :func:`pixel_random`'s index for any seed and stream.
    """
    key = (u0, v0, width, height)
    index = _GRID_INDEX.get(key)
    if index is None:
        if len(_GRID_INDEX) >= _GRID_INDEX_SIZE:
            _GRID_INDEX.clear()
        columns = np.arange(u0, u0 + width, dtype=np.int64).astype(np.uint32)[None, :] \
            * np.uint32(73856093)
        rows = np.arange(v0, v0 + height, dtype=np.int64).astype(np.uint32)[:, None] \
            * np.uint32(19349663)
        index = ((columns ^ rows) & np.uint32(_TABLE_MASK)).astype(np.intp)
        _GRID_INDEX[key] = index
    return index


def _window_random(kind, seed, stream, window, scratch):
    """Return :func:`pixel_random` over a whole window (u0, v0, width, height), into scratch."""
    index = np.bitwise_xor(_grid_index(*window), int(_salt(seed, stream)) & _TABLE_MASK)
    return np.take(_tables()[kind], index, out=scratch, mode='clip')


def _shadow_mask(depth, focal, baseline_m):
    """
    Return the (H, W) pixels the emitter cannot see (NaN depth: no surface).

    A pixel at column u and depth z appears at emitter column u - f * b / z; it is hidden
    when a nearer surface on its row lands on an emitter column at or before it.
    """
    height, width = depth.shape
    # Image columns become array rows, so that every step below is one contiguous pass.
    emitter_u = np.empty((width, height), dtype=np.float32)
    np.divide(focal * abs(baseline_m), depth.T, out=emitter_u)
    columns = np.arange(width, dtype=np.float32)[:, None]
    shadow = np.zeros((width, height), dtype=bool)
    if baseline_m > 0:
        np.subtract(columns, emitter_u, out=emitter_u)
        # Smallest emitter column at or after each pixel (NaN: none), by doubling strides.
        ahead = _doubling_scan(np.fmin, emitter_u[::-1])[::-1]
        ahead += np.float32(0.5)
        np.greater(emitter_u[:-1], ahead[1:], out=shadow[:-1])
    else:
        np.add(columns, emitter_u, out=emitter_u)
        behind = _doubling_scan(np.fmax, emitter_u)
        behind -= np.float32(0.5)
        np.less(emitter_u[1:], behind[:-1], out=shadow[1:])
    return shadow.T


def _doubling_scan(ufunc, values):
    """
    Return ``ufunc.accumulate(values, axis=0)`` for an associative, NaN-ignoring ufunc.

    Log2(n) whole-array passes (ping-ponging between two buffers) instead of n row steps.
    """
    current = np.array(values)
    other = np.empty_like(current)
    step = 1
    while step < len(current):
        ufunc(current[step:], current[:-step], out=other[step:])
        other[:step] = current[:step]
        current, other = other, current
        step *= 2
    return current


def _edge_artefacts(depth, config, seed, u0, v0):
    """
    Turn depth-edge pixels into flying pixels or holes, in place.

    An edge pixel has a 4-neighbour (or a missing neighbour) more than
    ``edge_threshold_m`` away in depth. A flying pixel takes a depth between its nearest and
    farthest neighbour (at most 0.5 m apart).
    """
    height, width = depth.shape
    valid = np.isfinite(depth).reshape(-1)
    filled = depth.copy()
    np.copyto(filled, np.float32(1e4), where=~valid.reshape(height, width))
    threshold = np.float32(config.edge_threshold_m)
    # Differences of the flattened image (contiguous passes); the one that wraps from the
    # end of a row to the next row's start is dropped.
    flat = filled.reshape(-1)
    step = np.empty(flat.shape, dtype=np.float32)
    np.subtract(flat[1:], flat[:-1], out=step[:-1])
    step[-1] = 0.0
    jump_u = np.abs(step, out=step) > threshold
    jump_u.reshape(height, width)[:, -1] = False
    step = np.subtract(flat[width:], flat[:-width])
    jump_v = np.abs(step, out=step) > threshold
    edge = jump_u.copy()
    edge[1:] |= jump_u[:-1]
    edge[width:] |= jump_v
    edge[:-width] |= jump_v
    edge &= valid
    index = np.flatnonzero(edge)
    rows, cols = np.divmod(index, width)
    draw = pixel_random('uniform', seed, 1, cols + u0, rows + v0)
    flying = draw < config.flying_pixel_prob
    dropped = ~flying & (draw < config.flying_pixel_prob + config.edge_dropout_prob)
    # Flat indices of each flying pixel and its 4-neighbours (itself where off the image).
    i, r, c = index[flying], rows[flying], cols[flying]
    neighbours = flat[np.stack([
        i, np.where(r > 0, i - width, i), np.where(r < height - 1, i + width, i),
        np.where(c > 0, i - 1, i), np.where(c < width - 1, i + 1, i)])]
    near = neighbours.min(axis=0)
    far = np.minimum(neighbours.max(axis=0), near + 0.5)
    # Given a flying pixel, draw / flying_pixel_prob is uniform in [0, 1).
    mix = draw[flying] / max(config.flying_pixel_prob, 1e-12)
    depth_flat = depth.reshape(-1)
    depth_flat[i] = near + mix * (far - near)
    depth_flat[index[dropped]] = np.nan


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
    window = (u0, v0, width, height)
    # Temporaries are reused (in place) to keep large images out of fresh page-faulting
    # allocations.
    scratch = np.empty_like(depth)
    mask = np.empty(depth.shape, dtype=bool)
    focal = 0.5 * (intrinsics.fx + intrinsics.fy)
    if config.shadows and config.baseline_m != 0:
        np.copyto(depth, np.nan, where=_shadow_mask(depth, focal, config.baseline_m))
    if config.edge_dropout_prob > 0 or config.flying_pixel_prob > 0:
        _edge_artefacts(depth, config, seed, u0, v0)
    if config.noise_sigma_m > 0 or config.noise_sigma_z2 > 0:
        # sigma = noise_sigma_m + noise_sigma_z2 * depth * depth, in this order.
        sigma = np.multiply(depth, np.float32(config.noise_sigma_z2))
        sigma *= depth
        sigma += np.float32(config.noise_sigma_m)
        sigma *= _window_random('normal', seed, 3, window, scratch)
        depth += sigma
    if config.disparity_subpixel > 0 and config.baseline_m != 0:
        scale = focal * abs(config.baseline_m)
        step = np.float32(config.disparity_subpixel)
        steps = np.multiply(depth, step, out=scratch)
        np.divide(np.float32(scale), steps, out=steps)
        np.round(steps, out=steps)
        np.maximum(steps, np.float32(1.0), out=steps)
        steps *= step
        np.divide(np.float32(scale), steps, out=depth)
    if config.dropout_prob > 0:
        draw = _window_random('uniform', seed, 4, window, scratch)
        np.less(draw, np.float32(config.dropout_prob), out=mask)
        np.copyto(depth, np.nan, where=mask)
    if config.holes_per_megapixel > 0:
        _punch_holes(depth, config, seed, u0, v0, full_size or (width, height))
    # Outside the range (NaN stays NaN either way).
    np.less(depth, np.float32(config.min_range_m), out=mask)
    mask |= depth > np.float32(config.max_range_m)
    np.copyto(depth, np.nan, where=mask)
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
