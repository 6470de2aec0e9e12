"""
Kinematic hand model: per-hand shape, articulation, posture library and forward kinematics.

Hand frame of a right hand (metres): origin at the wrist, +y from the wrist towards the middle
MCP (distal), +x towards the thumb (radial), +z out of the palm (palmar). Flexion is a rotation
about the joint's local x axis that moves the distal bone towards +z; positive abduction moves
a finger radially. A left hand is the mirror image of a right hand (x -> -x in the hand frame).

Anatomy (bone lengths, hand length band, joint limits, DIP/PIP coupling) comes from
:mod:`hand_pose_ros.core.skeleton`.
"""

from dataclasses import dataclass, field

import numpy as np

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.rotations import cross

HANDEDNESS = ('left', 'right')

# Number of articulation parameters and their layout in Articulation.angles_deg.
NUM_ANGLES = 20
MCP_FLEXION = slice(0, 4)      # index, middle, ring, pinky
PIP_FLEXION = slice(4, 8)
DIP_FLEXION = slice(8, 12)
MCP_ABDUCTION = slice(12, 16)
THUMB_CMC_ABDUCTION = 16
THUMB_CMC_FLEXION = 17
THUMB_MCP_FLEXION = 18
THUMB_IP_FLEXION = 19

# Palm layout of a right hand: angle of each wrist->MCP bone from +y towards +x (radial) and
# its tilt towards the palm (the transverse arch), degrees; index, middle, ring, pinky.
_METACARPAL_SPLAY_DEG = np.array([18.0, 3.0, -12.0, -26.0])
_METACARPAL_ARCH_DEG = np.array([0.0, 0.0, 3.0, 6.0])
# Fingers at zero abduction point between the metacarpal direction and +y.
_FINGER_SPLAY_FRACTION = 0.6
# Thumb CMC location relative to the wrist (unit direction) and thumb rest frame.
_THUMB_CMC_DIRECTION = np.array([0.604, 0.720, 0.342])
_THUMB_REST_SPLAY_DEG = 50.0
_THUMB_PRONATION_DEG = 70.0

# Radius of the finger surface at each joint of a 180 mm hand, millimetres (canonical order;
# the wrist entry is the palm-base radius). Tips are skin points: the distal capsule ends so
# that the tip joint lies just inside its rounded end.
_JOINT_RADII_MM = np.array([
    14.5,
    14.0, 11.0, 9.8, 8.4,
    10.0, 9.0, 7.8, 6.8,
    10.2, 9.3, 8.0, 7.0,
    9.6, 8.6, 7.5, 6.6,
    8.6, 7.6, 6.8, 6.0,
])
_REFERENCE_HAND_LENGTH_MM = 180.0
# Fraction of the tip radius by which the distal capsule's end centre sits behind the tip.
TIP_INSET_FRACTION = 0.7


@dataclass(frozen=True)
class HandShapeConfig:
    """
    Ranges for sampling hand shapes.

    :param hand_length_mm: uniform range of the hand length (wrist to middle fingertip).
    :param bone_variation: standard deviation of the per-bone length factor around 1.
    :param max_bone_variation: per-bone factors are clipped to 1 +- this.
    :param radius_variation: standard deviation of the per-hand finger thickness factor.
    :param palm_thickness_mm: uniform range of the palm thickness of a 180 mm hand.
    :param forearm_radius_mm: uniform ranges (wrist end, elbow end) of the forearm capsule radii.
    :param glove_mm: thickness of a glove over the hand: added to every joint's surface
        radius and to both sides of the palm (0: bare hands).
    """

    hand_length_mm: tuple = (150.0, 215.0)
    bone_variation: float = 0.04
    max_bone_variation: float = 0.10
    radius_variation: float = 0.07
    palm_thickness_mm: tuple = (24.0, 32.0)
    forearm_radius_mm: tuple = ((17.0, 22.0), (25.0, 33.0))
    glove_mm: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.glove_mm <= 20.0:
            raise ValueError(f'glove_mm must be in [0, 20], got {self.glove_mm}')
        lo, hi = self.hand_length_mm
        if not 0 < lo <= hi:
            raise ValueError(f'hand_length_mm must be an increasing positive range, got '
                             f'{self.hand_length_mm}')
        if not 0 <= self.bone_variation <= self.max_bone_variation < 0.5:
            raise ValueError('need 0 <= bone_variation <= max_bone_variation < 0.5, got '
                             f'{self.bone_variation}, {self.max_bone_variation}')


