"""Tests for the anatomical checks, calibration and repair of hand poses."""

import numpy as np
import pytest

from hand_pose_ros.core import kinematics
from hand_pose_ros.core.filters import anatomy, config_from_dict, FilterConfig, HandFilter
from hand_pose_ros.core.filters import Observation
from hand_pose_ros.core.kinematics import ANGLE_NAMES, hand_from_angles, joint_angles
from hand_pose_ros.core.skeleton import bone_lengths, MEAN_BONE_LENGTHS_MM

ALL = np.ones(21, bool)
INDEX_PIP, INDEX_DIP, INDEX_TIP, MIDDLE_PIP, MIDDLE_TIP = 6, 7, 8, 10, 12


def _hand(angles=None, scale=1.0):
    lengths = MEAN_BONE_LENGTHS_MM / 1000.0 * scale
    return hand_from_angles(angles, lengths) + np.array([0.0, 0.0, 0.5])


def _rest_angles():
    return joint_angles(hand_from_angles())


def _blamed(result):
    out = np.zeros(21, bool)
    for mask in result.values():
        out |= mask
    return out


def test_plausible_hand_passes_every_check():
    cfg = FilterConfig().anatomy
    hand = _hand()
    assert anatomy.hand_level_problems(cfg, hand, ALL) == []
    assert not _blamed(anatomy.check_bones(cfg, hand, ALL)).any()
    assert not _blamed(anatomy.check_pose(cfg, hand, 'right')).any()


@pytest.mark.parametrize('scale', [0.5, 1.8])
def test_hand_size_out_of_band_rejects_the_hand(scale):
    assert anatomy.hand_level_problems(FilterConfig().anatomy, _hand(scale=scale), ALL) == [
        'hand_length']


def test_single_outlier_does_not_reject_the_hand_but_is_blamed():
    cfg = FilterConfig().anatomy
    hand = _hand()
    hand[INDEX_PIP] += np.array([0.0, 0.09, 0.0])
    assert anatomy.hand_level_problems(cfg, hand, ALL) == []
    blamed = anatomy.check_bones(cfg, hand, ALL)
    assert np.flatnonzero(blamed['bone_ratio']).tolist() == [INDEX_PIP]


def test_a_fingertip_collapsed_onto_its_parent_is_blamed():
    # The noise margin puts the lower bounds of short bones below zero: a collapsed bone
    # must still fail.
    cfg = FilterConfig().anatomy
    for tip in (4, 8, 20):
        hand = _hand()
        hand[tip] = hand[tip - 1] + 0.001
        assert np.flatnonzero(anatomy.check_bones(cfg, hand, ALL)['bone_length']).tolist() \
            == [tip]
        shortened = _hand()
        shortened[tip] = shortened[tip - 1] + 0.5 * (shortened[tip] - shortened[tip - 1])
        assert not anatomy.check_bones(cfg, shortened, ALL)['bone_length'].any()


def test_knuckle_breadth_check():
    cfg = FilterConfig().anatomy
    hand = _hand()
    hand[17] += 0.08 * (hand[17] - hand[5]) / np.linalg.norm(hand[17] - hand[5])
    assert anatomy.check_bones(cfg, hand, ALL)['knuckle_breadth'][[5, 17]].all()


def test_calibration_tightens_bone_bounds():
    cfg = config_from_dict(
        {'anatomy.noise_margin_m': 0.003, 'anatomy.keypoint_noise_m': 0.0}).anatomy
    calibration = anatomy.BoneCalibration(window=50, min_frames=10)
    rng = np.random.default_rng(0)
    truth = bone_lengths(_hand())
    for _ in range(9):
        calibration.add(truth + rng.normal(0.0, 0.001, 20))
    assert calibration.lengths_m is None
    calibration.add(truth)
    calibration.add(truth * 3.0)  # one wild frame does not move the median
    np.testing.assert_allclose(calibration.lengths_m, truth, atol=0.0015)
    # Lengthen the index distal phalanx by 40 %: within population bounds, not the user's.
    hand = _hand()
    hand[INDEX_TIP] += 0.4 * (hand[INDEX_TIP] - hand[INDEX_DIP])
    loose = _blamed(anatomy.check_bones(cfg, hand, ALL))
    tight = anatomy.check_bones(cfg, hand, ALL, calibration.lengths_m)
    assert not loose.any()
    assert np.flatnonzero(tight['bone_calibrated']).tolist() == [INDEX_TIP]


