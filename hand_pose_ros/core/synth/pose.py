"""Posed hands: wrist pose, forearm, rotation sampling and interpolation."""

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.synth.hand_model import (
    Articulation, hand_capsules, hand_keypoints, HandShape, local_keypoints, rotation_x,
    rotation_z, UPPER_ARM_WIDENING)


@dataclass(frozen=True)
class HandPose:
    """
    One hand placed in the camera frame.

    :param shape: :class:`HandShape`.
    :param articulation: :class:`Articulation`.
    :param rotation: (3, 3) camera-from-hand rotation.
    :param translation: (3,) wrist position, camera frame, metres.
    :param wrist_bend_deg: (2,) wrist flexion and radial deviation of the forearm, degrees.
    :param forearm_length_m: length of the visible forearm.
    :param upper_arm_length_m: length of the arm beyond the elbow (upper arm, continuing
        towards the shoulder out of view); 0 leaves the forearm alone (e.g. when a body in
        the scene carries the upper arm).
    :param upper_arm_lift: how much the upper arm turns away from the camera at the elbow
        (added to the forearm direction's depth component before normalising).
    """

    shape: HandShape
    articulation: Articulation
    rotation: np.ndarray
    translation: np.ndarray
    wrist_bend_deg: tuple = (0.0, 0.0)
    forearm_length_m: float = 0.26
    upper_arm_length_m: float = 0.6
    upper_arm_lift: float = 0.6

    @cached_property
    def keypoints_xyz(self):
        """Return (21, 3) float64 keypoints, camera frame, metres."""
        return hand_keypoints(self.shape, self.articulation, self.rotation, self.translation)

    @property
    def forearm_direction(self):
        """Return the (3,) unit vector from the wrist towards the elbow, camera frame."""
        flexion, deviation = np.radians(np.asarray(self.wrist_bend_deg, dtype=np.float64))
        local = rotation_x(-flexion) @ rotation_z(deviation) @ np.array([0.0, -1.0, 0.0])
        local[0] *= self.shape.mirror
        return np.asarray(self.rotation) @ local

    @property
    def elbow_xyz(self):
        """Return the (3,) elbow position (forearm end), camera frame, metres."""
        return np.asarray(self.translation) + self.forearm_length_m * self.forearm_direction

    @property
    def upper_arm_direction(self):
        """Return the (3,) unit vector from the elbow towards the shoulder, camera frame."""
        forearm = self.forearm_direction
        direction = forearm + np.array([0.0, 0.0, self.upper_arm_lift])
        norm = np.linalg.norm(direction)
        return forearm if norm < 1e-6 else direction / norm

    @cached_property
    def capsules(self):
        """Return the hand's round cones (see :func:`hand_capsules`), computed once."""
        return hand_capsules(self.shape, self.keypoints_xyz, self.rotation,
                             self.forearm_direction, self.forearm_length_m,
                             self.upper_arm_length_m * self.upper_arm_direction)

    def local_palm_center(self):
        """Return the (3,) palm centre in the (mirrored) hand frame."""
        return skeleton.palm_center(local_keypoints(self.shape, self.articulation))


def random_rotation(rng):
    """Return a (3, 3) rotation drawn uniformly from SO(3)."""
    return matrix_from_quaternion(_normalise(rng.normal(size=4)))


def _normalise(q):
    return q / np.linalg.norm(q)


def matrix_from_quaternion(q):
    """Return the (3, 3) rotation of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def quaternion_from_matrix(rotation):
    """Return the unit quaternion (w, x, y, z), w >= 0, of a (3, 3) rotation."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(m)
    candidates = np.array([trace, m[0, 0], m[1, 1], m[2, 2]])
    k = int(np.argmax(candidates))
    if k == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = np.array([0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s,
                      (m[1, 0] - m[0, 1]) / s])
    else:
        i, j, n = k - 1, k % 3, (k + 1) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[n, n])
        q = np.empty(4)
        q[0] = (m[n, j] - m[j, n]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + n] = (m[n, i] + m[i, n]) / s
    q = _normalise(q)
    return q if q[0] >= 0 else -q