@dataclass(frozen=True)
class HandShape:
    """
    Per-hand anatomy.

    :param handedness: 'left' or 'right'.
    :param bone_lengths_m: (20,) bone lengths in metres, indexed like ``skeleton.BONES``.
    :param joint_radii_m: (21,) surface radius at each joint in metres (wrist: palm base).
    :param palm_thickness_m: palm thickness (diameter of the metacarpal capsules), metres.
    :param forearm_radii_m: (2,) forearm radius at the wrist and at the elbow end, metres.
    :param scale: global scale relative to the mean bone lengths.
    """

    handedness: str
    bone_lengths_m: np.ndarray
    joint_radii_m: np.ndarray
    palm_thickness_m: float
    forearm_radii_m: np.ndarray
    scale: float = 1.0

    def __post_init__(self):
        if self.handedness not in HANDEDNESS:
            raise ValueError(f"handedness must be 'left' or 'right', got {self.handedness!r}")
        lengths = np.asarray(self.bone_lengths_m, dtype=np.float64)
        if lengths.shape != (skeleton.NUM_BONES,) or not np.all(lengths > 0):
            raise ValueError(f'bone_lengths_m must be ({skeleton.NUM_BONES},) positive, got '
                             f'{lengths.shape}')
        radii = np.asarray(self.joint_radii_m, dtype=np.float64)
        if radii.shape != (skeleton.NUM_JOINTS,) or not np.all(radii > 0):
            raise ValueError(f'joint_radii_m must be ({skeleton.NUM_JOINTS},) positive')
        object.__setattr__(self, 'bone_lengths_m', lengths)
        object.__setattr__(self, 'joint_radii_m', radii)
        object.__setattr__(self, 'forearm_radii_m',
                           np.asarray(self.forearm_radii_m, dtype=np.float64))

    @property
    def mirror(self):
        """Return +1 for a right hand and -1 for a left hand (sign of the hand-frame x)."""
        return 1.0 if self.handedness == 'right' else -1.0

    def with_handedness(self, handedness):
        """Return the same anatomy as a ``handedness`` hand."""
        return HandShape(handedness, self.bone_lengths_m, self.joint_radii_m,
                         self.palm_thickness_m, self.forearm_radii_m, self.scale)


def sample_hand_shape(rng, handedness=None, config=HandShapeConfig()):
    """
    Draw an adult hand's anatomy.

    Bone lengths are the statistical mean lengths scaled to a hand length drawn from
    ``config.hand_length_mm``, times a per-bone factor (clipped normal around 1).

    :param rng: ``numpy.random.Generator``.
    :param handedness: 'left', 'right' or None for a fair coin.
    :param config: :class:`HandShapeConfig`.
    :return: :class:`HandShape`.
    """
    if handedness is None:
        handedness = HANDEDNESS[int(rng.integers(2))]
    if handedness not in HANDEDNESS:
        raise ValueError(f"handedness must be 'left', 'right' or None, got {handedness!r}")
    mean_mm = skeleton.MEAN_BONE_LENGTHS_MM
    mean_length_mm = mean_mm[[8, 9, 10, 11]].sum()
    target_mm = rng.uniform(*config.hand_length_mm)
    scale = target_mm / mean_length_mm
    factors = 1.0 + np.clip(rng.normal(0.0, config.bone_variation, skeleton.NUM_BONES),
                            -config.max_bone_variation, config.max_bone_variation)
    bone_lengths_m = mean_mm * scale * factors * 1e-3
    size = target_mm / _REFERENCE_HAND_LENGTH_MM
    thickness = np.clip(rng.normal(1.0, config.radius_variation), 0.8, 1.2)
    joint_radii_m = (_JOINT_RADII_MM * size * thickness + config.glove_mm) * 1e-3
    palm_thickness_m = (rng.uniform(*config.palm_thickness_mm) * size
                        + 2.0 * config.glove_mm) * 1e-3
    forearm_radii_m = np.array([rng.uniform(*r) for r in config.forearm_radius_mm]) * 1e-3
    return HandShape(handedness, bone_lengths_m, joint_radii_m, palm_thickness_m,
                     forearm_radii_m, scale)