def test_joint_angle_limit_blames_the_placed_joint_and_repair_clamps_it():
    cfg = FilterConfig().anatomy
    angles = _rest_angles()
    pip = ANGLE_NAMES.index('index_pip_flexion')
    angles[pip] = np.radians(160.0)
    hand = _hand(angles)
    blamed = anatomy.check_pose(cfg, hand, 'right')
    assert np.flatnonzero(blamed['joint_angle']).tolist() == [INDEX_DIP]
    repaired, moved, unrepairable = anatomy.repair(cfg, hand, blamed['joint_angle'], 'right')
    assert moved[[INDEX_PIP, INDEX_DIP, 8]].all() and not moved[:6].any()
    assert not unrepairable.any()
    limit = np.radians(110.0 + cfg.angle_margin_deg)
    assert joint_angles(repaired)[pip] == pytest.approx(limit)
    np.testing.assert_allclose(bone_lengths(repaired), bone_lengths(hand), atol=1e-9)
    assert not _blamed(anatomy.check_pose(cfg, repaired, 'right')).any()


def test_a_hand_of_unknown_side_is_checked_as_either_side():
    cfg = FilterConfig().anatomy
    angles = _rest_angles()
    angles[ANGLE_NAMES.index('index_pip_flexion')] = np.radians(60.0)
    left = hand_from_angles(angles, handedness='left') + np.array([0.0, 0.0, 0.5])
    # Read with a right hand's signs, the left hand's curled finger bends backwards.
    assert anatomy.check_pose(cfg, left, 'right')['joint_angle'].any()
    assert not anatomy.check_pose(cfg, left, 'left')['joint_angle'].any()
    assert not anatomy.check_pose(cfg, left, 'unknown')['joint_angle'].any()
    # A bend no hand can make is blamed whatever the side.
    angles[ANGLE_NAMES.index('index_pip_flexion')] = np.radians(160.0)
    assert anatomy.check_pose(cfg, _hand(angles), 'unknown')['joint_angle'].any()


@pytest.mark.parametrize('side', ['left', 'right'])
def test_a_hand_of_unknown_side_is_repaired_as_the_side_its_angles_fit(side):
    cfg = FilterConfig().anatomy
    angles = _rest_angles()
    angles[ANGLE_NAMES.index('index_pip_flexion')] = np.radians(70.0)
    angles[ANGLE_NAMES.index('index_dip_flexion')] = np.radians(40.0)
    lengths = MEAN_BONE_LENGTHS_MM / 1000.0
    long_tip = lengths.copy()
    long_tip[7] = 0.05                  # a distal index bone no hand has: its finger is rebuilt
    hand = hand_from_angles(angles, long_tip, handedness=side) + np.array([0.0, 0.0, 0.5])
    blamed = _blamed(anatomy.check_pose(cfg, hand, 'unknown'))
    assert blamed[INDEX_TIP] and not blamed[[INDEX_PIP, INDEX_DIP]].any()
    known, _, _ = anatomy.repair(cfg, hand, blamed, side)
    unknown, moved, _ = anatomy.repair(cfg, hand, blamed, 'unknown')
    assert moved[INDEX_TIP]
    np.testing.assert_allclose(unknown, known, atol=1e-12)
    # The curl is kept (measured as the hand's own side), only the bone is restored.
    curl = [ANGLE_NAMES.index('index_pip_flexion'), ANGLE_NAMES.index('index_dip_flexion')]
    np.testing.assert_allclose(joint_angles(unknown, side)[curl], np.radians([70.0, 40.0]),
                               atol=1e-6)


def test_precomputed_angles_give_the_same_check_and_repair():
    cfg = FilterConfig().anatomy
    angles = _rest_angles()
    angles[ANGLE_NAMES.index('middle_dip_flexion')] = np.radians(130.0)
    hand = _hand(angles) + np.random.default_rng(4).normal(0.0, 0.002, (21, 3))
    precomputed = kinematics.finger_angles(hand, 'left')
    blamed = anatomy.check_pose(cfg, hand, 'left')
    shared = anatomy.check_pose(cfg, hand, 'left', angles=precomputed)
    assert blamed.keys() == shared.keys() and _blamed(blamed).any()
    for reason in blamed:
        np.testing.assert_array_equal(shared[reason], blamed[reason])
    for result, expected in zip(anatomy.repair(cfg, hand, _blamed(blamed), 'left',
                                               angles=precomputed),
                                anatomy.repair(cfg, hand, _blamed(blamed), 'left')):
        np.testing.assert_array_equal(result, expected)


