"""
Handedness (left or right) from palm orientation and thumb side, smoothed over time.

The palm normal ``n = (index_mcp - wrist) x (pinky_mcp - wrist)`` is palmar on a right hand
and dorsal on a left hand (mirror images), so deciding which side of the palm plane is
palmar decides handedness. Evidence for the palmar side: flexed fingers and the opposed thumb
lie on the palmar side of the palm plane; optionally, a camera prior says which side of the
palm faces the camera. A flat hand seen edge-on carries no evidence, which is why the
estimate is smoothed over time and reported as 'unknown' while weak.
"""

import math

import numpy as np

from hand_pose_ros.core.kinematics import palm_normal
from hand_pose_ros.core.skeleton import (
    BONES, FINGER_JOINTS, hand_length, MEAN_BONE_LENGTHS_MM, MIDDLE_CHAIN, palm_center, WRIST)

_CURL_JOINTS = np.concatenate([FINGER_JOINTS[0, 2:], FINGER_JOINTS[1:, 1:].ravel()])
# What the palm centre and normal are built from: the wrist and the four finger MCPs.
_PALM_JOINTS = np.array([WRIST, *FINGER_JOINTS[1:, 0].tolist()])
# Mean hand length (wrist to middle fingertip) per wrist-to-middle-MCP length.
_MIDDLE_BONES = np.isin(BONES[:, 1], MIDDLE_CHAIN[1:])
_LENGTH_PER_MIDDLE_METACARPAL = float(
    MEAN_BONE_LENGTHS_MM[_MIDDLE_BONES].sum()
    / MEAN_BONE_LENGTHS_MM[BONES[:, 1] == MIDDLE_CHAIN[1]][0])
# Palmar offset of the curl joints (fraction of hand length) that counts as full evidence.
_FULL_EVIDENCE_OFFSET = 0.08
_CAMERA_PRIOR_WEIGHT = 0.5


def has_evidence(present):
    """Return whether joints ``present`` (21,) bool carry evidence: palm and a curl joint."""
    present = np.asarray(present, dtype=bool)
    return bool(present[_PALM_JOINTS].all() and present[_CURL_JOINTS].any())


def handedness_evidence(keypoints_xyz, camera_prior='none', present=None):
    """
    Return the evidence in [-1, 1] that a hand is right (+) or left (-).

    :param keypoints_xyz: (21, 3) keypoints in the camera optical frame (z forward), metres.
    :param camera_prior: 'none', 'palm_facing_camera' or 'back_facing_camera'.
    :param present: (21,) bool joints to use (None: all); they must satisfy
        :func:`has_evidence`. Without the whole middle finger, the hand length is taken
        from the wrist-to-middle-knuckle bone.
    :return: float; the magnitude is the confidence of this single frame.
    """
    keypoints_xyz = np.asarray(keypoints_xyz, dtype=np.float64)
    present = np.ones(len(keypoints_xyz), bool) if present is None else np.asarray(present)
    if not has_evidence(present):
        raise ValueError('handedness evidence needs the wrist, the four finger MCPs and at '
                         'least one finger joint beyond them')
    known = np.where(present[:, None], keypoints_xyz, 0.0)
    origin, normal = palm_center(known), palm_normal(known)
    curl = _CURL_JOINTS[present[_CURL_JOINTS]]
    offsets = (keypoints_xyz[curl] - origin) @ normal
    if present[MIDDLE_CHAIN].all():
        scale = float(hand_length(keypoints_xyz))
    else:
        scale = _LENGTH_PER_MIDDLE_METACARPAL * float(
            np.linalg.norm(keypoints_xyz[MIDDLE_CHAIN[1]] - keypoints_xyz[WRIST]))
    evidence = math.tanh(float(offsets.mean()) / (max(scale, 1e-6) * _FULL_EVIDENCE_OFFSET))
    if camera_prior != 'none':
        towards_camera = -origin / max(np.linalg.norm(origin), 1e-9)
        facing = float(normal @ towards_camera)
        sign = 1.0 if camera_prior == 'palm_facing_camera' else -1.0
        evidence = (1.0 - _CAMERA_PRIOR_WEIGHT) * evidence + _CAMERA_PRIOR_WEIGHT * sign * facing
    return min(max(evidence, -1.0), 1.0)


class HandednessEstimator:
    """
    Exponentially smoothed handedness of one track.

    :param config: HandednessConfig (time_constant_s, min_confidence, camera_prior).
    """

    def __init__(self, config):
        self.config = config
        self.reset()

    def reset(self):
        """Forget the evidence."""
        self.value = 0.0
        self.stamp_s = None

    def update(self, stamp_s, keypoints_xyz, present=None):
        """
        Add the evidence of one frame and return the label.

        :param present: (21,) bool joints observed (None: all); see :func:`has_evidence`.
        """
        evidence = handedness_evidence(keypoints_xyz, self.config.camera_prior, present)
        if self.stamp_s is None or self.config.time_constant_s == 0.0:
            self.value = evidence
        else:
            keep = np.exp(-max(stamp_s - self.stamp_s, 0.0) / self.config.time_constant_s)
            self.value = keep * self.value + (1.0 - keep) * evidence
        self.stamp_s = stamp_s
        return self.label

    @property
    def label(self):
        """Return the estimated side: 'right', 'left' or 'unknown'."""
        if abs(self.value) < self.config.min_confidence:
            return 'unknown'
        return 'right' if self.value > 0 else 'left'

    @property
    def confidence(self):
        """Return the smoothed confidence in [0, 1]."""
        return abs(self.value)

    @property
    def reported(self):
        """
        Return (side, confidence) as published.

        The assumed side (confidence 1) when one is configured, else the estimate. The
        anatomy checks keep the estimate (:attr:`label`), so a hand of the other side is
        not repaired into the assumed one.
        """
        if self.config.assume != 'none':
            return self.config.assume, 1.0
        return self.label, self.confidence
