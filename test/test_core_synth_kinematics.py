"""Hand model anatomy, articulation limits, mirroring and motion sequences."""

import numpy as np
import pytest

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz
from hand_pose_ros.core.synth import (
    Articulation, ArticulationConfig, flexion_angles_deg, generate_motion, hand_keypoints,
    HandShapeConfig, POSTURES, sample_articulation, sample_hand_shape)
from hand_pose_ros.core.synth.hand_model import (
    articulation_limits_deg, DIP_FLEXION, MCP_FLEXION, PIP_FLEXION, THUMB_IP_FLEXION,
    THUMB_MCP_FLEXION)
from hand_pose_ros.core.synth.pose import random_rotation


def test_bone_lengths_follow_the_anatomy_and_the_configured_variation():
    rng = np.random.default_rng(1)
    config = HandShapeConfig()
    mean_length_m = skeleton.MEAN_BONE_LENGTHS_MM[[8, 9, 10, 11]].sum() * 1e-3
    for _ in range(200):
        shape = sample_hand_shape(rng, config=config)
        art = sample_articulation(rng)
        xyz = hand_keypoints(shape, art, random_rotation(rng), rng.uniform(-1, 1, 3))
        np.testing.assert_allclose(skeleton.bone_lengths(xyz), shape.bone_lengths_m,
                                   atol=1e-12)
        factors = shape.bone_lengths_m / (shape.scale * skeleton.MEAN_BONE_LENGTHS_MM * 1e-3)
        assert np.all(np.abs(factors - 1) <= config.max_bone_variation + 1e-12)
        assert config.hand_length_mm[0] <= shape.scale * mean_length_m * 1e3 \
            <= config.hand_length_mm[1]
        # Knuckle line (index to pinky MCP) in the anatomical band.
        breadth_mm = np.linalg.norm(xyz[5] - xyz[17]) * 1e3
        assert 45.0 < breadth_mm < 90.0


def test_sampled_angles_stay_within_limits_and_the_geometry_shows_them():
    rng = np.random.default_rng(2)
    lo, hi = articulation_limits_deg()
    shape = sample_hand_shape(rng, 'right')
    for _ in range(300):
        art = sample_articulation(rng)
        assert np.all(art.angles_deg >= lo - 1e-9) and np.all(art.angles_deg <= hi + 1e-9)
        bends = flexion_angles_deg(hand_keypoints(shape, art, np.eye(3), np.zeros(3)))
        a = art.angles_deg
        # PIP, DIP and the thumb MCP / IP rotate about one axis: the bend is |angle|.
        np.testing.assert_allclose(bends[1:, 1], np.abs(a[PIP_FLEXION]), atol=1e-4)
        np.testing.assert_allclose(bends[1:, 2], np.abs(a[DIP_FLEXION]), atol=1e-4)
        np.testing.assert_allclose(bends[0, 1], abs(a[THUMB_MCP_FLEXION]), atol=1e-4)
        np.testing.assert_allclose(bends[0, 2], abs(a[THUMB_IP_FLEXION]), atol=1e-4)


def test_dip_follows_pip():
    rng = np.random.default_rng(3)
    config = ArticulationConfig(uniform_prob=0.0, dip_noise_deg=5.0)
    lo, hi = articulation_limits_deg()
    residuals = []
    for _ in range(300):
        a = sample_articulation(rng, config).angles_deg
        expected = np.clip(config.limits.dip_pip_ratio * a[PIP_FLEXION], lo[DIP_FLEXION],
                           hi[DIP_FLEXION])
        residuals.append(a[DIP_FLEXION] - expected)
    residuals = np.abs(np.concatenate(residuals))
    assert residuals.max() < 5 * config.dip_noise_deg
    assert 2.0 < residuals.mean() < 2 * config.dip_noise_deg


