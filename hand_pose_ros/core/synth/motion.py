"""
Smooth hand motion sequences: wrist trajectories and posture transitions.

The wrist moves between random targets along minimum-jerk segments (peak speed = 1.875 x
distance / duration), so speed is smooth and its peak per segment is chosen directly: mostly
0.05-1.5 m/s, sometimes a fast move up to ``max_speed_m_s``, sometimes a hold. Orientation
(slerp), articulation and wrist bend follow the same minimum-jerk profile.
"""

from dataclasses import dataclass

import numpy as np

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.synth.hand_model import (
    ArticulationConfig, HandShape, HandShapeConfig, sample_articulation, sample_hand_shape)
from hand_pose_ros.core.synth.pose import (
    HandPose, rotation_about_axis, sample_hand_pose, slerp, WristPoseConfig)

# Peak speed of a minimum-jerk move divided by its mean speed.
MIN_JERK_PEAK_FACTOR = 1.875


def min_jerk(progress):
    """Return the minimum-jerk position profile s(tau) for tau in [0, 1]."""
    tau = np.clip(progress, 0.0, 1.0)
    return tau ** 3 * (10.0 - 15.0 * tau + 6.0 * tau ** 2)


@dataclass(frozen=True)
class MotionConfig:
    """
    Motion statistics.

    :param speed_range_m_s: range (log-uniform) of ordinary segment peak wrist speeds.
    :param fast_prob: probability of a fast segment (peak speed up to ``max_speed_m_s``).
    :param hold_prob: probability of a segment where the wrist stays still.
    :param segment_s: range of segment durations.
    :param max_turn_deg: largest rotation of the hand over one segment.
    :param posture_change_prob: probability that a segment moves to a new articulation.
    :param distance_range_m: palm-centre depth range of the targets.
    :param margin: image fraction kept free at each border for the palm-centre targets.
    """

    speed_range_m_s: tuple = (0.05, 1.5)
    fast_prob: float = 0.08
    hold_prob: float = 0.15
    segment_s: tuple = (0.3, 1.5)
    max_turn_deg: float = 70.0
    posture_change_prob: float = 0.7
    distance_range_m: tuple = (0.3, 0.9)
    margin: float = 0.2


@dataclass(frozen=True)
class MotionSequence:
    """
    A hand moving in front of a fixed camera.

    :param stamps_s: (T,) float64 timestamps, seconds.
    :param joints_xyz: (T, 21, 3) float64 keypoints, camera frame, metres.
    :param handedness: 'left' or 'right'.
    :param shape: :class:`HandShape` (constant over the sequence).
    :param poses: tuple of T :class:`HandPose` (what rendering needs).
    :param wrist_speed_m_s: (T,) wrist speed by finite differences (0 at the first frame).
    """

    stamps_s: np.ndarray
    joints_xyz: np.ndarray
    handedness: str
    shape: HandShape
    poses: tuple
    wrist_speed_m_s: np.ndarray

    def __len__(self):
        return len(self.stamps_s)


def _segment_speed(rng, config, max_speed_m_s):
    draw = rng.random()
    if draw < config.hold_prob:
        return 0.0
    if draw < config.hold_prob + config.fast_prob and max_speed_m_s > config.speed_range_m_s[1]:
        return rng.uniform(config.speed_range_m_s[1], max_speed_m_s)
    lo, hi = config.speed_range_m_s
    hi = min(hi, max_speed_m_s)
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo)))))


