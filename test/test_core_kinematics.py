"""Tests for hand_pose_ros.core.kinematics (angles, palm frame, bone frames)."""

import numpy as np
import pytest

from hand_pose_ros.core import kinematics
from hand_pose_ros.core.kinematics import (
    ANGLE_NAMES, bone_frames, hand_from_angles, joint_angles, palm_frame)
from hand_pose_ros.core.skeleton import bone_lengths, BONES, MEAN_BONE_LENGTHS_MM, palm_center


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _random_angles(rng):
    angles = np.radians(rng.uniform(-10.0, 60.0, len(ANGLE_NAMES)))
    angles[ANGLE_NAMES.index('thumb_cmc_abduction')] = np.radians(rng.uniform(5.0, 60.0))
    for name in ANGLE_NAMES:
        if name.endswith('abduction') and not name.startswith('thumb'):
            angles[ANGLE_NAMES.index(name)] = np.radians(rng.uniform(-15.0, 15.0))
    return angles


def test_angle_names_cover_contract():
    for name in ('index_mcp_flexion', 'index_mcp_abduction', 'index_pip_flexion',
                 'index_dip_flexion', 'thumb_cmc_flexion', 'thumb_cmc_abduction',
                 'thumb_mcp_flexion', 'thumb_ip_flexion', 'pinky_dip_flexion'):
        assert name in ANGLE_NAMES
    assert len(ANGLE_NAMES) == 20


@pytest.mark.parametrize('handedness', ['right', 'left'])
def test_joint_angles_invert_hand_from_angles_in_any_pose(handedness):
    rng = np.random.default_rng(3)
    for k in range(20):
        angles = _random_angles(rng)
        hand = hand_from_angles(angles, handedness=handedness)
        moved = hand @ _rotation(k).T + np.array([0.1, -0.05, 0.6])
        np.testing.assert_allclose(joint_angles(moved, handedness), angles, atol=1e-9)
        np.testing.assert_allclose(bone_lengths(hand) * 1000.0, MEAN_BONE_LENGTHS_MM,
                                   atol=1e-9)


def test_left_hand_read_as_right_has_negative_flexion():
    angles = _random_angles(np.random.default_rng(0))
    left = hand_from_angles(angles, handedness='left')
    as_right = joint_angles(left, 'right')
    pip = ANGLE_NAMES.index('middle_pip_flexion')
    assert as_right[pip] == pytest.approx(-angles[pip], abs=1e-9)


def test_palm_frame_axes_and_rigid_invariance():
    hand = hand_from_angles()
    origin, rotation = palm_frame(hand)
    np.testing.assert_allclose(origin, palm_center(hand))
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    distal = 0.5 * (hand[5] + hand[17]) - hand[0]
    assert rotation[:, 0] @ distal == pytest.approx(np.linalg.norm(distal))
    # y points towards the little finger, z palmar on a right hand.
    assert rotation[:, 1] @ (hand[17] - hand[5]) > 0.05
    assert (hand[8] - origin) @ rotation[:, 2] > 0.0  # flexed fingertip is palmar
    turn, shift = _rotation(1), np.array([0.2, 0.1, 0.5])
    origin2, rotation2 = palm_frame(hand @ turn.T + shift)
    np.testing.assert_allclose(origin2, turn @ origin + shift, atol=1e-12)
    np.testing.assert_allclose(rotation2, turn @ rotation, atol=1e-12)


def test_palm_frame_of_mirrored_hand_keeps_y_towards_little_finger():
    left = hand_from_angles(handedness='left')
    origin, rotation = palm_frame(left)
    assert rotation[:, 1] @ (left[17] - left[5]) > 0.05
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    assert (left[8] - origin) @ rotation[:, 2] < 0.0  # z is dorsal on a left hand


