"""
Fit the synthetic engine to an unlabelled recording (method of simulated moments).

Summary statistics of the depth around the hand are measured on the recording, at the hand
centres the estimator found, and on crops the engine renders with candidate settings, at
their true hand centres. Each fitted setting drives one statistic most: it is set by
rendering a grid of its values with common random numbers and interpolating the statistic
over the grid to the recording's value. Two passes over the settings settle their
interactions. The camera is the recording's own and the hand distances are the recording's
hand centres' depths; no label is needed anywhere.

What is fitted, and the statistic that sets it (:data:`FITTED`):

* ``sensor.noise_sigma_z2``: the depth noise, from how far the hand's surface pixels lie
  from the median of their 3x3 neighbourhood (per squared metre of depth);
* ``scene.hand_shape.glove_mm``: a glove, from the half-widths of the thin parts of the
  hand's outline (fingers: the lower quartile of the ridge of its distance transform);
* ``scene.object_prob``, when the estimator's joints are given: the share of scenes with a
  held object, from the share of frames where more than ``OBJECT_FRACTION`` of the depth
  near the hand (forearm aside) lies farther than ``OBJECT_DISTANCE_M`` from every bone of
  the estimated hand. The rendered crops are estimated by the same estimator, so its errors
  count alike on both sides.

The crops rendered for the fit hold the hand (and its held object) without table, body,
wall, clutter or second hand: near the hand those would count as held objects. The fitted
``data`` keeps the starting data's background settings.

Also measured, not fitted: the share of missing pixels inside and on the hand's outline and
the area of the depth near the hand. On the domain-shift experiment's recordings they
depend on the scene around the hand as much as on the sensor's holes and edge dropout, so
matching them set those settings wrong; they are reported so that a user can compare the
recording with the engine.
"""

import copy
import dataclasses
import math

import numpy as np
from scipy import ndimage

from hand_pose_ros.core.camera import depth_to_metres, uvd_from_xyz, xyz_from_uvd
from hand_pose_ros.core.skeleton import BONES, MIDDLE_CHAIN, WRIST

# Half the side of the cube around the hand centre whose depth counts as the hand region.
HAND_HALF_CUBE_M = 0.125
# Regions smaller than this (pixels) say nothing about the hand.
MIN_REGION_PX = 40
# Residuals to the 3x3 median above this are edges, not noise.
NOISE_CAP_M = 0.01
# Quantile of the ridge half-widths (pooled over frames) that measures the fingers.
THIN_QUANTILE = 25.0
# (section, key, statistic, grid of values): the order of one fitting pass.
FITTED = (
    ('sensor', 'noise_sigma_z2', 'noise_mm_per_m2', (0.0, 0.001, 0.002, 0.004, 0.008)),
    ('hand_shape', 'glove_mm', 'thin_half_width_mm', (0.0, 1.5, 3.0, 4.5, 6.0, 8.0)),
)
OBJECT_SETTING = ('scene', 'object_prob', 'object_share', (0.0, 0.25, 0.5, 0.75, 1.0))
STATISTICS = ('noise_mm_per_m2', 'missing_inside', 'missing_edge', 'thin_half_width_mm',
              'area_cm2', 'object_share')
# Depth near the hand farther than this from every estimated bone is not the hand.
OBJECT_DISTANCE_M = 0.03
# A frame holds something when more than this share of its hand's depth is not the hand.
OBJECT_FRACTION = 0.01
# Points beyond the wrist by more than this share of the wrist-to-middle-knuckle length are
# forearm.
FOREARM_CUT = 0.05
MIDDLE_MCP = int(MIDDLE_CHAIN[1])
# Scene settings of the rendered crops (a hand and its held object alone).
FIT_SCENE = {'table_prob': 0.0, 'body_prob': 0.0, 'wall_prob': 0.0, 'clutter_prob': 0.0,
             'second_hand_prob': 0.0}
# Margin around the recording's hand depths (2nd to 98th percentile) for distance_range_m.
DISTANCE_MARGIN_M = 0.05
_SQUARE = np.ones((3, 3), bool)


