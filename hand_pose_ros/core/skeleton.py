"""
Canonical 21-joint hand skeleton (MediaPipe / FreiHAND order) and anatomy facts.

This module is the single source of truth for joint names, parents, bones, finger and
palm groups, dataset joint layouts and the anatomical numbers used by the synthetic
engine and the filters (see shared reference: anatomy section).
"""

from dataclasses import dataclass

import numpy as np

FINGERS = ('thumb', 'index', 'middle', 'ring', 'pinky')

JOINT_NAMES = (
    'wrist',
    'thumb_cmc', 'thumb_mcp', 'thumb_ip', 'thumb_tip',
    'index_mcp', 'index_pip', 'index_dip', 'index_tip',
    'middle_mcp', 'middle_pip', 'middle_dip', 'middle_tip',
    'ring_mcp', 'ring_pip', 'ring_dip', 'ring_tip',
    'pinky_mcp', 'pinky_pip', 'pinky_dip', 'pinky_tip',
)
NUM_JOINTS = len(JOINT_NAMES)
WRIST = 0

# FINGER_JOINTS[f] lists the four joints of finger f from base to tip.
FINGER_JOINTS = np.array([[1 + 4 * f + k for k in range(4)] for f in range(5)], dtype=np.int64)
FINGERTIPS = FINGER_JOINTS[:, 3].copy()
MCPS = np.array([2, 5, 9, 13, 17], dtype=np.int64)  # thumb MCP and the four finger MCPs
# Palm group (CrossInfoNet palm branch for 21-joint layouts): wrist + the five MCPs.
PALM_JOINTS = np.array([0, 2, 5, 9, 13, 17], dtype=np.int64)
FINGER_GROUP_JOINTS = np.array(
    [j for j in range(NUM_JOINTS) if j not in set(PALM_JOINTS.tolist())], dtype=np.int64)

PARENTS = np.array(
    [-1] + [WRIST if k == 0 else 1 + 4 * f + k - 1 for f in range(5) for k in range(4)],
    dtype=np.int64)
# BONES[b] = (parent joint, child joint); bone b ends at joint b + 1.
BONES = np.array([(int(PARENTS[j]), j) for j in range(1, NUM_JOINTS)], dtype=np.int64)
NUM_BONES = len(BONES)
FINGER_OF_JOINT = np.array([-1] + [f for f in range(5) for _ in range(4)], dtype=np.int64)

# Mean bone lengths of a statistical adult hand model, millimetres, indexed like BONES.
MEAN_BONE_LENGTHS_MM = np.array([
    38.6, 30.8, 27.1, 34.7,   # wrist->thumb CMC, CMC->MCP, MCP->IP, IP->tip
    90.6, 33.0, 22.2, 23.6,   # wrist->index MCP, proximal, middle, distal
    94.7, 31.7, 23.3, 26.5,   # middle
    86.1, 28.8, 24.8, 24.4,   # ring
    81.8, 21.1, 18.9, 19.1,   # pinky
], dtype=np.float64)

# Hand length (wrist crease to middle fingertip) and knuckle breadth, millimetres.
HAND_LENGTH_MM_TYPICAL = (159.0, 205.0)
HAND_LENGTH_MM_HARD = (140.0, 230.0)
HAND_BREADTH_MM = (70.0, 95.0)
INDEX_TO_PINKY_MCP_MM = 67.0


@dataclass(frozen=True)
class JointLimitsDeg:
    """Joint angle limits in degrees (flexion positive, hyperextension negative)."""

    mcp_flexion: tuple = (-35.0, 90.0)
    pip_flexion: tuple = (0.0, 110.0)
    dip_flexion: tuple = (0.0, 90.0)
    mcp_abduction: tuple = (-20.0, 20.0)
    thumb_cmc_abduction: tuple = (0.0, 70.0)
    thumb_cmc_flexion: tuple = (-20.0, 50.0)
    thumb_mcp_flexion: tuple = (0.0, 50.0)
    thumb_ip_flexion: tuple = (-20.0, 80.0)
    dip_pip_ratio: float = 2.0 / 3.0


JOINT_LIMITS_DEG = JointLimitsDeg()
# Thumb CMC flexion zero: the thumb metacarpal swung this far from the middle metacarpal
# towards the thumb side, in the palm plane (synthetic hand model and kinematics convention).
THUMB_CMC_REST_SPLAY_DEG = 50.0