def articulation_limits_deg(limits=skeleton.JOINT_LIMITS_DEG):
    """Return (lo, hi), each (20,) degrees, for the articulation vector layout."""
    lo = np.empty(NUM_ANGLES)
    hi = np.empty(NUM_ANGLES)
    for index, pair in ((MCP_FLEXION, limits.mcp_flexion), (PIP_FLEXION, limits.pip_flexion),
                        (DIP_FLEXION, limits.dip_flexion),
                        (MCP_ABDUCTION, limits.mcp_abduction),
                        (THUMB_CMC_ABDUCTION, limits.thumb_cmc_abduction),
                        (THUMB_CMC_FLEXION, limits.thumb_cmc_flexion),
                        (THUMB_MCP_FLEXION, limits.thumb_mcp_flexion),
                        (THUMB_IP_FLEXION, limits.thumb_ip_flexion)):
        lo[index], hi[index] = pair
    return lo, hi


@dataclass(frozen=True)
class Articulation:
    """
    Joint angles of one hand, degrees.

    ``angles_deg`` (20,): MCP flexion (index, middle, ring, pinky), PIP flexion, DIP flexion,
    MCP abduction (positive = radial), then thumb CMC abduction, CMC flexion, MCP flexion and
    IP flexion.
    """

    angles_deg: np.ndarray = field(default_factory=lambda: np.zeros(NUM_ANGLES))

    def __post_init__(self):
        angles = np.asarray(self.angles_deg, dtype=np.float64)
        if angles.shape != (NUM_ANGLES,) or not np.all(np.isfinite(angles)):
            raise ValueError(f'articulation needs ({NUM_ANGLES},) finite angles, got '
                             f'shape {angles.shape}')
        object.__setattr__(self, 'angles_deg', angles)

    def clipped(self, limits=skeleton.JOINT_LIMITS_DEG):
        """Return this articulation clipped to the joint limits."""
        lo, hi = articulation_limits_deg(limits)
        return Articulation(np.clip(self.angles_deg, lo, hi))

    def lerp(self, other, weight):
        """Return the linear blend (1 - weight) * self + weight * other."""
        return Articulation((1.0 - weight) * self.angles_deg + weight * other.angles_deg)


def _posture(mcp, pip, abduction, thumb, dip=None):
    mcp = np.broadcast_to(np.asarray(mcp, dtype=np.float64), (4,))
    pip = np.broadcast_to(np.asarray(pip, dtype=np.float64), (4,))
    if dip is None:
        dip = pip * skeleton.JOINT_LIMITS_DEG.dip_pip_ratio
    dip = np.broadcast_to(np.asarray(dip, dtype=np.float64), (4,))
    abduction = np.broadcast_to(np.asarray(abduction, dtype=np.float64), (4,))
    return Articulation(np.concatenate([mcp, pip, dip, abduction, np.asarray(thumb, float)]))


_SPREAD = (12.0, 2.0, -8.0, -16.0)
_CLOSED = (0.0, 0.0, -2.0, -4.0)
_THUMB_OPEN = (25.0, -15.0, 5.0, 5.0)
_THUMB_FOLDED = (20.0, 45.0, 45.0, 45.0)
_THUMB_ON_FIST = (30.0, 35.0, 35.0, 30.0)

# Posture library (angles in degrees, see Articulation).
POSTURES = {
    'open': _posture(0.0, 3.0, _SPREAD, _THUMB_OPEN),
    'flat': _posture(0.0, 0.0, _CLOSED, (10.0, -5.0, 0.0, 0.0)),
    'relaxed': _posture((15, 20, 25, 30), (20, 25, 30, 35), (6, 0, -4, -8), (30, 5, 10, 15)),
    'fist': _posture(85.0, 95.0, _CLOSED, _THUMB_ON_FIST, dip=35.0),
    'point': _posture((0, 85, 85, 85), (0, 95, 95, 95), _CLOSED, _THUMB_ON_FIST,
                      dip=(0, 35, 35, 35)),
    # Pinch and tripod: thumb and index (and middle) tips touching on a mean-sized hand.
    'pinch': _posture((47, 20, 15, 10), (48, 15, 15, 15), (0, -2, -6, -12), (43, 23, 18, 14)),
    'tripod': _posture((50, 50, 60, 70), (47, 44, 80, 85), (4, -2, -4, -6), (35, 27, 24, 20)),
    'power_grasp': _posture(55.0, 65.0, _CLOSED, (55.0, 20.0, 20.0, 25.0)),
    'one': _posture((0, 85, 85, 85), (0, 95, 95, 95), _CLOSED, _THUMB_FOLDED,
                    dip=(0, 35, 35, 35)),
    'two': _posture((0, 0, 85, 85), (0, 0, 95, 95), (10, -6, -2, -4), _THUMB_FOLDED,
                    dip=(0, 0, 35, 35)),
    'three': _posture((0, 0, 0, 85), (0, 0, 0, 95), (8, 0, -8, -4), _THUMB_FOLDED,
                      dip=(0, 0, 0, 35)),
    'four': _posture(0.0, 0.0, _SPREAD, (15.0, 50.0, 40.0, 30.0)),
    'five': _posture(0.0, 0.0, _SPREAD, (20.0, -15.0, 0.0, 0.0)),
    'thumbs_up': _posture(85.0, 95.0, _CLOSED, (30.0, -10.0, 0.0, -10.0), dip=35.0),
}
POSTURE_NAMES = tuple(POSTURES)


