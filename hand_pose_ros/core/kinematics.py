"""
Hand kinematics: joint angles, palm frame and bone frames of 21-joint hands.

Conventions (all arrays in the canonical order of :mod:`hand_pose_ros.core.skeleton`):

* Palm frame: origin at :func:`~hand_pose_ros.core.skeleton.palm_center` (mean of the wrist
  and the four finger MCPs); x axis distal, from the wrist towards the midpoint of the index
  and little-finger MCPs; z axis along ``(index_mcp - wrist) x (pinky_mcp - wrist)``,
  made orthogonal to x; y = z x x. The construction is mirror-consistent: y always points
  towards the little finger, z points out of the palm (palmar) on a right hand and out of
  the back of the hand (dorsal) on a left hand.
* Joint angles (radians): flexion is positive towards the palm, hyperextension negative;
  MCP abduction is positive towards the thumb side. Every finger joint angle is measured in
  the finger's own flexion frame: the axis ``a`` along the parent bone, the palmar axis ``p``
  and the lateral axis ``l = a x p`` carried down the finger, so that rotating ``a`` by
  ``+theta`` about ``l`` bends it towards the palm. The direction of the next bone is
  ``d = cos(phi) (cos(theta) a + sin(theta) p) + sin(phi) l``; ``theta`` is the flexion and
  ``phi`` the out-of-plane (abduction) angle. :func:`chain_angles` and
  :func:`directions_from_angles` convert between the two, which is what an anatomical repair
  uses to clamp angles.
* Thumb CMC (same convention as the synthetic hand model): in the frame (middle metacarpal
  ``u``, thumb side ``r``, palmar ``p``) the thumb metacarpal direction is
  ``t = cos(abd) (cos(s - flex) u + sin(s - flex) r) + sin(abd) p`` with the rest splay
  ``s = skeleton.THUMB_CMC_REST_SPLAY_DEG``: abduction lifts the thumb out of the palm plane
  towards the palm, flexion swings it across the palm towards the little finger.
* Bone frames: joint j's orientation is the frame of the bone ending at j (parent -> j):
  x along the bone; for the four fingers y is the palm y axis made orthogonal to x
  (the flexion axis), z = x x y; for the thumb's first bone z is the palm z axis made
  orthogonal to x, y = z x x, and each next thumb bone carries its parent's frame by the
  smallest rotation onto its own direction (no turn about a bone that points along the palm
  normal). The wrist uses the palm frame.

Left hands are handled by mirroring the palmar direction (``handedness='left'``); angle
values of a left hand equal those of the mirrored right hand.
"""

import typing

import numpy as np

from hand_pose_ros.core.rotations import cross, norm
from hand_pose_ros.core.skeleton import (
    BONES, FINGER_JOINTS, FINGER_OF_JOINT, FINGERS, MEAN_BONE_LENGTHS_MM, NUM_JOINTS,
    palm_center,
    THUMB_CMC_REST_SPLAY_DEG, WRIST)

_EPS = 1e-9

ANGLE_NAMES = (
    'thumb_cmc_flexion', 'thumb_cmc_abduction', 'thumb_mcp_flexion', 'thumb_ip_flexion',
) + tuple(
    name for finger in FINGERS[1:] for name in (
        f'{finger}_mcp_flexion', f'{finger}_mcp_abduction',
        f'{finger}_pip_flexion', f'{finger}_dip_flexion'))
ANGLE_INDEX = {name: i for i, name in enumerate(ANGLE_NAMES)}

# A relaxed hand, degrees (used by hand_from_angles when no angles are given).
REST_ANGLES_DEG = dict(
    {'thumb_cmc_flexion': 15.0, 'thumb_cmc_abduction': 40.0, 'thumb_mcp_flexion': 10.0,
     'thumb_ip_flexion': 10.0},
    **{f'{f}_{j}': v for f in FINGERS[1:] for j, v in (
        ('mcp_flexion', 15.0), ('mcp_abduction', 0.0), ('pip_flexion', 20.0),
        ('dip_flexion', 12.0))})