def test_flexion_curls_fingers_towards_the_palm():
    shape = sample_hand_shape(np.random.default_rng(4), 'right')
    open_xyz = hand_keypoints(shape, POSTURES['open'], np.eye(3), np.zeros(3))
    fist_xyz = hand_keypoints(shape, POSTURES['fist'], np.eye(3), np.zeros(3))
    # Hand frame: +z out of the palm; the PIPs of a fist stand out in front of the palm and
    # the fingertips come back towards the wrist.
    pips = skeleton.FINGER_JOINTS[1:, 1]
    tips = skeleton.FINGERTIPS[1:]
    assert np.all(fist_xyz[pips, 2] > open_xyz[pips, 2] + 0.02)
    assert np.all(np.linalg.norm(fist_xyz[tips], axis=1)
                  < np.linalg.norm(open_xyz[tips], axis=1) - 0.05)
    # Thumb on the radial side (+x) of a right hand, pinky on the ulnar side.
    assert open_xyz[4, 0] > 0.03 and open_xyz[20, 0] < -0.02


def test_left_hand_is_the_mirror_image_of_the_right_hand():
    rng = np.random.default_rng(5)
    right = sample_hand_shape(rng, 'right')
    left = right.with_handedness('left')
    art = sample_articulation(rng)
    rotation = random_rotation(rng)
    translation = np.array([0.1, -0.05, 0.6])
    xyz_right = hand_keypoints(right, art, rotation, translation)
    xyz_left = hand_keypoints(left, art, rotation, translation)
    mirror = rotation @ np.diag([-1.0, 1.0, 1.0]) @ rotation.T
    np.testing.assert_allclose(xyz_left, (xyz_right - translation) @ mirror.T + translation,
                               atol=1e-12)

    # Mirroring flips the chirality of the thumb / index / pinky triple.
    def chirality(xyz):
        return np.linalg.det(np.stack([xyz[2] - xyz[0], xyz[5] - xyz[0], xyz[17] - xyz[0]]))
    assert np.sign(chirality(xyz_left)) == -np.sign(chirality(xyz_right))


def test_motion_is_smooth_in_view_and_deterministic():
    intrinsics = CameraIntrinsics.from_preset('sr300')
    motion = generate_motion(240, fps=30.0, seed=7, max_speed_m_s=3.0, intrinsics=intrinsics)
    assert motion.joints_xyz.shape == (240, 21, 3)
    np.testing.assert_allclose(np.diff(motion.stamps_s), 1 / 30.0)
    speed = motion.wrist_speed_m_s[1:]
    assert speed.max() <= 3.0 * 1.05
    assert 0.0 < np.median(speed) < 1.5
    # Smooth: wrist acceleration bounded (finite differences at 30 Hz).
    wrist = motion.joints_xyz[:, 0]
    acceleration = np.linalg.norm(np.diff(wrist, 2, axis=0), axis=1) * 30.0 ** 2
    assert acceleration.max() < skeleton.MAX_ACCELERATION_M_S2
    lengths = skeleton.bone_lengths(motion.joints_xyz)
    np.testing.assert_allclose(lengths, np.broadcast_to(motion.shape.bone_lengths_m,
                                                        lengths.shape), atol=1e-9)
    palm_uv = uvd_from_xyz(skeleton.palm_center(motion.joints_xyz), intrinsics)
    inside = (palm_uv[:, 0] >= 0) & (palm_uv[:, 0] < 640) & (palm_uv[:, 1] >= 0) \
        & (palm_uv[:, 1] < 480)
    assert inside.mean() > 0.95
    again = generate_motion(240, fps=30.0, seed=7, max_speed_m_s=3.0, intrinsics=intrinsics)
    np.testing.assert_array_equal(again.joints_xyz, motion.joints_xyz)
    assert not np.array_equal(generate_motion(240, seed=8).joints_xyz, motion.joints_xyz)


def test_motion_speeds_cover_slow_and_fast_moves():
    speeds = np.concatenate([generate_motion(300, seed=s, max_speed_m_s=3.0).wrist_speed_m_s
                             for s in range(4)])
    assert speeds.max() > 1.0
    assert np.mean(speeds < 0.1) > 0.05


def test_bad_inputs_raise_value_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match='handedness'):
        sample_hand_shape(rng, 'up')
    with pytest.raises(ValueError, match='num_frames'):
        generate_motion(0)
    with pytest.raises(ValueError, match='articulation'):
        Articulation(np.zeros(5))
    with pytest.raises(ValueError, match='rotation'):
        hand_keypoints(sample_hand_shape(rng), Articulation(), np.ones((3, 3)), np.zeros(3))
    assert MCP_FLEXION.stop == 4