def generate_motion(num_frames, fps=30.0, seed=0, max_speed_m_s=1.5, intrinsics=None,
                    handedness=None, config=MotionConfig(),
                    articulation_config=ArticulationConfig(), shape_config=HandShapeConfig()):
    """
    Generate a smooth hand motion sequence.

    :param num_frames: number of frames T (>= 1).
    :param fps: frame rate, Hz.
    :param seed: random seed; the same seed gives the same sequence.
    :param max_speed_m_s: largest wrist speed of fast moves.
    :param intrinsics: :class:`CameraIntrinsics` whose view the hand stays in (mostly);
        the SR300 preset when None.
    :param handedness: 'left', 'right' or None (random).
    :param config: :class:`MotionConfig`.
    :param articulation_config: :class:`ArticulationConfig` for the postures.
    :param shape_config: :class:`HandShapeConfig`.
    :return: :class:`MotionSequence`.
    """
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f'num_frames must be a positive integer, got {num_frames!r}')
    if not fps > 0:
        raise ValueError(f'fps must be positive, got {fps!r}')
    if not max_speed_m_s > 0:
        raise ValueError(f'max_speed_m_s must be positive, got {max_speed_m_s!r}')
    if intrinsics is None:
        intrinsics = CameraIntrinsics.from_preset('sr300')
    num_frames = int(num_frames)
    rng = np.random.default_rng(seed)
    shape = sample_hand_shape(rng, handedness, shape_config)
    pose_config = WristPoseConfig(distance_range_m=config.distance_range_m,
                                  margin=config.margin, out_of_frame_prob=0.0)

    def palm_target():
        return (rng.uniform(config.margin, 1 - config.margin) * intrinsics.width,
                rng.uniform(config.margin, 1 - config.margin) * intrinsics.height,
                rng.uniform(*config.distance_range_m))

    def palm_xyz(u, v, z):
        return np.array([(u - intrinsics.cx) / intrinsics.fx * z,
                         (v - intrinsics.cy) / intrinsics.fy * z, z])

    u, v, z = palm_target()
    start = sample_hand_pose(rng, shape, sample_articulation(rng, articulation_config),
                             intrinsics, pose_config, distance_m=z, center_uv=(u, v))
    stamps = np.arange(num_frames) / float(fps)
    poses = []
    t0 = 0.0
    while len(poses) < num_frames:
        speed = _segment_speed(rng, config, max_speed_m_s)
        duration = rng.uniform(*config.segment_s)
        target_palm = palm_xyz(*palm_target())
        turn = rotation_about_axis(rng.normal(size=3),
                                   np.radians(rng.uniform(0, config.max_turn_deg)))
        target_art = start.articulation
        if rng.random() < config.posture_change_prob:
            target_art = sample_articulation(rng, articulation_config)
        bend = np.clip(np.array(start.wrist_bend_deg) + rng.normal(0, 15, 2),
                       pose_config.wrist_flexion_deg[0], pose_config.wrist_flexion_deg[1])
        target = HandPose(shape, target_art, turn @ start.rotation, np.zeros(3), tuple(bend),
                          start.forearm_length_m)
        if -target.forearm_direction[2] > pose_config.max_arm_towards_camera:
            # The arm comes from the body: keep the orientation rather than aim it at the lens.
            target = HandPose(shape, target_art, start.rotation, np.zeros(3), tuple(bend),
                              start.forearm_length_m)
        step = target_palm - target.rotation @ target.local_palm_center() - start.translation
        # Peak wrist speed is exactly `speed`: shorten the move, or its duration when the
        # target is nearer than the move would go (never overshoot the in-view target).
        length = float(np.linalg.norm(step))
        distance = speed * duration / MIN_JERK_PEAK_FACTOR
        if distance > length:
            duration = max(MIN_JERK_PEAK_FACTOR * length / speed, 1.0 / fps)
            distance = length
        step *= distance / max(length, 1e-12)
        target = HandPose(shape, target_art, target.rotation, start.translation + step,
                          target.wrist_bend_deg, target.forearm_length_m)
        end_time = t0 + duration
        while len(poses) < num_frames and stamps[len(poses)] < end_time:
            s = float(min_jerk((stamps[len(poses)] - t0) / duration))
            poses.append(HandPose(
                shape, start.articulation.lerp(target.articulation, s),
                slerp(start.rotation, target.rotation, s),
                (1 - s) * start.translation + s * target.translation,
                tuple((1 - s) * np.array(start.wrist_bend_deg) + s * bend),
                start.forearm_length_m))
        start = target
        t0 = end_time
    joints = np.stack([p.keypoints_xyz for p in poses])
    wrists = joints[:, skeleton.WRIST]
    speed = np.zeros(num_frames)
    speed[1:] = np.linalg.norm(np.diff(wrists, axis=0), axis=-1) * fps
    return MotionSequence(stamps, joints, shape.handedness, shape, tuple(poses), speed)