# Palm template of hand_from_angles: angle of each wrist->MCP bone from the distal axis
# towards the thumb side (degrees), chosen so index-MCP to little-MCP is ~67 mm; the thumb
# CMC direction (degrees towards the thumb side, degrees towards the palm).
_MCP_FAN_DEG = (18.0, 3.0, -12.0, -26.0)
_THUMB_CMC_DIRECTION_DEG = (40.0, 20.0)

INDEX_MCP, PINKY_MCP, MIDDLE_MCP = 5, 17, 9

# The five fingers' angles are measured in one (5, 3) batch of chains: the last three bones
# of each finger (those ending at FINGER_JOINTS[:, 1:]) from a reference bone, the wrist->MCP
# bone of a finger and the metacarpal of the thumb. The thumb's chain starts at that
# metacarpal itself, so its first step measures zero. _FLEXION_ANGLE (5, 3) and
# _ABDUCTION_ANGLE (5,) give the ANGLE_NAMES position of each step's flexion and of the first
# step's out-of-plane angle; _UNUSED, one past the end, takes the steps without an angle.
_CHAIN_JOINTS = FINGER_JOINTS[:, 1:]
_REFERENCE_START = np.array([1, WRIST, WRIST, WRIST, WRIST])
_REFERENCE_END = np.array([2, *FINGER_JOINTS[1:, 0].tolist()])
_UNUSED = len(ANGLE_NAMES)
_FLEXION_ANGLE = np.array(
    [[_UNUSED, ANGLE_INDEX['thumb_mcp_flexion'], ANGLE_INDEX['thumb_ip_flexion']]]
    + [[ANGLE_INDEX[f'{finger}_{joint}_flexion'] for joint in ('mcp', 'pip', 'dip')]
       for finger in FINGERS[1:]])
_ABDUCTION_ANGLE = np.array(
    [_UNUSED] + [ANGLE_INDEX[f'{finger}_mcp_abduction'] for finger in FINGERS[1:]])
_IS_THUMB_BONE = FINGER_OF_JOINT[BONES[:, 1]] == 0
# (parent joint, joint) of the thumb bones after its first, in order down the thumb.
_THUMB_CHAIN = tuple((int(a), int(b)) for a, b in BONES[_IS_THUMB_BONE][1:])
# Joints whose bone frames each angle of ANGLE_NAMES is measured between (the wrist: the
# palm frame, which every angle uses); defined_geometry leaves an angle out with them.
_ANGLE_FRAMES = np.array(
    [[WRIST, 2, MIDDLE_MCP], [WRIST, 2, MIDDLE_MCP], [WRIST, 2, 3], [WRIST, 3, 4]]
    + [[WRIST, joints[k], joints[k + 1]] for joints in FINGER_JOINTS[1:].tolist()
       for k in (0, 0, 1, 2)])
# How far from orthonormal (each entry of R^T R - I) a frame may be and count as defined:
# normalising a vector shorter than _EPS (a degenerate one) leaves it far shorter than unit.
_FRAME_TOLERANCE = 1e-6


def _dot(a, b):
    """Return the dot products of (..., 3) vectors along the last axis."""
    return (a * b).sum(axis=-1)


def _unit(v):
    """Return v normalised along the last axis (zero vectors stay zero)."""
    return v / np.maximum(norm(v)[..., None], _EPS)


def _orthogonal_unit(v, axis):
    """Return the unit component of v orthogonal to the unit vector axis."""
    return _unit(v - _dot(v, axis)[..., None] * axis)