def slerp(rotation_a, rotation_b, weight):
    """Return the rotation a fraction ``weight`` of the way from a to b (shortest arc)."""
    qa, qb = quaternion_from_matrix(rotation_a), quaternion_from_matrix(rotation_b)
    dot = float(np.dot(qa, qb))
    if dot < 0:
        qb, dot = -qb, -dot
    if dot > 0.9995:
        return matrix_from_quaternion(_normalise(qa + weight * (qb - qa)))
    theta = np.arccos(dot)
    q = (np.sin((1 - weight) * theta) * qa + np.sin(weight * theta) * qb) / np.sin(theta)
    return matrix_from_quaternion(_normalise(q))


def rotation_about_axis(axis, angle_rad):
    """Return the (3, 3) rotation by ``angle_rad`` about a unit ``axis``."""
    axis = _normalise(np.asarray(axis, dtype=np.float64))
    half = 0.5 * angle_rad
    return matrix_from_quaternion(np.concatenate([[np.cos(half)], np.sin(half) * axis]))


@dataclass(frozen=True)
class WristPoseConfig:
    """
    Where hands are placed.

    :param distance_range_m: range of the palm centre's depth.
    :param margin: fraction of the image kept free at each border for the palm centre.
    :param out_of_frame_prob: probability that the palm centre may lie near or past a border.
    :param facing_prob: probability of a palm facing towards or away from the camera (within
        ``facing_cone_deg``) instead of a uniformly random orientation.
    :param facing_cone_deg: tilt range of facing palms.
    :param max_arm_towards_camera: largest z component of the direction from the elbow to the
        wrist (the arm comes from the body, rarely straight at the camera).
    :param wrist_flexion_deg: range of wrist flexion.
    :param wrist_deviation_deg: range of radial (+) / ulnar (-) deviation.
    :param forearm_length_m: range of the visible forearm length.
    :param upper_arm_lift: :attr:`HandPose.upper_arm_lift` of sampled poses (fixed: the arm's
        variety comes from the forearm direction, and the random stream stays that of poses
        without upper arms, so seeded scenes keep their hand placements).
    :param upper_arm_length_m: (shortest, longest) arm beyond the elbow: it runs on until
        it leaves the image (the user's body is out of view), at most the longest.
    """

    distance_range_m: tuple = (0.2, 1.5)
    margin: float = 0.12
    out_of_frame_prob: float = 0.1
    facing_prob: float = 0.5
    facing_cone_deg: float = 45.0
    max_arm_towards_camera: float = 0.6
    wrist_flexion_deg: tuple = (-50.0, 60.0)
    wrist_deviation_deg: tuple = (-30.0, 20.0)
    forearm_length_m: tuple = (0.22, 0.32)
    upper_arm_lift: float = 0.6
    upper_arm_length_m: tuple = (0.28, 1.2)

    def __post_init__(self):
        lo, hi = self.distance_range_m
        if not 0.05 <= lo <= hi:
            raise ValueError(f'distance_range_m must be increasing and >= 0.05 m, got '
                             f'{self.distance_range_m}')
        if not 0 <= self.margin < 0.5:
            raise ValueError(f'margin must be in [0, 0.5), got {self.margin}')


def sample_orientation(rng, config):
    """Draw a camera-from-hand rotation: facing the camera (palm or back) or uniform."""
    if rng.random() >= config.facing_prob:
        return random_rotation(rng)
    # Palm normal (+z of the hand) along -z (palm towards the camera) or +z (away).
    towards = rng.random() < 0.5
    base = np.diag([1.0, -1.0, -1.0]) if towards else np.eye(3)
    azimuth = rng.uniform(0, 2 * np.pi)
    tilt_axis = np.array([np.cos(azimuth), np.sin(azimuth), 0.0])
    tilt = rotation_about_axis(tilt_axis, np.radians(rng.uniform(0, config.facing_cone_deg)))
    roll = rotation_z(rng.uniform(-np.pi, np.pi))
    return tilt @ roll @ base