def test_bone_frames_are_rotations_along_bones():
    hand = hand_from_angles(_random_angles(np.random.default_rng(5)))
    frames = bone_frames(hand)
    assert frames.shape == (21, 3, 3)
    np.testing.assert_allclose(np.einsum('jab,jac->jbc', frames, frames),
                               np.broadcast_to(np.eye(3), (21, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(frames), 1.0, atol=1e-12)
    np.testing.assert_allclose(frames[0], palm_frame(hand)[1])
    for parent, child in BONES:
        direction = (hand[child] - hand[parent]) / np.linalg.norm(hand[child] - hand[parent])
        np.testing.assert_allclose(frames[child][:, 0], direction, atol=1e-12)


def test_rebuild_finger_restores_lengths_and_angles():
    angles = _random_angles(np.random.default_rng(8))
    hand = hand_from_angles(angles)
    lengths = MEAN_BONE_LENGTHS_MM / 1000.0 * 1.1
    rebuilt = kinematics.rebuild_finger(hand, 2, angles, lengths)
    middle_bones = [9, 10, 11]  # MCP->PIP, PIP->DIP, DIP->tip of the middle finger
    np.testing.assert_allclose(bone_lengths(rebuilt)[middle_bones], lengths[middle_bones])
    np.testing.assert_allclose(joint_angles(rebuilt), angles, atol=1e-9)
    np.testing.assert_array_equal(rebuilt[:9], hand[:9])


@pytest.mark.parametrize('handedness', ['right', 'left'])
def test_finger_angles_give_the_joint_angles_and_the_hinge_twists(handedness):
    rng = np.random.default_rng(11)
    hand = hand_from_angles(_random_angles(rng), handedness=handedness)
    angles, twist, _ = kinematics.finger_angles(hand, handedness)
    np.testing.assert_array_equal(angles, joint_angles(hand, handedness))
    # A constructed hand has ideal hinges; bending a DIP sideways twists that hinge only.
    np.testing.assert_allclose(twist, 0.0, atol=1e-9)
    bent = hand.copy()
    bent[8] += 0.004 * np.cross(hand[8] - hand[7], hand[6] - hand[7]) / np.linalg.norm(
        np.cross(hand[8] - hand[7], hand[6] - hand[7]))
    twist = kinematics.finger_angles(bent, handedness).hinge_twist
    assert abs(twist[1, 1]) > 0.1
    np.testing.assert_allclose(np.delete(twist.ravel(), 3), 0.0, atol=1e-9)
    for finger in range(5):
        np.testing.assert_array_equal(
            kinematics.hinge_out_of_plane(bent, finger, handedness), twist[finger])


def test_rebuild_fingers_equals_rebuilding_one_finger_at_a_time():
    rng = np.random.default_rng(12)
    hand = hand_from_angles(_random_angles(rng)) + rng.normal(0.0, 0.003, (21, 3))
    angles = _random_angles(rng)
    lengths = MEAN_BONE_LENGTHS_MM / 1000.0 * 0.9
    fingers = [0, 2, 4]
    twist = rng.normal(0.0, 0.1, (3, 2))
    rebuilt = kinematics.rebuild_fingers(hand, fingers, angles, lengths, 'left', twist)
    one_by_one = hand
    for finger, finger_twist in zip(fingers, twist):
        one_by_one = kinematics.rebuild_finger(one_by_one, finger, angles, lengths, 'left',
                                               finger_twist)
    np.testing.assert_allclose(rebuilt, one_by_one, atol=1e-12)
    untouched = np.r_[0, 1, 5:9, 9, 13:17, 17]
    np.testing.assert_array_equal(rebuilt[untouched], hand[untouched])
    moved = np.r_[2:5, 10:13, 18:21]
    np.testing.assert_allclose(bone_lengths(rebuilt)[moved - 1], lengths[moved - 1])


def test_bad_input_raises():
    with pytest.raises(ValueError, match='shape'):
        joint_angles(np.zeros((20, 3)))
    bad = hand_from_angles()
    bad[3] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        palm_frame(bad)
    with pytest.raises(ValueError, match='handedness'):
        joint_angles(hand_from_angles(), 'both')


def test_batched_angles_and_bone_frames_equal_those_of_each_hand():
    rng = np.random.default_rng(13)
    hands = np.stack([hand_from_angles(_random_angles(rng), handedness=side) @ _rotation(k).T
                      for k, side in enumerate(('right', 'left', 'right'))])
    labels = ['right', 'left', 'unknown']
    batched = kinematics.finger_angles(hands, labels)
    assert batched.joint_angles.shape == (3, len(ANGLE_NAMES))
    assert batched.hinge_twist.shape == (3, 5, 2)
    frames = bone_frames(hands)
    for hand, label, angles, twist, hand_frames in zip(
            hands, labels, batched.joint_angles, batched.hinge_twist, frames):
        single = kinematics.finger_angles(hand, label)
        np.testing.assert_array_equal(angles, single.joint_angles)
        np.testing.assert_array_equal(twist, single.hinge_twist)
        np.testing.assert_array_equal(hand_frames, bone_frames(hand))
    # A left hand read as right measures other angles: the labels are applied per hand.
    assert not np.allclose(batched.joint_angles[1], joint_angles(hands[1], 'right'))


def test_rebuild_fingers_with_the_frames_of_finger_angles_gives_the_same_hand():
    rng = np.random.default_rng(14)
    hand = hand_from_angles(_random_angles(rng), handedness='left') + rng.normal(
        0.0, 0.003, (21, 3))
    measured = kinematics.finger_angles(hand, 'left')
    angles = _random_angles(rng)
    lengths = MEAN_BONE_LENGTHS_MM / 1000.0 * 1.05
    fingers = [0, 3]
    twist = measured.hinge_twist[fingers]
    shared = kinematics.rebuild_fingers(hand, fingers, angles, lengths, 'left', twist,
                                        measured.frames)
    np.testing.assert_array_equal(
        shared, kinematics.rebuild_fingers(hand, fingers, angles, lengths, 'left', twist))
    # The thumb's rebuilt metacarpal axis did not overwrite the shared frames.
    np.testing.assert_array_equal(measured.frames.axes,
                                  kinematics.finger_angles(hand, 'left').frames.axes)
    np.testing.assert_allclose(joint_angles(shared, 'left')[:4], angles[:4], atol=1e-9)


def test_thumb_frames_turn_smoothly_when_a_thumb_bone_points_along_the_palm_normal():
    # This thumb's last bone lies within a few hundredths of a degree of the palm normal;
    # bending the IP joint by 0.4 degrees must turn the tip's frame by about as much.
    angles = np.zeros(len(ANGLE_NAMES))
    angles[:4] = np.radians([-25.8, 44.9, 39.0, 6.1])
    ip = ANGLE_NAMES.index('thumb_ip_flexion')
    frames = []
    for bend in (-0.2, 0.2):
        bent = angles.copy()
        bent[ip] += np.radians(bend)
        frames.append(bone_frames(hand_from_angles(bent))[4])
    turn = np.degrees(np.arccos(np.clip((np.trace(frames[0].T @ frames[1]) - 1) / 2, -1, 1)))
    assert turn < 1.0


def test_defined_geometry_equals_the_frames_and_angles_of_a_whole_hand():
    hand = hand_from_angles(_random_angles(np.random.default_rng(4)), handedness='left') \
        @ _rotation(4).T + [0.02, -0.01, 0.5]
    geometry = kinematics.defined_geometry(hand, 'left')
    np.testing.assert_array_equal(geometry.frames, bone_frames(hand))
    np.testing.assert_array_equal(geometry.angles, joint_angles(hand, 'left'))
    given = np.arange(len(ANGLE_NAMES), dtype=float)
    np.testing.assert_array_equal(kinematics.defined_geometry(hand, 'left', given).angles, given)


def _undefined(geometry):
    frames = {j for j in range(21) if np.isnan(geometry.frames[j]).all()}
    assert frames | {j for j in range(21) if np.isfinite(geometry.frames[j]).all()} \
        == set(range(21))
    return frames, {ANGLE_NAMES[k] for k in np.flatnonzero(np.isnan(geometry.angles))}


def test_missing_joints_leave_only_what_is_built_from_them_undefined():
    hand = hand_from_angles() @ _rotation(5).T + [0.0, 0.0, 0.4]
    tip = hand.copy()
    tip[8] = np.nan                     # index tip never seen
    assert _undefined(kinematics.defined_geometry(tip)) == ({8}, {'index_dip_flexion'})
    thumb = hand.copy()
    thumb[3] = np.nan                   # thumb IP: its bone, the next (carried) and angles
    frames, angles = _undefined(kinematics.defined_geometry(thumb))
    assert frames == {3, 4}
    assert angles == {'thumb_mcp_flexion', 'thumb_ip_flexion'}
    wrist = hand.copy()
    wrist[0] = np.nan                   # the palm frame: every frame and angle
    frames, angles = _undefined(kinematics.defined_geometry(wrist))
    assert frames == set(range(21)) and angles == set(ANGLE_NAMES)


def test_degenerate_geometry_is_undefined_not_an_arbitrary_frame():
    hand = hand_from_angles() @ _rotation(6).T + [0.0, 0.0, 0.4]
    zero_bone = hand.copy()
    zero_bone[7] = zero_bone[6]         # index DIP on its PIP: a zero-length bone
    frames, angles = _undefined(kinematics.defined_geometry(zero_bone))
    assert frames == {7}
    assert angles == {'index_pip_flexion', 'index_dip_flexion'}
    collinear = hand.copy()             # wrist, index and little-finger MCPs on one line
    collinear[17] = collinear[0] + 0.8 * (collinear[5] - collinear[0])
    frames, angles = _undefined(kinematics.defined_geometry(collinear))
    assert frames == set(range(21)) and angles == set(ANGLE_NAMES)
    # The plain functions still give numbers there (what the anatomy checks read).
    assert np.isfinite(bone_frames(collinear)).all()
    infinite = hand.copy()
    infinite[3, 0] = np.inf             # NaN marks a missing joint; infinity is refused
    with pytest.raises(ValueError, match='non-finite'):
        kinematics.defined_geometry(infinite)