def _check_keypoints(keypoints_xyz, batched=False, missing=False):
    """
    Return keypoints as float64, checking a (21, 3) shape ((..., 21, 3) when batched).

    :param missing: allow NaN (missing joints); infinities are refused either way.
    """
    keypoints_xyz = np.asarray(keypoints_xyz, dtype=np.float64)
    shape = keypoints_xyz.shape[-2:] if batched else keypoints_xyz.shape
    if shape != (NUM_JOINTS, 3):
        expected = '(..., 21, 3)' if batched else '(21, 3)'
        raise ValueError(f'keypoints_xyz must have shape {expected}, got {keypoints_xyz.shape}')
    usable = ~np.isinf(keypoints_xyz) if missing else np.isfinite(keypoints_xyz)
    if not np.all(usable):
        raise ValueError('keypoints_xyz contains non-finite values')
    return keypoints_xyz


def _handedness_signs(handedness):
    """Return the palmar sign of one handedness label (float) or of a sequence ((...,))."""
    if handedness is None or isinstance(handedness, str):
        if handedness in ('right', 'unknown', None):
            return 1.0
        if handedness == 'left':
            return -1.0
        raise ValueError(
            f"handedness must be 'left', 'right' or 'unknown', got {handedness!r}")
    return np.array([_handedness_signs(label) for label in handedness])


def _palm_x_z(keypoints_xyz):
    """Return the palm x and z axes (..., 3) of checked (..., 21, 3) keypoints."""
    wrist = keypoints_xyz[..., WRIST, :]
    index_mcp, pinky_mcp = keypoints_xyz[..., INDEX_MCP, :], keypoints_xyz[..., PINKY_MCP, :]
    x_axis = _unit(0.5 * (index_mcp + pinky_mcp) - wrist)
    normal = cross(index_mcp - wrist, pinky_mcp - wrist)
    return x_axis, _orthogonal_unit(normal, x_axis)


def palm_normal(keypoints_xyz):
    """
    Return the unit palm normal: the z axis of :func:`palm_frame`, (3,) or batched (..., 3).

    :param keypoints_xyz: (21, 3) keypoints, metres, or (..., 21, 3) for several hands.
    """
    return _palm_x_z(_check_keypoints(keypoints_xyz, batched=True))[1]


def _palm_rotation(keypoints_xyz):
    """Return the (..., 3, 3) palm rotation (columns x, y, z) of checked keypoints."""
    x_axis, z_axis = _palm_x_z(keypoints_xyz)
    return np.stack([x_axis, cross(z_axis, x_axis), z_axis], axis=-1)


def palm_frame(keypoints_xyz):
    """
    Return the palm frame of a hand (see module docstring for the axis convention).

    :param keypoints_xyz: (21, 3) keypoints, metres.
    :return: origin (3,) at the palm centre and rotation (3, 3) whose columns are the x, y, z
        axes expressed in the keypoints' frame.
    """
    keypoints_xyz = _check_keypoints(keypoints_xyz)
    return palm_center(keypoints_xyz), _palm_rotation(keypoints_xyz)


def _palm_axes(keypoints_xyz, handedness):
    """Return (palmar unit normal, thumb-side unit vector in the palm plane), each (..., 3)."""
    palmar = _palm_x_z(keypoints_xyz)[1] * np.asarray(_handedness_signs(handedness))[..., None]
    thumb_side = _orthogonal_unit(
        keypoints_xyz[..., INDEX_MCP, :] - keypoints_xyz[..., PINKY_MCP, :], palmar)
    return palmar, thumb_side


def chain_angles(axis, palmar, directions):
    """
    Return flexion and out-of-plane angles along chains of bone directions.

    :param axis: (..., 3) reference (parent) direction of each chain.
    :param palmar: (..., 3) direction towards which flexion is positive.
    :param directions: (..., K, 3) unit directions of the K bones of each chain.
    :return: flexion (..., K) and out-of-plane angles (..., K), radians.
    """
    a = _unit(np.asarray(axis, dtype=np.float64))
    p = _orthogonal_unit(np.asarray(palmar, dtype=np.float64), a)
    lateral = cross(a, p)
    directions = np.asarray(directions, dtype=np.float64)
    steps = directions.shape[-2]
    flexion, out_of_plane = np.empty((2, *directions.shape[:-1]))
    for k in range(steps):
        d = directions[..., k, :]
        flexion[..., k] = np.arctan2(_dot(d, p), _dot(d, a))
        out_of_plane[..., k] = _dot(d, lateral)
        if k + 1 < steps:
            a = d
            lateral = _orthogonal_unit(lateral, a)
            p = cross(lateral, a)
    return flexion, np.arcsin(np.clip(out_of_plane, -1.0, 1.0))