@dataclass(frozen=True)
class ArticulationConfig:
    """
    How :func:`sample_articulation` mixes postures and uniform samples.

    :param uniform_prob: probability of an articulation drawn uniformly within the limits.
    :param blend_prob: probability of blending two library postures.
    :param uniform_mix_max: largest weight of a uniform sample mixed into a posture.
    :param noise_deg: standard deviation of per-angle noise added to postures.
    :param dip_noise_deg: standard deviation of DIP around ratio * PIP.
    :param limits: :class:`hand_pose_ros.core.skeleton.JointLimitsDeg`.
    """

    uniform_prob: float = 0.2
    blend_prob: float = 0.4
    uniform_mix_max: float = 0.35
    noise_deg: float = 7.0
    dip_noise_deg: float = 8.0
    limits: skeleton.JointLimitsDeg = skeleton.JOINT_LIMITS_DEG


def couple_dip(angles_deg, rng, config):
    """Set DIP flexion to ratio * PIP plus noise, in place; return the array."""
    ratio = config.limits.dip_pip_ratio
    angles_deg[DIP_FLEXION] = ratio * angles_deg[PIP_FLEXION] + rng.normal(
        0.0, config.dip_noise_deg, 4)
    return angles_deg


def sample_articulation(rng, config=ArticulationConfig()):
    """
    Draw joint angles within the anatomical limits.

    A library posture, a blend of two postures, or a uniform sample; postures are mixed with
    a uniform sample (random weight up to ``uniform_mix_max``) and noise; DIP follows PIP.

    :param rng: ``numpy.random.Generator``.
    :param config: :class:`ArticulationConfig`.
    :return: :class:`Articulation` clipped to ``config.limits``.
    """
    lo, hi = articulation_limits_deg(config.limits)
    uniform = rng.uniform(lo, hi)
    draw = rng.random()
    if draw < config.uniform_prob:
        angles = uniform
    else:
        first = POSTURES[POSTURE_NAMES[int(rng.integers(len(POSTURE_NAMES)))]].angles_deg
        if draw < config.uniform_prob + config.blend_prob:
            second = POSTURES[POSTURE_NAMES[int(rng.integers(len(POSTURE_NAMES)))]].angles_deg
            weight = rng.random()
            first = (1.0 - weight) * first + weight * second
        mix = rng.uniform(0.0, config.uniform_mix_max)
        noise = rng.normal(0.0, config.noise_deg, NUM_ANGLES)
        angles = (1.0 - mix) * first + mix * uniform + noise
    angles = couple_dip(np.array(angles), rng, config)
    return Articulation(np.clip(angles, lo, hi))


def _rotation(angle_rad, rows):
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    if np.ndim(c) == 0:
        c, s = float(c), float(s)
        return np.array([[{'c': c, 's': s, '-s': -s, '0': 0.0, '1': 1.0}[k] for k in row]
                         for row in rows])
    values = {'c': c, 's': s, '-s': -s, '0': np.zeros_like(c), '1': np.ones_like(c)}
    return np.stack([np.stack([values[k] for k in row], -1) for row in rows], -2)


def rotation_x(angle_rad):
    """Return (..., 3, 3) rotations about x by ``angle_rad``."""
    return _rotation(angle_rad, (('1', '0', '0'), ('0', 'c', '-s'), ('0', 's', 'c')))


def rotation_y(angle_rad):
    """Return (..., 3, 3) rotations about y by ``angle_rad``."""
    return _rotation(angle_rad, (('c', '0', 's'), ('0', '1', '0'), ('-s', '0', 'c')))


