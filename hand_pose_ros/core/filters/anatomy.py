"""
Anatomical (spatial) checks, per-user bone calibration and repair of single hands.

Facts come from :mod:`hand_pose_ros.core.skeleton` (shared reference, anatomy section):
hand length and knuckle breadth bands, mean bone lengths, joint angle limits. Checks:

* hand level, on observations (cannot be repaired, the hand is rejected): wrist to middle
  fingertip length (robust to a single outlying joint);
* bones of observations (:func:`check_bones`, before the temporal filter): absolute bounds
  (mean adult bone x [bone_scale_min, bone_scale_max]), bounds relative to the hand's own
  scale (median ratio of its bones to the mean bones), bounds around the user's calibrated
  lengths once known, and the index-MCP to little-MCP breadth; every bound gets
  ``noise_margin_m`` of slack for raw keypoint noise;
* filtered poses (:func:`check_pose`, after the temporal filter, where the noise is low
  enough for angles to mean something): bones against the calibrated lengths with
  ``output_noise_margin_m`` of slack, joint angles against JOINT_LIMITS_DEG softened by
  ``angle_margin_deg`` (flexion, abduction, thumb CMC/MCP/IP), self-intersection (bones of
  different fingers closer than ``min_finger_distance_m``).

A violated bone blames the joint it shares with another violated bone (or its tip); a
violated angle blames the joint the angle places; an intersection blames the distal joints of
both bones.
"""

import collections

import numpy as np

from hand_pose_ros.core import kinematics
from hand_pose_ros.core.skeleton import (
    BONES, FINGER_JOINTS, FINGER_OF_JOINT, JOINT_LIMITS_DEG, MEAN_BONE_LENGTHS_MM,
    MIDDLE_CHAIN, NUM_BONES, NUM_JOINTS, WRIST)

MEAN_BONE_LENGTHS_M = MEAN_BONE_LENGTHS_MM / 1000.0


def _angle_limits_rad():
    """Return (lower, upper, blamed joint) arrays ordered like kinematics.ANGLE_NAMES."""
    lim = JOINT_LIMITS_DEG
    lower, upper, blamed = [], [], []
    for name in kinematics.ANGLE_NAMES:
        finger, joint, kind = name.split('_')
        if finger == 'thumb':
            bounds = getattr(lim, f'thumb_{joint}_{kind}')
        else:
            bounds = getattr(lim, f'{joint}_{kind}')
        chain = FINGER_JOINTS[('thumb', 'index', 'middle', 'ring', 'pinky').index(finger)]
        # The angle at a joint places the next joint of the chain.
        offset = {'cmc': 1, 'mcp': 1, 'pip': 2, 'dip': 3, 'ip': 3}[joint]
        if finger == 'thumb' and joint == 'mcp':
            offset = 2
        lower.append(bounds[0])
        upper.append(bounds[1])
        blamed.append(chain[offset])
    return np.radians(lower), np.radians(upper), np.array(blamed)


ANGLE_LOWER_RAD, ANGLE_UPPER_RAD, ANGLE_BLAMED_JOINT = _angle_limits_rad()
_BONE_PARENT, _BONE_CHILD = BONES[:, 0].copy(), BONES[:, 1].copy()
_PHALANX_BONES = np.array([b for b in range(NUM_BONES) if BONES[b, 0] != WRIST])


def _unit_interval(x):
    """Return x clipped to [0, 1] (np.clip's result with less call overhead)."""
    return np.minimum(np.maximum(x, 0.0), 1.0)


def _segment_distances(p0, p1, q0, q1):
    """Return (K,) minimum distances between segments p0-p1 and q0-q1 (each (K, 3))."""
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a, e = (d1 * d1).sum(axis=1), (d2 * d2).sum(axis=1)
    b, c, f = (d1 * d2).sum(axis=1), (d1 * r).sum(axis=1), (d2 * r).sum(axis=1)
    denom = a * e - b * b
    safe = np.maximum(denom, 1e-18)
    s = np.where(denom > 1e-12, _unit_interval((b * f - c * e) / safe), 0.0)
    t = np.where(e > 1e-12, (b * s + f) / np.maximum(e, 1e-18), 0.0)
    outside = (t < 0.0) | (t > 1.0)
    t = _unit_interval(t)
    s = np.where(outside & (a > 1e-12), _unit_interval((t * b - c) / np.maximum(a, 1e-18)), s)
    # q a point: the nearest point of p to it (the general formula above leaves s at 0).
    s = np.where((e <= 1e-12) & (a > 1e-12), _unit_interval(-c / np.maximum(a, 1e-18)), s)
    gap = p0 + s[:, None] * d1 - (q0 + t[:, None] * d2)
    return np.sqrt((gap * gap).sum(axis=1))