def directions_from_angles(axis, palmar, flexion, out_of_plane):
    """
    Return unit bone directions rebuilt from chain angles (inverse of chain_angles).

    :param axis: (..., 3) reference (parent) direction of each chain.
    :param palmar: (..., 3) direction towards which flexion is positive.
    :param flexion: (..., K) flexion angles, radians.
    :param out_of_plane: (..., K) out-of-plane angles, radians.
    :return: (..., K, 3) directions of the K bones of each chain.
    """
    a = _unit(np.asarray(axis, dtype=np.float64))
    p = _orthogonal_unit(np.asarray(palmar, dtype=np.float64), a)
    lateral = cross(a, p)
    theta = np.asarray(flexion, dtype=np.float64)[..., None]
    phi = np.asarray(out_of_plane, dtype=np.float64)[..., None]
    cos_theta, sin_theta, cos_phi, sin_phi = np.cos(theta), np.sin(theta), np.cos(phi), np.sin(phi)
    steps = theta.shape[-2]
    out = np.empty((*theta.shape[:-1], 3))
    for k in range(steps):
        d = (cos_phi[..., k, :] * (cos_theta[..., k, :] * a + sin_theta[..., k, :] * p)
             + sin_phi[..., k, :] * lateral)
        out[..., k, :] = d
        if k + 1 < steps:
            a = d
            lateral = _orthogonal_unit(lateral, a)
            p = cross(lateral, a)
    return out


class FingerFrames(typing.NamedTuple):
    """
    Frames in which the angles of a hand's fingers are measured (``finger_angles().frames``).

    Shapes are those of one hand; batched keypoints (..., 21, 3) add the leading dimensions.
    They depend on the palm only (wrist, MCPs and the thumb metacarpal), so they stay valid
    for keypoints whose fingers :func:`rebuild_fingers` rebuilt.
    """

    axes: np.ndarray
    """(5, 3) reference axis of each finger chain (thumb: its metacarpal)."""
    palmars: np.ndarray
    """(5, 3) direction towards which each finger's flexion is positive (thumb: towards the
    palm and away from the thumb side)."""
    signs: np.ndarray
    """(5,) abduction signs that make positive out-of-plane angles point towards the thumb."""
    thumb_cmc: tuple
    """(middle metacarpal, thumb side, palmar) axes (3,) of the thumb CMC."""


def _finger_references(keypoints_xyz, palm_axes):
    """Return reference axes (..., 5, 3), palmar directions (..., 5, 3), signs (..., 5)."""
    palmar, thumb_side = palm_axes
    axes = _unit(keypoints_xyz[..., _REFERENCE_END, :] - keypoints_xyz[..., _REFERENCE_START, :])
    palmars = np.stack([palmar - thumb_side, palmar, palmar, palmar, palmar], axis=-2)
    lateral = cross(axes, _orthogonal_unit(palmars, axes))
    signs = np.where(_dot(lateral, thumb_side[..., None, :]) < 0.0, -1.0, 1.0)
    signs[..., 0] = 1.0
    return axes, palmars, signs


def _thumb_cmc_frame(keypoints_xyz, palmar):
    """Return the thumb CMC axes (u, r, p), each (..., 3), of checked keypoints."""
    u = _unit(keypoints_xyz[..., MIDDLE_MCP, :] - keypoints_xyz[..., WRIST, :])
    p = _orthogonal_unit(palmar, u)
    r = _orthogonal_unit(
        keypoints_xyz[..., INDEX_MCP, :] - keypoints_xyz[..., PINKY_MCP, :], u)
    return u, _orthogonal_unit(r, p), p


