"""
Configuration of the hand filters: nested dataclasses, one source of truth for parameters.

Every leaf field carries its description and its range (or choices) in the dataclass field
metadata; :func:`config_fields` lists them with dotted names (``one_euro.min_cutoff_hz``) so
the ROS layer can declare parameters with descriptors, and :func:`config_from_dict` builds a
validated config from a flat dotted dictionary.
"""

import dataclasses
from dataclasses import dataclass, field

from hand_pose_ros.core import skeleton


def _param(default, description, low=None, high=None, choices=None):
    """Return a dataclass field with its description and range in the metadata."""
    return field(default=default, metadata={
        'description': description, 'min': low, 'max': high, 'choices': choices})


@dataclass
class OneEuroConfig:
    min_cutoff_hz: float = _param(
        0.5, 'One Euro cutoff at rest; lower = less jitter when still, more lag', 0.01, 30.0)
    beta: float = _param(
        15.0, 'One Euro speed coefficient (Hz per m/s of joint speed); higher = less lag in '
        'fast motion, more jitter', 0.0, 100.0)
    d_cutoff_hz: float = _param(
        1.0, 'cutoff of the speed estimate that drives the adaptive cutoff', 0.01, 30.0)


@dataclass
class KalmanConfig:
    process_noise_m_s2: float = _param(
        2.0, 'white-acceleration standard deviation of the constant-velocity model; higher = '
        'follows faster changes, smooths less', 0.01, 500.0)
    measurement_noise_m: float = _param(
        0.007, 'standard deviation of keypoint noise per axis (scaled by 1/score)',
        0.0001, 0.1)
    initial_speed_m_s: float = _param(
        1.0, 'prior standard deviation of a new joint velocity', 0.0, 10.0)


@dataclass
class GateConfig:
    enabled: bool = _param(True, 'reject keypoints that move implausibly before smoothing')
    palm_max_speed_m_s: float = _param(
        skeleton.MAX_PALM_SPEED_M_S, 'maximum speed of wrist and MCP joints', 0.1, 20.0)
    fingertip_max_speed_m_s: float = _param(
        skeleton.MAX_FINGERTIP_REL_SPEED_M_S,
        'maximum speed of finger joints relative to the palm', 0.1, 30.0)
    max_acceleration_m_s2: float = _param(
        15.0, 'maximum acceleration allowed by the prediction gate (motion facts allow '
        '~50; 15 catches more outliers at 30 Hz)',
        1.0, 500.0)
    noise_sigmas: float = _param(
        2.7, 'extra gate width in standard deviations of the prediction and measurement '
        'noise; higher = fewer false rejections, fewer outliers caught', 1.0, 20.0)
    swap_check: bool = _param(True, 'detect and reject single-frame swaps between fingers')
    max_consecutive_rejections: int = _param(
        2, 'after this many rejections in a row a joint is re-initialised on the observation',
        1, 100)


@dataclass
class AnatomyConfig:
    enabled: bool = _param(True, 'check bone lengths, hand size, joint angles, intersections')
    action: str = _param(
        'repair', 'what to do with an implausible filtered pose: repair the offending '
        'fingers, mark their joints invalid, or reject the whole hand (observations: '
        'reject_hand drops the hand, otherwise implausible joints are rejected)',
        choices=('repair', 'invalidate_joints', 'reject_hand'))
    hand_length_min_m: float = _param(
        skeleton.HAND_LENGTH_MM_HARD[0] / 1000.0, 'minimum wrist to middle fingertip length',
        0.01, 1.0)
    hand_length_max_m: float = _param(
        skeleton.HAND_LENGTH_MM_HARD[1] / 1000.0, 'maximum wrist to middle fingertip length',
        0.01, 1.0)
    knuckle_breadth_min_m: float = _param(
        0.045, 'minimum index-MCP to little-MCP distance', 0.0, 0.5)
    knuckle_breadth_max_m: float = _param(
        0.095, 'maximum index-MCP to little-MCP distance', 0.0, 0.5)
    bone_scale_min: float = _param(
        0.7, 'smallest bone length as a fraction of the mean adult bone', 0.1, 1.0)
    bone_scale_max: float = _param(
        1.35, 'largest bone length as a fraction of the mean adult bone', 1.0, 5.0)
    bone_ratio_tolerance: float = _param(
        0.3, 'allowed relative deviation of a bone from the mean bone scaled to the hand',
        0.01, 2.0)
    keypoint_noise_m: float = _param(
        0.007, 'per-axis noise of observed keypoints, used to remove the lengthening of '
        'bones by noise from the single-frame hand scale', 0.0, 0.05)
    noise_margin_m: float = _param(
        0.03, 'absolute slack on the bone bounds of observations (raw keypoint noise); lower '
        'for a precise estimator to catch smaller outliers', 0.0, 0.2)
    output_noise_margin_m: float = _param(
        0.015, 'absolute slack on the bone bounds of filtered poses', 0.0, 0.2)
    angle_margin_deg: float = _param(
        15.0, 'softening of the joint angle limits (limits are posture dependent)', 0.0, 90.0)
    min_finger_distance_m: float = _param(
        0.002, 'minimum distance between the centre lines of bones of different fingers '
        '(self-intersection; 0 disables)', 0.0, 0.05)
    calibrate: bool = _param(True, "learn the user's bone lengths from confident frames")
    calibration_min_frames: int = _param(
        30, 'confident frames needed before the calibrated bounds are used', 1, 10000)
    calibration_window: int = _param(
        300, 'number of recent confident frames kept for the robust (median) estimate',
        10, 100000)
    calibration_min_score: float = _param(
        0.5, 'minimum joint score for a frame to enter the calibration', 0.0, 1.0)
    calibrated_tolerance: float = _param(
        0.1, 'allowed relative deviation from a calibrated bone length', 0.01, 2.0)
    repair_score_factor: float = _param(
        0.5, 'scores of repaired joints are multiplied by this', 0.0, 1.0)