def _finger_bone_pairs():
    pairs = [(first, second) for i, first in enumerate(_PHALANX_BONES)
             for second in _PHALANX_BONES[i + 1:]
             if FINGER_OF_JOINT[BONES[first, 1]] != FINGER_OF_JOINT[BONES[second, 1]]]
    return np.array(pairs, dtype=np.int64)


_FINGER_BONE_PAIRS = _finger_bone_pairs()
# A bone shorter than this share of its smallest adult length has collapsed (a joint put on
# its neighbour, a common estimator failure): keypoint noise alone seldom does that, while
# the noise margin takes the other bounds of short bones below zero.
COLLAPSED_FRACTION = 0.25
_IS_DISTAL = np.isin(BONES[:, 1], FINGER_JOINTS[:, 3])
_DISTAL_CORE = 0.7


class BoneCalibration:
    """
    Robust running estimate of one user's bone lengths over a window of frames.

    A bone's true length is constant, so the spread of its measured lengths is keypoint
    noise; noise also lengthens bones on average (by ~spread^2 / length). The estimate is the
    median length corrected by the robust spread (MAD): ``sqrt(median^2 - 2 spread^2)``.

    :param window: number of recent frames kept.
    :param min_frames: frames needed before :attr:`lengths_m` is available.
    """

    def __init__(self, window, min_frames):
        self.window = window
        self.min_frames = min_frames
        self.reset()

    def reset(self):
        """Forget all frames."""
        self._frames = collections.deque(maxlen=self.window)
        self._lengths = None

    def add(self, lengths_m):
        """Add one frame of (20,) bone lengths, metres."""
        self._frames.append(np.asarray(lengths_m, dtype=np.float64))
        self._lengths = None

    def resized(self, window, min_frames):
        """Return a calibration with new window sizes keeping the most recent frames."""
        other = BoneCalibration(window, min_frames)
        for frame in list(self._frames)[-window:]:
            other.add(frame)
        return other

    @property
    def num_frames(self):
        return len(self._frames)

    @property
    def lengths_m(self):
        """Return the (20,) estimated bone lengths, or None before min_frames frames."""
        if len(self._frames) < self.min_frames:
            return None
        if self._lengths is None:
            frames = np.stack(self._frames)
            median = np.median(frames, axis=0)
            spread = 1.4826 * np.median(np.abs(frames - median), axis=0)
            self._lengths = np.sqrt(np.maximum(median ** 2 - 2.0 * spread ** 2,
                                               0.25 * median ** 2))
        return self._lengths


def debiased_lengths(lengths_m, noise_m):
    """
    Remove the lengthening of bones by keypoint noise: E|b + n|^2 = |b|^2 + 6 noise^2.

    :param lengths_m: bone lengths measured between noisy keypoints.
    :param noise_m: per-axis keypoint noise (independent on both ends).
    :return: debiased lengths (never below half the measured length).
    """
    squared = np.asarray(lengths_m, dtype=np.float64) ** 2
    return np.sqrt(np.maximum(squared - 6.0 * noise_m ** 2, 0.25 * squared))


def _median(values):
    """Return the median of a 1-D array (np.median's result with less call overhead)."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


def _measured_bones(keypoints_xyz, present):
    """Return (lengths (20,), measured (20,) bool) of the bones of a hand."""
    vectors = keypoints_xyz[_BONE_CHILD] - keypoints_xyz[_BONE_PARENT]
    return np.sqrt((vectors * vectors).sum(axis=1)), present[_BONE_PARENT] & present[_BONE_CHILD]


def _scale(lengths, both, noise_m):
    """Return the robust scale of a hand's measured bones to the mean bones, or None."""
    if np.count_nonzero(both) < 5:
        return None
    return float(_median(debiased_lengths(lengths[both], noise_m) / MEAN_BONE_LENGTHS_M[both]))