def _finger_frames(keypoints_xyz, handedness):
    """Return the FingerFrames of checked (..., 21, 3) keypoints."""
    palm_axes = _palm_axes(keypoints_xyz, handedness)
    return FingerFrames(*_finger_references(keypoints_xyz, palm_axes),
                        _thumb_cmc_frame(keypoints_xyz, palm_axes[0]))


class FingerAngles(typing.NamedTuple):
    """
    Angles of a hand (:func:`finger_angles`) with the frames they were measured in.

    Shapes are those of one hand; batched keypoints add the leading dimensions.
    """

    joint_angles: np.ndarray
    """(len(ANGLE_NAMES),) joint angles ordered like ANGLE_NAMES, radians."""
    hinge_twist: np.ndarray
    """(5, 2) out-of-plane angles of each finger's PIP and DIP (thumb: MCP and IP), radians."""
    frames: FingerFrames
    """The finger frames of the hand (what :func:`rebuild_fingers` rebuilds in)."""


def finger_angles(keypoints_xyz, handedness='right'):
    """
    Return the joint angles of a hand, the out-of-plane angles of its hinge joints and frames.

    :param keypoints_xyz: (21, 3) keypoints, metres, or (..., 21, 3) for several hands.
    :param handedness: 'left', 'right' or 'unknown' (treated as right); decides which side of
        the palm plane is palmar, hence the sign of flexion. Batched keypoints take one
        label or a sequence of labels shaped like their leading dimensions.
    :return: FingerAngles (joint angles, hinge twists, finger frames).
    """
    return _finger_angles(_check_keypoints(keypoints_xyz, batched=True), handedness)


def _finger_angles(keypoints_xyz, handedness):
    """Return the FingerAngles of checked (..., 21, 3) keypoints (NaN joints give NaN)."""
    frames = _finger_frames(keypoints_xyz, handedness)
    axes, palmars, signs, (u, r, p) = frames
    bones = _unit(keypoints_xyz[..., _CHAIN_JOINTS, :] - keypoints_xyz[..., _CHAIN_JOINTS - 1, :])
    flexion, out_of_plane = chain_angles(axes, palmars, bones)
    angles = np.empty((*keypoints_xyz.shape[:-2], _UNUSED + 1))
    angles[..., _FLEXION_ANGLE] = flexion
    angles[..., _ABDUCTION_ANGLE] = signs * out_of_plane[..., 0]
    # The thumb metacarpal on the CMC axes u, r, p: one (1, 3) x (3, 1) product per axis.
    thumb_u, thumb_r, thumb_p = np.moveaxis(
        (axes[..., 0, None, None, :] @ np.stack([u, r, p], axis=-2)[..., None])[..., 0, 0],
        -1, 0)
    angles[..., ANGLE_INDEX['thumb_cmc_abduction']] = np.arcsin(np.clip(thumb_p, -1.0, 1.0))
    angles[..., ANGLE_INDEX['thumb_cmc_flexion']] = (
        np.radians(THUMB_CMC_REST_SPLAY_DEG) - np.arctan2(thumb_r, thumb_u))
    return FingerAngles(angles[..., :_UNUSED], out_of_plane[..., 1:], frames)


def joint_angles(keypoints_xyz, handedness='right'):
    """
    Return the joint angles of a hand, ordered like ANGLE_NAMES (radians).

    :param keypoints_xyz: (21, 3) keypoints, metres, or (..., 21, 3) for several hands.
    :param handedness: 'left', 'right' or 'unknown' (treated as right); decides which side of
        the palm plane is palmar, hence the sign of flexion (batched: see finger_angles).
    :return: (len(ANGLE_NAMES),) float64 angles ((..., len(ANGLE_NAMES)) batched).
    """
    return finger_angles(keypoints_xyz, handedness).joint_angles