def hand_region(depth_m, intrinsics, center, keypoints=None):
    """
    Return the statistics of one hand's region, or None when it is too small.

    :param depth_m: (H, W) float metres, NaN or 0 invalid.
    :param intrinsics: :class:`CameraIntrinsics` of the image.
    :param center: (3,) hand centre, metres (camera frame).
    :param keypoints: (21, 3) estimated joints, for ``unexplained`` (None: not measured).
    :return: dict of the frame's ``STATISTICS`` but ``thin_half_width_mm`` and
        ``object_share``, plus ``half_widths_mm``, its ridge half-widths, and
        ``unexplained``, the share of its hand's depth away from the bones (both summarised
        over frames by :func:`summarise`).
    """
    x, y, z = (float(v) for v in center)
    if not (math.isfinite(x) and math.isfinite(y) and z > 0.05):
        return None
    u, v, _ = uvd_from_xyz((x, y, z), intrinsics)
    radius_u, radius_v = (HAND_HALF_CUBE_M * f / z for f in (intrinsics.fx, intrinsics.fy))
    height, width = depth_m.shape
    u0, u1 = max(int(u - radius_u), 0), min(int(math.ceil(u + radius_u)) + 1, width)
    v0, v1 = max(int(v - radius_v), 0), min(int(math.ceil(v + radius_v)) + 1, height)
    if u1 - u0 < 3 or v1 - v0 < 3:
        return None
    window = np.nan_to_num(np.asarray(depth_m[v0:v1, u0:u1], dtype=np.float64), nan=0.0)
    valid = window > 0
    near = valid & (np.abs(window - z) < HAND_HALF_CUBE_M)
    # The outline with its holes and dropped edge pixels closed.
    region = ndimage.binary_fill_holes(ndimage.binary_closing(near, _SQUARE) | near)
    if np.count_nonzero(region) < MIN_REGION_PX:
        return None
    inner = ndimage.binary_erosion(region, _SQUARE)
    interior = ndimage.binary_erosion(inner, _SQUARE, iterations=2)
    ring = region & ~inner
    metres_per_px = z / intrinsics.fx
    # Surface noise: distance to the 3x3 median where the whole neighbourhood is near.
    whole = ndimage.binary_erosion(near, _SQUARE)
    residual = np.abs(window - ndimage.median_filter(window, size=3))[whole]
    # Widths of the outline opened by a pixel, so that one-pixel spurs of flying pixels and
    # noise do not add thin ridges; beyond the window (and the image) is background, so a
    # hand cut by the image border measures as in a window that holds the border.
    opened = np.pad(ndimage.binary_opening(region, _SQUARE), 1)
    distances = ndimage.distance_transform_edt(opened)[1:-1, 1:-1]
    ridge = (distances == ndimage.maximum_filter(distances, size=3)) & (distances >= 1.5)
    return {
        'unexplained': (math.nan if keypoints is None else
                        _unexplained(window, near, (u0, v0), intrinsics, keypoints)),
        'noise_mm_per_m2': (float(np.mean(np.minimum(residual, NOISE_CAP_M))) * 1000.0 / z ** 2
                            if residual.size else math.nan),
        'missing_inside': (float(np.mean(~valid[interior])) if interior.any() else math.nan),
        'missing_edge': float(np.mean(~near[ring])),
        'area_cm2': float(np.count_nonzero(region)) * metres_per_px
        * (z / intrinsics.fy) * 1e4,
        'half_widths_mm': distances[ridge] * metres_per_px * 1000.0,
    }