# Motion facts for gates at 30 Hz (metres per second, metres per second squared).
MAX_PALM_SPEED_M_S = 3.0
MAX_FINGERTIP_REL_SPEED_M_S = 5.0
MAX_ACCELERATION_M_S2 = 50.0


@dataclass(frozen=True)
class JointLayout:
    """
    A dataset's joint order and how it maps onto the canonical order.

    :param name: layout name.
    :param num_joints: number of joints in the dataset's own order.
    :param to_canonical: (21,) index into the dataset joints for each canonical joint,
        -1 where the dataset has no equivalent joint.
    """

    name: str
    num_joints: int
    to_canonical: tuple

    @property
    def canonical_mask(self):
        """Return a (21,) bool mask of the canonical joints this layout provides."""
        return np.asarray(self.to_canonical) >= 0

    def canonical_from_layout(self, joints):
        """Reorder (..., num_joints, C) joints into (..., 21, C); missing joints become NaN."""
        joints = np.asarray(joints, dtype=np.float64)
        if joints.shape[-2] != self.num_joints:
            raise ValueError(
                f'{self.name} layout expects {self.num_joints} joints, got {joints.shape[-2]}')
        index = np.asarray(self.to_canonical)
        out = joints[..., np.maximum(index, 0), :].copy()
        out[..., index < 0, :] = np.nan
        return out


LAYOUTS = {
    'canonical': JointLayout('canonical', 21, tuple(range(21))),
    # HANDS2017 / BigHand / FPHA: wrist, 5 MCPs, then PIP, DIP, tip per finger.
    'hands2017': JointLayout(
        'hands2017', 21,
        (0, 1, 6, 7, 8, 2, 9, 10, 11, 3, 12, 13, 14, 4, 15, 16, 17, 5, 18, 19, 20)),
    # MSRA: wrist, index, middle, ring, little (4 each), thumb last.
    'msra': JointLayout(
        'msra', 21,
        (0, 17, 18, 19, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)),
    # ICVL: palm, then root/mid/tip per finger (thumb root ~ thumb MCP); no wrist joint.
    'icvl': JointLayout(
        'icvl', 16,
        (-1, -1, 1, 2, 3, 4, -1, 5, 6, 7, -1, 8, 9, 10, -1, 11, 12, 13, -1, 14, 15)),
    # NYU-14 evaluation subset: tips and mids per finger, thumb root, wrist (12).
    'nyu14': JointLayout(
        'nyu14', 14,
        (12, -1, 10, 9, 8, -1, 7, -1, 6, -1, 5, -1, 4, -1, 3, -1, 2, -1, 1, -1, 0)),
}
for _alias in ('bighand', 'fpha'):
    LAYOUTS[_alias] = LAYOUTS['hands2017']

# NYU-14 joints as indices into the 36 NYU labels.
NYU14_FROM_NYU36 = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)


def bone_lengths(keypoints_xyz):
    """Return (..., 20) bone lengths of (..., 21, 3) keypoints, in the keypoints' unit."""
    keypoints_xyz = np.asarray(keypoints_xyz)
    return np.linalg.norm(
        keypoints_xyz[..., BONES[:, 1], :] - keypoints_xyz[..., BONES[:, 0], :], axis=-1)


# Wrist and the middle finger's joints, base to tip: the chain of hand_length.
MIDDLE_CHAIN = np.array([WRIST, *FINGER_JOINTS[2].tolist()])


def hand_length(keypoints_xyz):
    """Return (...,) wrist-to-middle-fingertip length along the middle finger chain."""
    keypoints_xyz = np.asarray(keypoints_xyz)
    segments = keypoints_xyz[..., MIDDLE_CHAIN[1:], :] - keypoints_xyz[..., MIDDLE_CHAIN[:-1], :]
    return np.sqrt((segments * segments).sum(axis=-1)).sum(axis=-1)


def palm_center(keypoints_xyz):
    """Return (..., 3) palm centre: mean of the wrist and the four finger MCPs."""
    keypoints_xyz = np.asarray(keypoints_xyz)
    return keypoints_xyz[..., [0, 5, 9, 13, 17], :].mean(axis=-2)