@dataclass
class TrackingConfig:
    max_hands: int = _param(2, 'maximum number of hands tracked (the most confident win)',
                            1, 10)
    gate_m: float = _param(
        0.15, "maximum palm distance between a track's prediction and a detection to "
        'associate them, plus the distance the palm can travel since the last detection',
        0.01, 2.0)
    min_detections: int = _param(
        2, 'detections in consecutive frames a new track needs before it is published; a '
        'new track that misses a frame before that is dropped, so a false hand seen once '
        'never shows (1: publish every new track at once)', 1, 10)


@dataclass
class HandednessConfig:
    time_constant_s: float = _param(
        1.0, 'time constant of the exponential smoothing of the handedness evidence',
        0.0, 100.0)
    min_confidence: float = _param(
        0.3, 'below this smoothed confidence the handedness is reported as unknown', 0.0, 1.0)
    camera_prior: str = _param(
        'none', 'which side of the palm usually faces the camera (extra evidence for '
        'handedness when the fingers are straight)',
        choices=('none', 'palm_facing_camera', 'back_facing_camera'))
    assume: str = _param(
        'none', "take every hand to be this side instead of estimating it (one operator's "
        'hand in teleoperation: joint_states named and signed for that side from the first '
        'frame)', choices=('none', 'left', 'right'))


@dataclass
class FilterConfig:
    smoother: str = _param(
        'one_euro', 'temporal smoother applied after the gates',
        choices=('one_euro', 'kalman', 'none'))
    one_euro: OneEuroConfig = field(default_factory=OneEuroConfig)
    kalman: KalmanConfig = field(default_factory=KalmanConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    handedness: HandednessConfig = field(default_factory=HandednessConfig)
    max_gap_s: float = _param(
        0.2, 'joints are predicted through gaps up to this long, then marked invalid',
        0.0, 10.0)
    stale_timeout_s: float = _param(
        1.0, 'a track without detections for this long is dropped; a stream silent this long '
        'resets the filter', 0.01, 100.0)
    min_score: float = _param(
        0.1, 'keypoints scoring below this are treated as missing', 0.0, 1.0)

    def validate(self):
        """
        Check every field against its range and cross-field rules.

        :return: self, for chaining.
        :raises ValueError: naming the offending field.
        """
        for name, _, _, low, high, choices in _leaves(self):
            value = _get(self, name)
            if choices is not None:
                if value not in choices:
                    raise ValueError(f'{name} must be one of {choices}, got {value!r}')
                continue
            if isinstance(low, bool) or low is None:
                if not isinstance(value, bool):
                    raise ValueError(f'{name} must be a bool, got {value!r}')
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'{name} must be a number, got {value!r}')
            if isinstance(low, int) and not isinstance(low, bool) and isinstance(high, int) \
                    and not isinstance(value, int):
                raise ValueError(f'{name} must be an integer, got {value!r}')
            if not low <= value <= high:
                raise ValueError(f'{name} must be in [{low}, {high}], got {value!r}')
        anatomy = self.anatomy
        if anatomy.hand_length_min_m >= anatomy.hand_length_max_m:
            raise ValueError('anatomy.hand_length_min_m must be below anatomy.hand_length_max_m')
        if anatomy.knuckle_breadth_min_m >= anatomy.knuckle_breadth_max_m:
            raise ValueError(
                'anatomy.knuckle_breadth_min_m must be below anatomy.knuckle_breadth_max_m')
        if self.stale_timeout_s < self.max_gap_s:
            raise ValueError('stale_timeout_s must be at least max_gap_s')
        return self


def _leaves(config, prefix=''):
    """Yield (dotted name, default, description, min, max, choices) for every leaf field."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f'{prefix}{f.name}.')
            continue
        meta = f.metadata
        yield (f'{prefix}{f.name}', f.default, meta['description'], meta['min'], meta['max'],
               meta['choices'])


def _get(config, dotted):
    for part in dotted.split('.'):
        config = getattr(config, part)
    return config


def config_fields():
    """
    List every leaf parameter of FilterConfig.

    :return: list of (dotted_name, default, description, min, max, choices); min/max are
        None for bools and strings, choices is None except for string enumerations.
    """
    return list(_leaves(FilterConfig()))


def config_to_dict(config):
    """Return a flat {dotted_name: value} dictionary of a FilterConfig."""
    return {name: _get(config, name) for name, *_ in _leaves(config)}


def config_from_dict(values, base=None):
    """
    Build a validated FilterConfig from a flat dotted dictionary.

    :param values: {dotted_name: value}; missing names keep the base value. Integers are
        accepted for float fields.
    :param base: config to start from (default FilterConfig()); it is not modified.
    :return: a new validated FilterConfig.
    :raises ValueError: on an unknown name or an invalid value.
    """
    config = _deep_copy(base if base is not None else FilterConfig())
    known = {name: default for name, default, *_ in _leaves(config)}
    for name, value in values.items():
        if name not in known:
            raise ValueError(f'unknown filter parameter {name!r}')
        if isinstance(known[name], float) and isinstance(value, int) \
                and not isinstance(value, bool):
            value = float(value)
        *groups, leaf = name.split('.')
        target = config
        for group in groups:
            target = getattr(target, group)
        setattr(target, leaf, value)
    return config.validate()


def _deep_copy(config):
    changes = {f.name: _deep_copy(getattr(config, f.name))
               for f in dataclasses.fields(config)
               if dataclasses.is_dataclass(getattr(config, f.name))}
    return dataclasses.replace(config, **changes)