def _bone_scale(keypoints_xyz, present, noise_m=0.0):
    """Return (lengths (20,), measured (20,) bool, robust scale or None) of a hand."""
    lengths, both = _measured_bones(keypoints_xyz, present)
    return lengths, both, _scale(lengths, both, noise_m)


def _ratio_violations(config, lengths, both, scale, margin):
    """Return the (20,) bones deviating from the mean bones at the hand's own scale."""
    mean = MEAN_BONE_LENGTHS_M * scale
    return both & (np.abs(lengths - mean) > mean * config.bone_ratio_tolerance + margin)


def hand_level_problems(config, keypoints_xyz, present):
    """
    Return the reasons (list of str) why a hand must be rejected as a whole.

    The wrist to middle fingertip length is estimated robustly as the median ratio of the
    hand's 20 bones to the mean bones times the mean hand length, so that a single outlying
    joint (even the wrist, which ends five bones) cannot reject the whole hand; the band gets
    ``noise_margin_m`` of slack (noise lengthens short bones).

    :param config: AnatomyConfig.
    :param keypoints_xyz: (21, 3) keypoints, metres.
    :param present: (21,) bool, joints observed.
    """
    if not config.enabled:
        return []
    # Debiasing assumes the configured keypoint noise; a cleaner estimator makes it shrink
    # short bones too much, so the hand passes when either estimate of its size does.
    lengths, both = _measured_bones(keypoints_xyz, present)
    scales = [_scale(lengths, both, noise) for noise in (config.keypoint_noise_m, 0.0)]
    if scales[0] is None:
        return []
    margin = config.noise_margin_m
    chain_m = MEAN_BONE_LENGTHS_M[MIDDLE_CHAIN[1:] - 1].sum()
    if not any(config.hand_length_min_m - margin <= scale * chain_m
               <= config.hand_length_max_m + margin for scale in scales):
        return ['hand_length']
    return []


def _blame_bones(bad_bones):
    """Return (21,) bool joints blamed by a (20,) mask of violated bones."""
    blamed = np.zeros(NUM_JOINTS, bool)
    if not bad_bones.any():  # the usual case, several times per frame
        return blamed
    bad_in = np.zeros(NUM_JOINTS, bool)
    bad_in[BONES[:, 1]] = bad_bones
    bad_out_count = np.bincount(BONES[:, 0], weights=bad_bones.astype(float),
                                minlength=NUM_JOINTS)
    # A joint is wrong when its incoming and an outgoing bone are both off, the wrist when
    # most of its bones are off, a tip when its bone is off and its parent is fine. A single
    # off bone elsewhere is ambiguous (either end may be wrong) and left to the motion gates:
    # blaming its distal joint rejected too many good joints next to outliers.
    blamed |= bad_in & (bad_out_count > 0)
    blamed[WRIST] = bad_out_count[WRIST] >= 3
    tips = FINGER_JOINTS[:, 3]
    blamed[tips] |= bad_in[tips] & ~blamed[tips - 1]
    return blamed