def rotation_z(angle_rad):
    """Return (..., 3, 3) rotations about z by ``angle_rad``."""
    return _rotation(angle_rad, (('c', '-s', '0'), ('s', 'c', '0'), ('0', '0', '1')))


def _bone_directions(articulation):
    """
    Return (20, 3) unit bone directions of a right hand, indexed like ``skeleton.BONES``.

    Successive flexions of one finger turn about the same local x axis, so a phalanx's
    direction is its base frame applied to (0, cos, sin) of the summed flexion angles.
    """
    a = np.radians(articulation.angles_deg)
    directions = np.empty((skeleton.NUM_BONES, 3))
    directions[0] = _THUMB_CMC_DIRECTION / np.linalg.norm(_THUMB_CMC_DIRECTION)
    cmc = (rotation_z(np.radians(-_THUMB_REST_SPLAY_DEG) + a[THUMB_CMC_FLEXION])
           @ rotation_x(a[THUMB_CMC_ABDUCTION]) @ rotation_y(np.radians(-_THUMB_PRONATION_DEG)))
    thumb = np.cumsum([0.0, a[THUMB_MCP_FLEXION], a[THUMB_IP_FLEXION]])
    directions[1:4] = np.stack([np.zeros(3), np.cos(thumb), np.sin(thumb)], axis=1) @ cmc.T
    splay = np.radians(_METACARPAL_SPLAY_DEG)
    arch = np.radians(_METACARPAL_ARCH_DEG)
    metacarpals = np.stack([np.sin(splay) * np.cos(arch), np.cos(splay) * np.cos(arch),
                            np.sin(arch)], axis=1)
    heading = _FINGER_SPLAY_FRACTION * splay + a[MCP_ABDUCTION]  # towards +x
    flexion = np.cumsum(np.stack([a[MCP_FLEXION], a[PIP_FLEXION], a[DIP_FLEXION]], axis=1),
                        axis=1)
    phalanges = np.stack([np.sin(heading)[:, None] * np.cos(flexion),
                          np.cos(heading)[:, None] * np.cos(flexion), np.sin(flexion)], axis=2)
    fingers = np.concatenate([metacarpals[:, None], phalanges], axis=1)  # (4, 4, 3)
    directions[4:] = fingers.reshape(16, 3)
    return directions


def local_keypoints(shape, articulation):
    """
    Return (21, 3) keypoints in the hand frame of ``shape`` (mirrored for a left hand).

    :param shape: :class:`HandShape`.
    :param articulation: :class:`Articulation`.
    :return: (21, 3) float64 metres, wrist at the origin.
    """
    segments = (shape.bone_lengths_m[:, None] * _bone_directions(articulation)).reshape(5, 4, 3)
    points = np.zeros((skeleton.NUM_JOINTS, 3))
    # Every finger chain (thumb included) starts at the wrist: joints are cumulative sums.
    points[1:] = np.cumsum(segments, axis=1).reshape(20, 3)
    points[:, 0] *= shape.mirror
    return points


def _as_rotation(rotation):
    rotation = np.asarray(rotation, dtype=np.float64)
    if rotation.shape != (3, 3) or not np.abs(rotation @ rotation.T - np.eye(3)).max() < 1e-6 \
            or np.dot(cross(rotation[:, 0], rotation[:, 1]), rotation[:, 2]) < 0:
        raise ValueError('rotation must be a proper 3x3 rotation matrix')
    return rotation


def hand_keypoints(shape, articulation, rotation, translation):
    """
    Return the 21 keypoints of a posed hand in the camera optical frame.

    :param shape: :class:`HandShape`.
    :param articulation: :class:`Articulation`.
    :param rotation: (3, 3) camera-from-hand rotation.
    :param translation: (3,) wrist position in the camera frame, metres.
    :return: (21, 3) float64 metres.
    """
    rotation = _as_rotation(rotation)
    translation = np.asarray(translation, dtype=np.float64).reshape(3)
    return local_keypoints(shape, articulation) @ rotation.T + translation