def _unexplained(window, near, origin, intrinsics, keypoints):
    """Return the share of the hand's near depth farther than OBJECT_DISTANCE_M from its bones."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if not np.all(np.isfinite(keypoints)):
        return math.nan
    rows, cols = np.nonzero(near)
    depth = window[rows, cols]
    points = xyz_from_uvd(np.stack([cols + origin[0], rows + origin[1], depth], 1),
                          intrinsics)
    axis = keypoints[WRIST] - keypoints[MIDDLE_MCP]
    length2 = float(axis @ axis)
    if length2 < 1e-6:
        return math.nan
    points = points[(points - keypoints[MIDDLE_MCP]) @ axis / length2 < 1.0 + FOREARM_CUT]
    if len(points) < MIN_REGION_PX // 2:
        return math.nan
    starts, ends = keypoints[BONES[:, 0]], keypoints[BONES[:, 1]]
    bones = ends - starts
    along = np.einsum('pbk,bk->pb', points[:, None] - starts[None], bones) / np.maximum(
        np.einsum('bk,bk->b', bones, bones), 1e-12)
    nearest = starts[None] + np.clip(along, 0.0, 1.0)[..., None] * bones[None]
    distance = np.sqrt(((points[:, None] - nearest) ** 2).sum(axis=2)).min(axis=1)
    return float(np.mean(distance > OBJECT_DISTANCE_M))


def summarise(regions):
    """
    Return the recording-level statistics of per-frame :func:`hand_region` results.

    :param regions: iterable of dicts (None entries are skipped).
    :return: dict: ``frames`` and every name of ``STATISTICS``.
    """
    regions = [r for r in regions if r is not None]
    if not regions:
        raise ValueError('no frame has a usable hand region to measure')
    summary = {'frames': len(regions)}
    for name, average in (('noise_mm_per_m2', np.median), ('missing_inside', np.mean),
                          ('missing_edge', np.mean), ('area_cm2', np.median)):
        values = np.array([r[name] for r in regions])
        values = values[np.isfinite(values)]
        summary[name] = float(average(values)) if values.size else math.nan
    # Pooled over frames: a frame's own quantile depends on how much of it is palm.
    widths = np.concatenate([r['half_widths_mm'] for r in regions])
    summary['thin_half_width_mm'] = (float(np.percentile(widths, THIN_QUANTILE))
                                     if widths.size else math.nan)
    unexplained = np.array([r['unexplained'] for r in regions])
    unexplained = unexplained[np.isfinite(unexplained)]
    summary['object_share'] = (float(np.mean(unexplained > OBJECT_FRACTION))
                               if unexplained.size else math.nan)
    return summary


def recording_statistics(frames, centers, keypoints=None):
    """
    Measure a recording.

    :param frames: :class:`DepthFrame` list (``depth``: uint16 mm or float metres).
    :param centers: (N, 3) hand centre per frame, NaN where no hand was found.
    :param keypoints: optional (N, 21, 3) estimated joints per frame (for ``object_share``).
    :return: (summary dict, (M,) depths of the centres used).
    """
    regions, depths = [], []
    for index, (frame, center) in enumerate(zip(frames, np.asarray(centers, np.float64))):
        if not np.all(np.isfinite(center)):
            continue
        joints = None if keypoints is None else keypoints[index]
        region = hand_region(depth_to_metres(frame.depth), frame.intrinsics, center, joints)
        if region is not None:
            regions.append(region)
            depths.append(center[2])
    return summarise(regions), np.asarray(depths)


def set_value(data, section, key, value):
    """Set one fitted setting in a synthetic ``data`` dict (in place)."""
    if section == 'hand_shape':
        data.setdefault('scene', {}).setdefault('hand_shape', {})[key] = value
    else:
        data.setdefault(section, {})[key] = value


def get_value(data, section, key):
    """Return one setting of a ``data`` dict (None when the engine default applies)."""
    holder = data.get('scene', {}).get('hand_shape', {}) if section == 'hand_shape' \
        else data.get(section, {})
    return holder.get(key)


def rendered_statistics(data, spec, count, seed, estimate=None):
    """
    Measure ``count`` crops rendered from a synthetic ``data`` dict (true hand centres).

    The crops hold the hand and its held object alone (``FIT_SCENE``).

    :param spec: :class:`CropSpec` of the rendered windows (the training context spec).
    :param estimate: optional ``callable(depth_mm, intrinsics, center) -> (21, 3) joints``,
        the estimator the recording's joints came from (for ``object_share``).
    """
    from hand_pose_ros.core.training import SyntheticCrops

    options = {k: v for k, v in data.items() if k not in ('type', 'seed')}
    options['scene'] = {**options.get('scene', {}), **FIT_SCENE}
    source = SyntheticCrops(spec, seed, **options)
    regions = []
    for _ in range(count):
        frame, window, joints, _, _ = source.next_labelled()
        center = joints.mean(axis=0)
        estimated = None if estimate is None else estimate(frame.depth_mm, window, center)
        regions.append(hand_region(frame.depth_m, window, center, estimated))
    return summarise(regions)


def interpolate(grid, values, target):
    """
    Return the grid value at which a (made monotone) increasing statistic meets target.

    Targets outside the statistic's range give the grid's end values.
    """
    grid = np.asarray(grid, dtype=np.float64)
    values = np.maximum.accumulate(np.asarray(values, dtype=np.float64))
    if target <= values[0]:
        return float(grid[0])
    if target >= values[-1]:
        return float(grid[-1])
    upper = int(np.searchsorted(values, target, side='left'))
    lower = upper - 1
    span = values[upper] - values[lower]
    weight = 0.0 if span <= 0 else (target - values[lower]) / span
    return float(grid[lower] + weight * (grid[upper] - grid[lower]))


@dataclasses.dataclass
class DomainFit:
    """
    A fitted synthetic domain.

    :param data: the synthetic ``data`` dict to train on (``make_source``'s format).
    :param recording: statistics of the recording.
    :param rendered: statistics of crops rendered from ``data``.
    :param start: statistics of crops rendered from the starting ``data``.
    :param fitted: the fitted settings ``section.key -> value``.
    :param curves: per setting, the grid and the statistic of each pass.
    """

    data: dict
    recording: dict
    rendered: dict
    start: dict
    fitted: dict
    curves: dict

    def to_dict(self):
        """Return plain values (strict JSON: statistics not measured are None)."""
        return {'data': self.data, 'fitted': self.fitted, 'curves': self.curves,
                **{name: {key: _finite_or_none(value) for key, value in summary.items()}
                   for name, summary in (('recording', self.recording),
                                         ('rendered', self.rendered), ('start', self.start))}}


def fit_domain(frames, centers, base_data, spec, crops=120, passes=2, seed=0,
               progress=None, keypoints=None, estimate=None):
    """
    Fit the synthetic engine's settings to a recording (see the module docstring).

    :param frames: :class:`DepthFrame` list of the recording (one camera).
    :param centers: (N, 3) estimated hand centre per frame, NaN where none.
    :param base_data: the synthetic ``data`` dict to start from (the model's training data).
    :param spec: :class:`CropSpec` of the rendered windows (the training context spec).
    :param crops: rendered crops per evaluation of a setting.
    :param passes: passes over the fitted settings.
    :param seed: render seed (the same for every evaluation: common random numbers).
    :param progress: optional ``callable(str)`` for progress lines.
    :param keypoints: optional (N, 21, 3) joints the estimator found in ``frames``; with
        ``estimate`` (that estimator on a rendered crop: ``callable(depth_mm, intrinsics,
        center) -> (21, 3)``) the share of scenes with a held object is fitted too.
    :return: :class:`DomainFit`.
    """
    if not frames:
        raise ValueError('fit_domain needs frames')
    if base_data.get('type') != 'synthetic' or 'root' in base_data:
        raise ValueError(f'fit_domain fits the synthetic engine; got data {base_data!r}')
    say = progress or (lambda text: None)
    target, depths = recording_statistics(frames, centers, keypoints)
    fitted_settings = FITTED
    if keypoints is not None and estimate is not None:
        fitted_settings = FITTED + (OBJECT_SETTING,)
    else:
        estimate = None
    intrinsics = frames[0].intrinsics
    data = copy.deepcopy(base_data)
    data['camera'] = dataclasses.asdict(intrinsics)
    low, high = np.percentile(depths, [2.0, 98.0])
    data.setdefault('scene', {})['distance_range_m'] = [
        round(max(float(low) - DISTANCE_MARGIN_M, 0.1), 3),
        round(float(high) + DISTANCE_MARGIN_M, 3)]
    start = rendered_statistics(data, spec, crops, seed, estimate)
    say(f'recording: {_format(target)}; engine before fitting: {_format(start)}')
    curves = {}
    for number in range(passes):
        for section, key, statistic, grid in fitted_settings:
            values = []
            for value in grid:
                trial = copy.deepcopy(data)
                set_value(trial, section, key, value)
                # Only the object share needs the estimator (the slow part of a render).
                values.append(rendered_statistics(
                    trial, spec, crops, seed,
                    estimate if statistic == 'object_share' else None)[statistic])
            curves.setdefault(f'{section}.{key}', {'grid': list(grid), 'passes': []})[
                'passes'].append([_finite_or_none(round(v, 5)) for v in values])
            if not np.all(np.isfinite([target[statistic], *values])):
                say(f'pass {number + 1}: {section}.{key} left as it was ({statistic} could '
                    f'not be measured)')
                continue
            chosen = round(interpolate(grid, values, target[statistic]), 5)
            set_value(data, section, key, chosen)
            say(f'pass {number + 1}: {section}.{key} = {chosen:g} ({statistic} '
                f'{target[statistic]:.4g} on the recording)')
    rendered = rendered_statistics(data, spec, crops, seed, estimate)
    say(f'engine after fitting: {_format(rendered)}')
    fitted = {f'{section}.{key}': get_value(data, section, key)
              for section, key, _, _ in fitted_settings}
    fitted['scene.distance_range_m'] = data['scene']['distance_range_m']
    return DomainFit(data, target, rendered, start, fitted, curves)


def _finite_or_none(value):
    return value if math.isfinite(value) else None


def _format(summary):
    return ', '.join(f'{name} {summary[name]:.4g}' for name in STATISTICS
                     if math.isfinite(summary[name]))