def bone_frames(keypoints_xyz):
    """
    Return the orientation of every joint as the frame of the bone ending at it.

    :param keypoints_xyz: (21, 3) keypoints, metres, or (..., 21, 3) for several hands.
    :return: (21, 3, 3) rotation matrices (columns x, y, z) ((..., 21, 3, 3) batched); see
        the module docstring.
    """
    return _bone_frames(_check_keypoints(keypoints_xyz, batched=True))


def _bone_frames(keypoints_xyz):
    """Return the bone frames of checked (..., 21, 3) keypoints (NaN joints give NaN)."""
    palm_rotation = _palm_rotation(keypoints_xyz)
    frames = np.empty((*keypoints_xyz.shape[:-2], NUM_JOINTS, 3, 3))
    frames[..., WRIST, :, :] = palm_rotation
    x_axes = _unit(keypoints_xyz[..., BONES[:, 1], :] - keypoints_xyz[..., BONES[:, 0], :])
    # Thumb bones keep the palm normal as z; finger bones keep the palm's y axis as y.
    reference = np.where(_IS_THUMB_BONE[:, None], palm_rotation[..., None, :, 2],
                         palm_rotation[..., None, :, 1])
    ortho = _orthogonal_unit(reference, x_axes)
    other = np.where(_IS_THUMB_BONE[:, None], cross(ortho, x_axes), cross(x_axes, ortho))
    y_axes = np.where(_IS_THUMB_BONE[:, None], other, ortho)
    z_axes = np.where(_IS_THUMB_BONE[:, None], ortho, other)
    frames[..., BONES[:, 1], :, :] = np.stack([x_axes, y_axes, z_axes], axis=-1)
    # The thumb can point a bone along the palm normal, where that reference turns about
    # the bone at once: its bones after the first carry their parent's frame instead, by
    # the smallest rotation that takes the parent's bone onto theirs.
    for parent, child in _THUMB_CHAIN:
        frames[..., child, :, :] = _smallest_rotation(
            frames[..., parent, :, 0], frames[..., child, :, 0]) @ frames[..., parent, :, :]
    return frames


class HandGeometry(typing.NamedTuple):
    """Bone frames and joint angles of a hand, NaN where its keypoints leave them undefined."""

    frames: np.ndarray
    """(21, 3, 3) bone frames (:func:`bone_frames`); a frame is NaN when a joint it is built
    from is missing or it is degenerate (see :func:`defined_geometry`)."""
    angles: np.ndarray
    """(len(ANGLE_NAMES),) joint angles, radians; NaN when the frame of a bone the angle is
    measured between is undefined."""


def defined_geometry(keypoints_xyz, handedness='right', angles=None):
    """
    Return the bone frames and joint angles of hands that may miss joints, NaN if undefined.

    A frame is undefined when a joint it is built from is missing (NaN) or when the keypoints
    make it degenerate to rounding error (a zero-length bone, collinear wrist and knuckles, a
    finger bone along the palm's y axis): it is then NaN instead of an arbitrary rotation.
    Every frame depends on the palm frame (wrist, index and little-finger MCPs). An angle is
    undefined when the frame of a bone it is measured between, or the palm's, is.

    :param keypoints_xyz: (21, 3) keypoints, metres, NaN for a missing joint, or
        (..., 21, 3) for several hands.
    :param handedness: as for :func:`finger_angles`.
    :param angles: (len(ANGLE_NAMES),) angles already measured on exactly these keypoints
        (e.g. by the filter's pose checks; (..., len(ANGLE_NAMES)) batched), used instead of
        measuring them again; None to measure them.
    :return: HandGeometry (fields batched like the keypoints).
    """
    keypoints_xyz = _check_keypoints(keypoints_xyz, batched=True, missing=True)
    with np.errstate(invalid='ignore'):
        frames = _bone_frames(keypoints_xyz)
        if angles is None:
            angles = _finger_angles(keypoints_xyz, handedness).joint_angles
    gram = np.swapaxes(frames, -1, -2) @ frames
    defined = np.all(np.abs(gram - np.eye(3)) < _FRAME_TOLERANCE, axis=(-2, -1)) \
        & (np.linalg.det(np.nan_to_num(frames)) > 0.0)
    frames = np.where(defined[..., None, None], frames, np.nan)
    angle_defined = defined[..., _ANGLE_FRAMES].all(axis=-1)
    return HandGeometry(frames, np.where(angle_defined, angles, np.nan))