def flexion_angles_deg(keypoints_xyz):
    """
    Return (5, 3) unsigned bend angles at the three flexing joints of each finger.

    Finger f bends at joints FINGER_JOINTS[f, 0..2] (thumb: CMC, MCP, IP; others: MCP, PIP,
    DIP); the MCP bend of the four fingers is measured from the wrist->MCP bone, so it also
    contains the abduction and splay.

    :param keypoints_xyz: (21, 3) keypoints.
    :return: (5, 3) float64 degrees in [0, 180].
    """
    keypoints_xyz = np.asarray(keypoints_xyz, dtype=np.float64)
    chains = np.concatenate([np.zeros((5, 1), dtype=np.int64), skeleton.FINGER_JOINTS], axis=1)
    segments = keypoints_xyz[chains[:, 1:]] - keypoints_xyz[chains[:, :-1]]
    segments /= np.linalg.norm(segments, axis=-1, keepdims=True)
    cosine = np.sum(segments[:, 1:] * segments[:, :-1], axis=-1)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


# Upper arm radius at the shoulder end relative to the forearm's elbow radius.
UPPER_ARM_WIDENING = 1.3


def hand_capsules(shape, keypoints_xyz, rotation, forearm_direction, forearm_length_m,
                  upper_arm=None):
    """
    Return the tapered capsules (round cones) that form a posed hand's surface.

    Every phalanx is a capsule between its joints with the shape's joint radii; the palm is
    four metacarpal capsules plus a wrist capsule and a thenar capsule (palm thickness from
    the shape); the forearm is two side-by-side capsules leaving the wrist; the upper arm
    (optional) continues from the elbow, widening, so the arm does not end in mid-air.

    :param shape: :class:`HandShape`.
    :param keypoints_xyz: (21, 3) posed keypoints, camera frame, metres.
    :param rotation: (3, 3) camera-from-hand rotation used for the keypoints.
    :param forearm_direction: (3,) unit vector from the wrist towards the elbow, camera frame.
    :param forearm_length_m: length of the forearm capsules.
    :param upper_arm: optional (3,) vector from the elbow to the far end of the upper arm,
        camera frame, metres (None or a zero vector: no upper arm).
    :return: dict with 'start' (N, 3), 'end' (N, 3), 'radius_start' (N,), 'radius_end' (N,),
        'forearm' (N,) bool, 'joints' (N, 2) the skeleton joints each capsule belongs to
        (-1: none) and 'start_covered' (N,) bool, True where another capsule's sphere
        contains the start sphere (the renderer may skip it).
    """
    kp = np.asarray(keypoints_xyz, dtype=np.float64)
    rotation = _as_rotation(rotation)
    radii = shape.joint_radii_m
    size = shape.scale * skeleton.MEAN_BONE_LENGTHS_MM[[8, 9, 10, 11]].sum() \
        / _REFERENCE_HAND_LENGTH_MM
    x_axis = rotation[:, 0] * shape.mirror
    y_axis = rotation[:, 1]
    z_axis = rotation[:, 2]
    wrist = kp[skeleton.WRIST]
    # Phalanges of the five fingers (thumb: CMC->MCP is the first metacarpal), finger by
    # finger from base to tip. Start spheres of the finger phalanges coincide with the end
    # sphere of the previous phalanx or metacarpal capsule (same centre, radius at least as
    # big).
    chains = skeleton.FINGER_JOINTS
    tips = chains[:, 3]
    direction = kp[tips] - kp[chains[:, 2]]
    direction /= np.array([np.linalg.norm(d) for d in direction])[:, None]
    phalanx_ends = kp[chains[:, 1:]]
    phalanx_ends[:, 2] = kp[tips] - (TIP_INSET_FRACTION * radii[tips])[:, None] * direction
    starts, ends = [kp[chains[:, :3]].reshape(15, 3)], [phalanx_ends.reshape(15, 3)]
    r0, r1 = [radii[chains[:, :3]].reshape(15)], [radii[chains[:, 1:]].reshape(15)]
    attached = [np.stack([chains[:, :3], chains[:, 1:]], axis=-1).reshape(15, 2)]
    covered = [False] + [True] * 14
    forearm = [False] * 15

    def add(start, end, radius_start, radius_end, joints, is_forearm=False, cover=False):
        count = len(radius_start)
        covered.extend([cover] * count)
        starts.append(start)
        ends.append(end)
        r0.append(radius_start)
        r1.append(radius_end)
        attached.append(joints)
        forearm.extend([is_forearm] * count)

    # Palm: metacarpal capsules from near the wrist to each MCP.
    palm_radius = 0.5 * shape.palm_thickness_m
    base_offsets = np.array([0.017, 0.006, -0.006, -0.017]) * size
    mcps = skeleton.MCPS[1:5]
    add(wrist + base_offsets[:, None] * x_axis + 0.012 * size * y_axis, kp[mcps],
        np.repeat(palm_radius * 1.05, 4), np.maximum(palm_radius, radii[mcps]),
        np.stack([np.repeat(skeleton.WRIST, 4), mcps], axis=1))
    # Wrist / palm base across the carpals, and the thenar eminence.
    cmc, thumb_mcp = kp[1], kp[2]
    add(np.array([wrist + 0.015 * size * x_axis + 0.01 * size * y_axis,
                  wrist + 0.5 * (cmc - wrist) + 0.004 * size * z_axis]),
        np.array([wrist - 0.015 * size * x_axis + 0.01 * size * y_axis,
                  cmc + 0.5 * (thumb_mcp - cmc)]),
        np.array([radii[0], radii[1] * 1.15]), np.array([radii[0], radii[2] * 1.2]),
        np.array([(skeleton.WRIST, -1), (skeleton.WRIST, 1)]))
    # Forearm: two capsules side by side, slightly flattened wrist, widening to the elbow.
    direction = np.asarray(forearm_direction, dtype=np.float64)
    direction = direction / np.linalg.norm(direction)
    side = cross(direction, z_axis)
    norm = np.linalg.norm(side)
    side = x_axis if norm < 1e-6 else side / norm
    wrist_r, elbow_r = shape.forearm_radii_m
    offsets = np.array([[1.0], [-1.0]]) * 0.6 * wrist_r * side
    add(wrist + offsets + 0.3 * wrist_r * direction,
        wrist + 1.2 * offsets + forearm_length_m * direction, np.repeat(wrist_r * 0.85, 2),
        np.repeat(elbow_r * 0.85, 2), np.array([(skeleton.WRIST, -1)] * 2), is_forearm=True)
    if upper_arm is not None and np.linalg.norm(upper_arm) > 0:
        elbow = wrist + forearm_length_m * direction
        add(elbow[None], (elbow + np.asarray(upper_arm, dtype=np.float64))[None],
            np.array([elbow_r]), np.array([elbow_r * UPPER_ARM_WIDENING]),
            np.array([(-1, -1)]), is_forearm=True)
    return {'start': np.concatenate(starts), 'end': np.concatenate(ends),
            'radius_start': np.concatenate(r0), 'radius_end': np.concatenate(r1),
            'forearm': np.array(forearm),
            'joints': np.concatenate(attached).astype(np.int64),
            'start_covered': np.array(covered)}