def check_bones(config, keypoints_xyz, present, calibrated_lengths_m=None):
    """
    Check the bones of an observed hand (before the temporal filter).

    Bounds: absolute (population), relative to the hand's own scale, the user's calibrated
    lengths when known, and the knuckle breadth; all with ``noise_margin_m`` of slack.

    :param config: AnatomyConfig.
    :param keypoints_xyz: (21, 3) keypoints, metres.
    :param present: (21,) bool, joints observed.
    :param calibrated_lengths_m: (20,) user bone lengths or None.
    :return: dict reason -> (21,) bool blamed joints ('bone_length', 'bone_ratio',
        'bone_calibrated', 'knuckle_breadth').
    """
    blamed = {}
    if not config.enabled:
        return blamed
    lengths, both, scale = _bone_scale(keypoints_xyz, present, config.keypoint_noise_m)
    margin = config.noise_margin_m
    shortest = MEAN_BONE_LENGTHS_M * config.bone_scale_min
    absolute = both & (
        (lengths < np.maximum(shortest - margin, COLLAPSED_FRACTION * shortest))
        | (lengths > MEAN_BONE_LENGTHS_M * config.bone_scale_max + margin))
    blamed['bone_length'] = _blame_bones(absolute)
    if scale is not None:
        blamed['bone_ratio'] = _blame_bones(
            _ratio_violations(config, lengths, both, scale, margin))
    if calibrated_lengths_m is not None:
        blamed['bone_calibrated'] = _blame_bones(
            _calibrated_violations(config, lengths, both, calibrated_lengths_m, margin))
    breadth = np.zeros(NUM_JOINTS, bool)
    if present[5] and present[17]:
        distance = np.linalg.norm(keypoints_xyz[5] - keypoints_xyz[17])
        if not (config.knuckle_breadth_min_m - margin <= distance
                <= config.knuckle_breadth_max_m + margin):
            breadth[[5, 17]] = True
    blamed['knuckle_breadth'] = breadth
    return blamed


def _calibrated_violations(config, lengths, both, calibrated_lengths_m, margin):
    deviation = np.abs(lengths - calibrated_lengths_m)
    return both & (deviation > calibrated_lengths_m * config.calibrated_tolerance + margin)


def check_pose(config, keypoints_xyz, handedness, calibrated_lengths_m=None, angles=None):
    """
    Check a complete filtered hand pose (after the temporal filter).

    Bones against the calibrated lengths (or the hand's own scale before calibration) with
    ``output_noise_margin_m`` of slack, joint angle limits softened by ``angle_margin_deg``,
    and self-intersection of fingers.

    :param config: AnatomyConfig.
    :param keypoints_xyz: (21, 3) keypoints, metres, all valid.
    :param handedness: 'left', 'right' or 'unknown' (for the sign of flexion angles; an
        unknown side is checked as either side).
    :param calibrated_lengths_m: (20,) user bone lengths or None.
    :param angles: ``kinematics.finger_angles(keypoints_xyz, handedness)`` when already
        computed (:func:`repair` takes the same).
    :return: dict reason -> (21,) bool blamed joints ('bone_calibrated' or 'bone_ratio',
        'joint_angle', 'self_intersection').
    """
    blamed = {}
    if not config.enabled:
        return blamed
    present = np.ones(NUM_JOINTS, bool)
    lengths, both, scale = _bone_scale(keypoints_xyz, present)
    margin = config.output_noise_margin_m
    if calibrated_lengths_m is not None:
        blamed['bone_calibrated'] = _blame_bones(
            _calibrated_violations(config, lengths, both, calibrated_lengths_m, margin))
    else:
        blamed['bone_ratio'] = _blame_bones(
            _ratio_violations(config, lengths, both, scale, margin))
    if angles is None:
        angles = kinematics.finger_angles(keypoints_xyz, handedness)
    soft = np.radians(config.angle_margin_deg)
    bad = _angle_violations(angles.joint_angles, soft)
    if handedness == 'unknown':
        # Flexion signs depend on the side: a hand of unknown side is blamed only for angles
        # that neither a right nor a left hand could make.
        bad &= _angle_violations(kinematics.finger_angles(keypoints_xyz, 'left').joint_angles,
                                 soft)
    joints = np.zeros(NUM_JOINTS, bool)
    joints[ANGLE_BLAMED_JOINT[bad]] = True
    blamed['joint_angle'] = joints
    if config.min_finger_distance_m > 0:
        blamed['self_intersection'] = _intersections(
            keypoints_xyz, present, config.min_finger_distance_m)
    return blamed


def _angle_excess(joint_angles, soft_rad):
    """Return (20,) how far (radians) each angle lies outside the softened joint limits."""
    return (np.maximum(ANGLE_LOWER_RAD - soft_rad - joint_angles, 0.0)
            + np.maximum(joint_angles - ANGLE_UPPER_RAD - soft_rad, 0.0))


def _angle_violations(joint_angles, soft_rad):
    """Return (20,) bool: angles outside the joint limits softened by ``soft_rad``."""
    return _angle_excess(joint_angles, soft_rad) > 0.0