def _smallest_rotation(a, b):
    """Return (..., 3, 3) the rotation by the least angle taking unit a onto unit b."""
    v, c = cross(a, b), _dot(a, b)
    skew = np.zeros((*v.shape[:-1], 3, 3))
    skew[..., 0, 1], skew[..., 0, 2], skew[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    skew = skew - np.swapaxes(skew, -1, -2)
    return np.eye(3) + skew + skew @ skew / np.maximum(1.0 + c, _EPS)[..., None, None]


def hinge_out_of_plane(keypoints_xyz, finger, handedness='right'):
    """
    Return the out-of-plane angles (2,) at a finger's hinge joints (PIP/DIP; thumb MCP/IP).

    Zero for an ideal hinge; :func:`rebuild_finger` can keep them to stay close to an
    observation. :func:`finger_angles` returns those of all fingers at once.
    """
    return finger_angles(keypoints_xyz, handedness)[1][finger]


def rebuild_fingers(keypoints_xyz, fingers, angles, bone_lengths_m, handedness='right',
                    hinge_twist=None, frames=None):
    """
    Return keypoints with finger chains rebuilt from joint angles and bone lengths.

    The palm (wrist, thumb CMC, finger MCPs) is kept; the joints of each listed finger are
    placed along the directions given by ``angles`` at the given bone lengths. PIP/DIP and
    thumb MCP/IP are pure hinges unless ``hinge_twist`` gives their out-of-plane angles
    (:func:`finger_angles`). This is the inverse of :func:`joint_angles`.

    :param keypoints_xyz: (21, 3) keypoints, metres.
    :param fingers: finger indices 0 (thumb) to 4 (little finger), each at most once.
    :param angles: (len(ANGLE_NAMES),) joint angles, radians.
    :param bone_lengths_m: (20,) bone lengths indexed like skeleton.BONES, metres.
    :param handedness: 'left', 'right' or 'unknown' (treated as right).
    :param hinge_twist: (len(fingers), 2) out-of-plane angles of the hinge joints, radians,
        or None.
    :param frames: the FingerFrames of these keypoints and handedness
        (``finger_angles(...).frames``) when already computed.
    :return: (21, 3) float64 keypoints.
    """
    out = _check_keypoints(keypoints_xyz).copy()
    fingers = np.asarray(fingers, dtype=np.int64).reshape(-1)
    # The appended zero is what the _UNUSED steps read.
    angles = np.append(np.asarray(angles, dtype=np.float64), 0.0)
    lengths = np.asarray(bone_lengths_m, dtype=np.float64)
    twist = (np.zeros((len(fingers), 2)) if hinge_twist is None
             else np.asarray(hinge_twist, dtype=np.float64).reshape(len(fingers), 2))
    axes, palmars, signs, (u, r, p) = (frames if frames is not None
                                       else _finger_frames(out, handedness))
    if np.any(fingers == 0):
        # The thumb's chain starts along the metacarpal placed by the CMC angles.
        axes = axes.copy()
        abduction = angles[ANGLE_INDEX['thumb_cmc_abduction']]
        swing = np.radians(THUMB_CMC_REST_SPLAY_DEG) - angles[ANGLE_INDEX['thumb_cmc_flexion']]
        axes[0] = (np.cos(abduction) * (np.cos(swing) * u + np.sin(swing) * r)
                   + np.sin(abduction) * p)
    out_of_plane = np.concatenate(
        [(signs * angles[_ABDUCTION_ANGLE])[fingers, None], twist], axis=1)
    directions = directions_from_angles(
        axes[fingers], palmars[fingers], angles[_FLEXION_ANGLE[fingers]], out_of_plane)
    joints = _CHAIN_JOINTS[fingers]
    # Bone b ends at joint b + 1, so the bone ending at joint j has index j - 1.
    for step in range(joints.shape[1]):
        joint = joints[:, step]
        out[joint] = out[joint - 1] + lengths[joint - 1, None] * directions[:, step]
    return out


def rebuild_finger(keypoints_xyz, finger, angles, bone_lengths_m, handedness='right',
                   hinge_twist=None):
    """
    Return keypoints with one finger chain rebuilt (:func:`rebuild_fingers` for one finger).

    :param keypoints_xyz: (21, 3) keypoints, metres.
    :param finger: finger index 0 (thumb) to 4 (little finger).
    :param angles: (len(ANGLE_NAMES),) joint angles, radians.
    :param bone_lengths_m: (20,) bone lengths indexed like skeleton.BONES, metres.
    :param handedness: 'left', 'right' or 'unknown' (treated as right).
    :param hinge_twist: (2,) out-of-plane angles of the hinge joints, radians, or None.
    :return: (21, 3) float64 keypoints.
    """
    return rebuild_fingers(keypoints_xyz, [finger], angles, bone_lengths_m, handedness,
                           None if hinge_twist is None else [hinge_twist])


def hand_from_angles(angles=None, bone_lengths_m=None, handedness='right'):
    """
    Return a constructed hand in its own palm frame (wrist at the origin).

    The palm is a flat template (x distal, y towards the little finger, z palmar on a right
    hand; a left hand is its mirror image in y), fingers follow :func:`rebuild_fingers`.

    :param angles: (len(ANGLE_NAMES),) radians; None uses REST_ANGLES_DEG.
    :param bone_lengths_m: (20,) metres; None uses skeleton.MEAN_BONE_LENGTHS_MM.
    :param handedness: 'left' or 'right'.
    :return: (21, 3) float64 keypoints, metres.
    """
    if handedness not in ('left', 'right'):
        raise ValueError(f"handedness must be 'left' or 'right', got {handedness!r}")
    if angles is None:
        angles = np.radians([REST_ANGLES_DEG[name] for name in ANGLE_NAMES])
    angles = np.asarray(angles, dtype=np.float64)
    if angles.shape != (len(ANGLE_NAMES),):
        raise ValueError(f'angles must have shape ({len(ANGLE_NAMES)},), got {angles.shape}')
    if bone_lengths_m is None:
        bone_lengths_m = MEAN_BONE_LENGTHS_MM / 1000.0
    bone_lengths_m = np.asarray(bone_lengths_m, dtype=np.float64)
    if bone_lengths_m.shape != (len(BONES),) or np.any(bone_lengths_m <= 0):
        raise ValueError('bone_lengths_m must be 20 positive lengths')
    keypoints = np.zeros((NUM_JOINTS, 3))
    for finger, fan_deg in zip(range(1, 5), _MCP_FAN_DEG):
        fan = np.radians(fan_deg)
        mcp = FINGER_JOINTS[finger, 0]
        keypoints[mcp] = bone_lengths_m[mcp - 1] * np.array([np.cos(fan), -np.sin(fan), 0.0])
    side, palmar = np.radians(_THUMB_CMC_DIRECTION_DEG)
    keypoints[1] = bone_lengths_m[0] * np.array(
        [np.cos(palmar) * np.cos(side), -np.cos(palmar) * np.sin(side), np.sin(palmar)])
    keypoints = rebuild_fingers(keypoints, range(5), angles, bone_lengths_m)
    if handedness == 'left':
        keypoints[:, 1] *= -1.0
    return keypoints