def joint_surface_radii(capsules, keypoints_xyz):
    """
    Return (21,) how far the hand surface may lie in front of each joint, metres.

    Over the joint's own capsules (those attached to it, e.g. the two phalanges meeting at a
    PIP), the joint's distance to the capsule axis plus the capsule's larger radius bounds the
    depth of its own surface in front of it. Anything seen nearer than that (another finger,
    the palm the joint is pressed into, the forearm, an object) occludes the joint.

    :param capsules: dict from :func:`hand_capsules`.
    :param keypoints_xyz: (21, 3) the keypoints the capsules were built from.
    :return: (21,) float64 metres.
    """
    points = np.asarray(keypoints_xyz, dtype=np.float64)[:, None, :]
    start, end = capsules['start'], capsules['end']
    radius_start, radius_end = capsules['radius_start'], capsules['radius_end']
    axis = end - start
    length2 = np.maximum(np.add.reduce(axis * axis, axis=-1), 1e-18)
    along = np.add.reduce((points - start) * axis, axis=-1)
    along /= length2
    np.minimum(np.maximum(along, 0.0, out=along), 1.0, out=along)
    offset = points - (start + along[..., None] * axis)
    distance = np.sqrt(np.add.reduce(offset * offset, axis=-1))
    radius = radius_start + along * (radius_end - radius_start)
    bound = np.maximum(radius_start, radius_end) + distance
    joints = capsules['joints']
    # The forearm is not the wrist's own surface: it widens to the elbow, and where it lies
    # in front of the wrist it hides it.
    own = ((joints[:, 0] == np.arange(len(points))[:, None])
           | (joints[:, 1] == np.arange(len(points))[:, None])) & ~capsules['forearm']
    return np.max(np.where(own & (distance <= radius), bound, 0.0), axis=1)