def test_repair_restores_calibrated_bone_lengths_along_observed_directions():
    cfg = FilterConfig().anatomy
    hand = _hand()
    target = bone_lengths(hand)
    stretched = hand.copy()
    stretched[MIDDLE_TIP] += hand[MIDDLE_TIP] - hand[MIDDLE_TIP - 1]  # twice as long
    blamed = anatomy.check_pose(cfg, stretched, 'right', target)['bone_calibrated']
    assert np.flatnonzero(blamed).tolist() == [MIDDLE_TIP]
    repaired, _, _ = anatomy.repair(cfg, stretched, blamed, 'right', target)
    np.testing.assert_allclose(repaired, hand, atol=1e-9)


def test_segment_distances_match_brute_force_also_for_point_segments():
    rng = np.random.default_rng(3)
    p0, p1, q0, q1 = rng.uniform(-0.05, 0.05, (4, 300, 3))
    q1[:100] = q0[:100]                    # the second segment a point
    p1[100:200] = p0[100:200]              # the first one a point
    grid = np.linspace(0.0, 1.0, 401)
    for k in range(300):
        a = p0[k] + grid[:, None] * (p1[k] - p0[k])
        b = q0[k] + grid[:, None] * (q1[k] - q0[k])
        brute = np.min(np.linalg.norm(a[:, None] - b[None], axis=2))
        exact = anatomy._segment_distances(p0[k:k + 1], p1[k:k + 1], q0[k:k + 1],
                                           q1[k:k + 1])[0]
        assert exact <= brute + 1e-12 and brute - exact < 2e-4, k


def test_self_intersection_is_detected():
    cfg = FilterConfig().anatomy
    hand = _hand()
    crossing = hand.copy()
    # Put the middle finger's middle phalanx through the index finger's middle phalanx.
    centre = 0.5 * (hand[INDEX_PIP] + hand[INDEX_DIP])
    crossing[MIDDLE_PIP + 1] = centre + (centre - crossing[MIDDLE_PIP])
    blamed = anatomy.check_pose(cfg, crossing, 'right')['self_intersection']
    assert blamed[INDEX_DIP] and blamed[MIDDLE_PIP + 1]


def _run(action, hand, frames=3):
    hand_filter = HandFilter(config_from_dict({'anatomy.action': action}))
    for k in range(frames):
        tracks = hand_filter.update(k / 30.0, [Observation(hand, np.full(21, 0.9))])
    return hand_filter, tracks


def test_actions_on_an_implausible_filtered_pose():
    angles = _rest_angles()
    angles[ANGLE_NAMES.index('index_pip_flexion')] = np.radians(160.0)
    hand = _hand(angles)
    hand_filter, tracks = _run('repair', hand)
    track = tracks[0]
    assert track.valid.all() and track.repaired[INDEX_DIP]
    assert track.scores[INDEX_DIP] == pytest.approx(0.9 * 0.5)
    assert track.scores[0] == pytest.approx(0.9)
    assert hand_filter.stats['repaired_joints'] > 0
    _, tracks = _run('invalidate_joints', hand)
    assert not tracks[0].valid[INDEX_DIP] and tracks[0].valid[INDEX_PIP]
    hand_filter, tracks = _run('reject_hand', hand)
    assert not tracks[0].valid.any()
    assert hand_filter.stats['invalidated_hands.anatomy'] == 3


def test_gross_bone_outlier_in_observation_rejects_joint_or_hand():
    hand = _hand()
    bad = hand.copy()
    bad[INDEX_PIP] += np.array([0.0, 0.1, 0.0])
    hand_filter = HandFilter()
    hand_filter.update(0.0, [Observation(hand)])
    track = hand_filter.update(1 / 30.0, [Observation(bad)])[0]
    assert track.rejected[INDEX_PIP] and track.rejected.sum() == 1
    np.testing.assert_allclose(track.keypoints_xyz[INDEX_PIP], hand[INDEX_PIP], atol=1e-6)
    # Published at once, the rejected hand's track reports every joint rejected (by default
    # a new track waits for a second detection, which no track holding nothing but
    # rejected joints can associate).
    hand_filter = HandFilter(config_from_dict({'anatomy.action': 'reject_hand',
                                               'tracking.min_detections': 1}))
    tracks = hand_filter.update(0.0, [Observation(bad, np.full(21, 0.9))])
    assert hand_filter.stats['rejected_hands.anatomy'] == 1 and tracks[0].rejected.all()
    oversized = HandFilter()
    assert oversized.update(0.0, [Observation(_hand(scale=1.8))]) == []
    assert oversized.stats['rejected_hands.hand_length'] == 1


def test_noise_free_synthetic_hands_pass_the_hand_size_check():
    from hand_pose_ros.core.synth import generate_motion

    config = FilterConfig().anatomy
    for seed in range(5):
        motion = generate_motion(3, seed=seed)
        for keypoints in motion.joints_xyz:
            assert anatomy.hand_level_problems(config, keypoints, np.ones(21, bool)) == []