def _intersections(keypoints_xyz, present, min_distance_m):
    first, second = _FINGER_BONE_PAIRS[:, 0], _FINGER_BONE_PAIRS[:, 1]
    usable = present[BONES[first]].all(axis=1) & present[BONES[second]].all(axis=1)
    # Fingertips are skin points: pads may touch (pinch), so the last part of a distal bone
    # does not count.
    starts, ends = keypoints_xyz[_BONE_PARENT], keypoints_xyz[_BONE_CHILD]
    ends = np.where(_IS_DISTAL[:, None], starts + _DISTAL_CORE * (ends - starts), ends)
    distances = _segment_distances(starts[first], ends[first], starts[second], ends[second])
    close = usable & (distances < min_distance_m)
    blamed = np.zeros(NUM_JOINTS, bool)
    blamed[_BONE_CHILD[first[close]]] = True
    blamed[_BONE_CHILD[second[close]]] = True
    return blamed


def expected_bone_lengths(keypoints_xyz, present, calibrated_lengths_m=None):
    """Return (20,) bone lengths to restore: the user's, else the mean bones at hand scale."""
    if calibrated_lengths_m is not None:
        return np.asarray(calibrated_lengths_m, dtype=np.float64)
    _, _, scale = _bone_scale(keypoints_xyz, present)
    return MEAN_BONE_LENGTHS_M * (scale if scale is not None else 1.0)


def repair(config, keypoints_xyz, blamed, handedness, calibrated_lengths_m=None, angles=None):
    """
    Repair the fingers holding blamed joints: restore bone lengths, clamp joint angles.

    Each finger with a blamed joint is rebuilt from its MCP (thumb: CMC) along the observed
    bone directions with angles clamped to the softened limits and the expected bone lengths
    (:func:`expected_bone_lengths`), keeping the observed twist of the hinge joints. Blamed palm
    joints (wrist, MCPs, thumb CMC) cannot be repaired.

    :param config: AnatomyConfig.
    :param keypoints_xyz: (21, 3) keypoints, metres, all valid.
    :param blamed: (21,) bool joints to repair.
    :param handedness: 'left', 'right' or 'unknown' (then the side whose joint limits the
        angles fit better).
    :param calibrated_lengths_m: (20,) user bone lengths or None.
    :param angles: ``kinematics.finger_angles(keypoints_xyz, handedness)`` when already
        computed.
    :return: (repaired keypoints (21, 3), repaired (21,) bool, unrepairable (21,) bool).
    """
    out = np.array(keypoints_xyz, dtype=np.float64)
    present = np.ones(NUM_JOINTS, bool)
    repaired = np.zeros(NUM_JOINTS, bool)
    unrepairable = blamed.copy()
    lengths = expected_bone_lengths(out, present, calibrated_lengths_m)
    if angles is None:
        angles = kinematics.finger_angles(out, handedness)
    soft = np.radians(config.angle_margin_deg)
    if handedness == 'unknown':
        # As check_pose, a hand of unknown side is taken as the side its angles fit: clamping
        # a left hand's flexion with a right hand's signs would straighten its fingers.
        left = kinematics.finger_angles(out, 'left')
        if _angle_excess(left.joint_angles, soft).sum() < _angle_excess(
                angles.joint_angles, soft).sum():
            handedness, angles = 'left', left
    # Clamp just inside the limits so that the repaired pose passes the check exactly.
    joint_angles = np.clip(angles.joint_angles, ANGLE_LOWER_RAD - soft + 1e-9,
                           ANGLE_UPPER_RAD + soft - 1e-9)
    movable = FINGER_JOINTS[:, 1:]  # the MCP (thumb: CMC) belongs to the palm
    fingers = np.flatnonzero(np.any(blamed[movable], axis=1))
    if len(fingers):
        out = kinematics.rebuild_fingers(out, fingers, joint_angles, lengths, handedness,
                                         angles.hinge_twist[fingers], angles.frames)
        repaired[movable[fingers]] = True
        unrepairable[movable[fingers]] = False
    return out, repaired, unrepairable