def sample_hand_pose(rng, shape, articulation, intrinsics, config=WristPoseConfig(),
                     distance_m=None, center_uv=None):
    """
    Draw a wrist pose that puts the palm centre at a random pixel and depth.

    :param rng: ``numpy.random.Generator``.
    :param shape: :class:`HandShape`.
    :param articulation: :class:`Articulation`.
    :param intrinsics: :class:`CameraIntrinsics` of the full image.
    :param config: :class:`WristPoseConfig`.
    :param distance_m: palm-centre depth; drawn from ``config.distance_range_m`` when None.
    :param center_uv: (2,) palm-centre pixel; drawn when None.
    :return: :class:`HandPose`.
    """
    if not isinstance(intrinsics, CameraIntrinsics):
        raise ValueError('intrinsics must be a CameraIntrinsics')
    if distance_m is None:
        distance_m = rng.uniform(*config.distance_range_m)
    if center_uv is None:
        margin = -0.1 if rng.random() < config.out_of_frame_prob else config.margin
        center_uv = (rng.uniform(margin, 1 - margin) * intrinsics.width,
                     rng.uniform(margin, 1 - margin) * intrinsics.height)
    u, v = center_uv
    palm = np.array([(u - intrinsics.cx) / intrinsics.fx * distance_m,
                     (v - intrinsics.cy) / intrinsics.fy * distance_m, distance_m])
    pose = None
    for _ in range(50):
        rotation = sample_orientation(rng, config)
        bend = (rng.uniform(*config.wrist_flexion_deg), rng.uniform(*config.wrist_deviation_deg))
        length = rng.uniform(*config.forearm_length_m)
        pose = HandPose(shape, articulation, rotation, np.zeros(3), bend, length)
        if -pose.forearm_direction[2] <= config.max_arm_towards_camera:
            break
    translation = palm - pose.rotation @ pose.local_palm_center()
    pose = HandPose(shape, articulation, pose.rotation, translation, pose.wrist_bend_deg,
                    pose.forearm_length_m, upper_arm_lift=config.upper_arm_lift)
    return replace(pose, upper_arm_length_m=_arm_leaving_image(
        pose.elbow_xyz, pose.upper_arm_direction, intrinsics, config.upper_arm_length_m,
        pose.shape.forearm_radii_m[1] * UPPER_ARM_WIDENING))


def _arm_leaving_image(elbow, direction, intrinsics, length_range_m, radius_m):
    """
    Return the upper arm length that takes the arm out of the image.

    Real arms enter the image from its border (or from a body in view); a synthetic arm
    ending in mid-air would teach a localiser cues that do not exist on real frames.

    :param elbow: (3,) elbow, camera frame.
    :param direction: (3,) unit vector from the elbow towards the shoulder.
    :param intrinsics: :class:`CameraIntrinsics` of the full image.
    :param length_range_m: (shortest, longest) length returned.
    :param radius_m: arm radius (the arm must leave by more than its radius).
    :return: float metres.
    """
    shortest, longest = length_range_m
    lengths = np.arange(shortest, longest + 1e-9, 0.02)
    points = elbow + lengths[:, None] * direction
    z = points[:, 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        # Lateral margin (pixels) the arm's radius takes at each point's depth.
        margin = radius_m * intrinsics.fx / z
        u = intrinsics.fx * points[:, 0] / z + intrinsics.cx
        v = intrinsics.fy * points[:, 1] / z + intrinsics.cy
        outside = (z <= 0.05) | (u < -margin) | (u > intrinsics.width + margin) \
            | (v < -margin) | (v > intrinsics.height + margin)
    if not outside.any():
        return float(longest)
    return float(lengths[int(np.argmax(outside))])
