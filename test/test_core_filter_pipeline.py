"""Tests for the online HandFilter: gates, gaps, resets, tracking, handedness, config."""

import numpy as np
import pytest

from hand_pose_ros.core.filters import (
    config_fields, config_from_dict, FilterConfig, HandFilter, Observation)
from hand_pose_ros.core.filters.handedness import handedness_evidence
from hand_pose_ros.core.filters.pipeline import TRACK_ID_LIMIT
from hand_pose_ros.core.kinematics import (
    ANGLE_NAMES, hand_from_angles, joint_angles, REST_ANGLES_DEG)
from hand_pose_ros.core.skeleton import FINGER_JOINTS

PERIOD = 1 / 30.0
INDEX_TIP = 8
# New tracks published from their first detection (the default waits for a second one).
AT_ONCE = {'tracking.min_detections': 1}


def _pose(handedness='right'):
    # Palm roughly facing the camera (camera z forward), 0.5 m away.
    turn = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return hand_from_angles(handedness=handedness) @ turn.T


def _moving(t, start=(0.0, 0.0, 0.5), velocity=(0.6, 0.2, 0.0), handedness='right'):
    return _pose(handedness) + np.asarray(start) + np.asarray(velocity) * t


def _noisy(hand, rng, noise=0.002):
    return hand + rng.normal(0.0, noise, hand.shape)


def _run(frames, hand_filter=None, rng=None, corrupt=None):
    hand_filter = hand_filter or HandFilter()
    rng = rng or np.random.default_rng(0)
    outputs = []
    for k in range(frames):
        truth = _moving(k * PERIOD)
        observed = _noisy(truth, rng)
        if corrupt is not None:
            observed = corrupt(k, observed)
        detections = [] if observed is None else [Observation(observed)]
        outputs.append((truth, hand_filter.update(k * PERIOD, detections)))
    return hand_filter, outputs


def test_gate_rejects_an_injected_outlier():
    def corrupt(k, observed):
        if k == 20:
            observed[INDEX_TIP] += np.array([0.05, 0.0, 0.0])
        return observed

    hand_filter, outputs = _run(25, corrupt=corrupt)
    truth, tracks = outputs[20]
    track = tracks[0]
    assert track.rejected[INDEX_TIP] and track.rejected.sum() == 1
    assert track.valid[INDEX_TIP] and track.predicted_joints[INDEX_TIP]
    assert np.linalg.norm(track.keypoints_xyz[INDEX_TIP] - truth[INDEX_TIP]) < 0.01
    assert hand_filter.stats['rejected_joints.acceleration'] >= 1
    # Before and after, nothing is rejected.
    assert not any(t[0].rejected.any() for _, t in outputs[5:20] + outputs[21:])


def test_gate_is_robust_to_a_single_frame_finger_swap():
    index, middle = FINGER_JOINTS[1, 1:], FINGER_JOINTS[2, 1:]

    def corrupt(k, observed):
        if k == 20:
            observed[index], observed[middle] = observed[middle].copy(), observed[index].copy()
        return observed

    _, outputs = _run(25, corrupt=corrupt)
    truth, tracks = outputs[20]
    assert tracks[0].rejected[index].all() and tracks[0].rejected[middle].all()
    errors = np.linalg.norm(tracks[0].keypoints_xyz - truth, axis=1)
    assert errors.max() < 0.012


def test_gap_is_predicted_then_invalidated_then_recovered():
    def corrupt(k, observed):
        return None if 20 <= k < 30 else observed

    hand_filter, outputs = _run(40, corrupt=corrupt)
    for k in range(20, 30):
        truth, tracks = outputs[k]
        assert len(tracks) == 1 and tracks[0].predicted
        within = (k - 19) * PERIOD <= FilterConfig().max_gap_s
        assert tracks[0].valid.all() == within and tracks[0].valid.any() == within
        if within:
            assert np.linalg.norm(tracks[0].keypoints_xyz - truth, axis=1).max() < 0.02
            assert 0.0 < tracks[0].scores.max() < 1.0
    truth, tracks = outputs[35]
    assert tracks[0].valid.all() and not tracks[0].predicted and tracks[0].hand_id == 0
    assert np.linalg.norm(tracks[0].keypoints_xyz - truth, axis=1).max() < 0.02
    assert hand_filter.stats['predicted_joints'] > 0


def test_time_jump_backwards_and_stale_stream_reset():
    hand_filter, _ = _run(10, HandFilter(config_from_dict(AT_ONCE)))
    tracks = hand_filter.update(0.05, [Observation(_moving(0.05))])
    assert hand_filter.stats['resets.time_jump_back'] == 1
    assert tracks[0].hand_id == 1
    np.testing.assert_allclose(tracks[0].keypoints_xyz, _moving(0.05))
    hand_filter.update(5.0, [Observation(_moving(5.0))])
    assert hand_filter.stats['resets.stale_stream'] == 1 and hand_filter.stats['resets'] == 2
    assert hand_filter.tracks == [2]
    # A repeated stamp returns the previous output unchanged.
    again = hand_filter.update(5.0, [Observation(_moving(6.0))])
    np.testing.assert_allclose(again[0].keypoints_xyz, _moving(5.0))
    hand_filter.reset()
    assert hand_filter.tracks == []


def test_two_crossing_hands_keep_their_ids():
    hand_filter = HandFilter()
    rng = np.random.default_rng(1)
    ids = {}
    for k in range(60):
        t = k * PERIOD
        # Palms pass 6 cm apart at t = 1 s, moving at 0.5 m/s in opposite directions.
        a = _moving(t, start=(-0.5, 0.0, 0.5), velocity=(0.5, 0.0, 0.0))
        b = _moving(t, start=(0.5, 0.06, 0.55), velocity=(-0.5, 0.0, 0.0),
                    handedness='left')
        order = [('a', a), ('b', b)][::1 if k % 2 else -1]
        tracks = hand_filter.update(t, [Observation(_noisy(h, rng)) for _, h in order])
        assert len(tracks) == (0 if k == 0 else 2)  # new tracks show from their 2nd frame
        if k == 0:
            continue
        for name, hand in order:
            nearest = min(tracks, key=lambda tr: np.linalg.norm(tr.keypoints_xyz[0] - hand[0]))
            ids.setdefault(name, nearest.hand_id)
            assert nearest.hand_id == ids[name]
    assert ids['a'] != ids['b'] and hand_filter.stats['new_tracks'] == 2


def test_max_hands_keeps_the_most_confident():
    hand_filter = HandFilter(config_from_dict({'tracking.max_hands': 2, **AT_ONCE}))
    hands = [_moving(0.0, start=(x, 0.0, 0.5)) for x in (-0.3, 0.0, 0.3)]
    scores = [np.full(21, s) for s in (0.9, 0.5, 0.8)]
    tracks = hand_filter.update(0.0, [Observation(h, s) for h, s in zip(hands, scores)])
    assert len(tracks) == 2
    assert hand_filter.stats['rejected_hands.max_hands'] == 1
    kept = sorted(round(float(t.keypoints_xyz[0, 0]), 3) for t in tracks)
    assert kept == [round(float(hands[0][0, 0]), 3), round(float(hands[2][0, 0]), 3)]


def test_track_ids_wrap_round_and_skip_live_tracks():
    # Ids are published as 16-bit numbers: after 65,535 comes 0 again, but not a live id.
    hand_filter = HandFilter(config_from_dict({'tracking.max_hands': 3, **AT_ONCE}))
    hands = [_moving(0.0, start=(x, 0.0, 0.5)) for x in (-0.3, 0.0, 0.3)]
    hand_filter.update(0.0, [Observation(hands[0])])
    assert hand_filter.tracks == [0]
    hand_filter._next_id = TRACK_ID_LIMIT - 1  # as after 65,535 more tracks
    hand_filter.update(PERIOD, [Observation(h) for h in hands[:2]])
    hand_filter.update(2 * PERIOD, [Observation(h) for h in hands])
    assert sorted(hand_filter.tracks) == [0, 1, TRACK_ID_LIMIT - 1]


def test_new_tracks_show_once_detected_in_enough_consecutive_frames():
    hand_filter, outputs = _run(3)
    assert outputs[0][1] == [] and [t.hand_id for t in outputs[1][1]] == [0]
    # Moving at 0.6 m/s from a standing start, the smoother lags by less than a frame.
    np.testing.assert_allclose(outputs[1][1][0].keypoints_xyz, outputs[1][0], atol=0.02)
    # A false hand seen in one frame never shows, and its id is not given again.
    rng = np.random.default_rng(2)
    for k in range(3, 12):
        t = k * PERIOD
        detections = [Observation(_noisy(_moving(t), rng))]
        if k == 5:
            detections.append(Observation(_moving(t, start=(0.3, 0.1, 0.6))))
        tracks = hand_filter.update(t, detections)
        assert [track.hand_id for track in tracks] == [0]
    assert hand_filter.stats['dropped_tentative_tracks'] == 1
    assert hand_filter.stats['new_tracks'] == 2 and hand_filter.tracks == [0]
    second = [_moving(12 * PERIOD, start=(0.3, 0.1, 0.6)) + shift for shift in (0.0, 0.002)]
    hand_filter.update(12 * PERIOD, [Observation(_moving(12 * PERIOD)),
                                     Observation(second[0])])
    tracks = hand_filter.update(13 * PERIOD, [Observation(_moving(13 * PERIOD)),
                                              Observation(second[1])])
    assert [track.hand_id for track in tracks] == [0, 2]
    # Three detections asked for: nothing until the third frame.
    hand_filter = HandFilter(config_from_dict({'tracking.min_detections': 3}))
    shown = [bool(hand_filter.update(k * PERIOD, [Observation(_moving(k * PERIOD))]))
             for k in range(4)]
    assert shown == [False, False, True, True]


def test_handedness_of_mirrored_hands():
    assert handedness_evidence(_pose('right')) > 0.5
    assert handedness_evidence(_pose('left')) < -0.5
    for handedness in ('right', 'left'):
        hand_filter = HandFilter()
        for k in range(10):
            tracks = hand_filter.update(k * PERIOD, [Observation(_pose(handedness) + [0, 0, .5])])
        assert tracks[0].handedness == handedness
        assert tracks[0].handedness_confidence > 0.5


def test_an_assumed_side_is_reported_from_the_first_frame():
    # An open, flat hand carries no evidence of its side: unknown, unless one is assumed.
    flat = hand_from_angles(np.zeros(len(ANGLE_NAMES))) + [0, 0, .5]
    for assume, label in (('none', 'unknown'), ('left', 'left'), ('right', 'right')):
        hand_filter = HandFilter(config_from_dict({'handedness.assume': assume, **AT_ONCE}))
        tracks = hand_filter.update(0.0, [Observation(flat)])
        assert tracks[0].handedness == label, assume
    assert tracks[0].handedness_confidence == 1.0
    # The side is assumed for what is published, not for the anatomy checks: a curled left
    # hand under assume: right is not "repaired" into a right hand's limits.
    curled = np.radians([REST_ANGLES_DEG[name] + 40 * name.endswith('flexion')
                         for name in ANGLE_NAMES])
    left = hand_from_angles(curled, handedness='left') + [0, 0, .5]
    for assume in ('none', 'right'):
        hand_filter = HandFilter(config_from_dict({'handedness.assume': assume, **AT_ONCE}))
        for k in range(10):
            tracks = hand_filter.update(k * PERIOD, [Observation(left)])
        assert hand_filter.stats['repaired_joints'] == 0, assume
        np.testing.assert_allclose(tracks[0].keypoints_xyz, left, atol=1e-3)
    assert tracks[0].handedness == 'right'


def test_handedness_is_learned_without_a_fingertip():
    # A fingertip hidden in every frame (its score under min_score): the other 20 joints
    # still tell the side.
    scores = np.ones(21)
    scores[20] = 0.0
    assert handedness_evidence(_pose('left'), present=scores > 0) < -0.5
    hand_filter = HandFilter()
    for k in range(10):
        tracks = hand_filter.update(k * PERIOD, [
            Observation(_pose('left') + [0, 0, .5], scores)])
    assert tracks[0].handedness == 'left'
    with pytest.raises(ValueError, match='needs the wrist, the four finger MCPs'):
        handedness_evidence(_pose('left'), present=np.arange(21) != 9)


def test_set_config_keeps_tracks_and_calibration():
    hand_filter, outputs = _run(40)
    lengths = hand_filter.calibrated_bone_lengths(0)
    truth = np.linalg.norm(np.diff(outputs[0][0][[0, 5, 6, 7, 8]], axis=0), axis=1)
    np.testing.assert_allclose(lengths[4:8], truth, atol=0.002)  # index finger chain
    hand_filter.set_config(config_from_dict({'smoother': 'kalman', 'one_euro.beta': 5.0}))
    tracks = hand_filter.update(40 * PERIOD, [Observation(_moving(40 * PERIOD))])
    assert tracks[0].hand_id == 0
    np.testing.assert_allclose(hand_filter.calibrated_bone_lengths(0), lengths, atol=1e-3)
    with pytest.raises(ValueError, match='smoother'):
        hand_filter.set_config(config_from_dict({}).__class__(smoother='median'))


def test_config_fields_validation_and_flat_dict():
    fields = {name: rest for name, *rest in config_fields()}
    default, description, low, high, choices = fields['one_euro.min_cutoff_hz']
    assert default == FilterConfig().one_euro.min_cutoff_hz and low < default < high
    assert description and choices is None
    assert fields['anatomy.action'][4] == ('repair', 'invalidate_joints', 'reject_hand')
    for name in ('gates.palm_max_speed_m_s', 'gates.fingertip_max_speed_m_s',
                 'gates.max_acceleration_m_s2', 'tracking.max_hands', 'tracking.gate_m',
                 'max_gap_s', 'stale_timeout_s', 'kalman.process_noise_m_s2'):
        assert name in fields
    cfg = config_from_dict({'one_euro.beta': 2, 'tracking.max_hands': 3})
    assert cfg.one_euro.beta == 2.0 and isinstance(cfg.one_euro.beta, float)
    assert FilterConfig().one_euro.beta != 2.0  # the default was not modified
    with pytest.raises(ValueError, match='one_euro.min_cutoff_hz'):
        config_from_dict({'one_euro.min_cutoff_hz': -1.0})
    with pytest.raises(ValueError, match='tracking.max_hands'):
        config_from_dict({'tracking.max_hands': 1.5})
    with pytest.raises(ValueError, match='unknown'):
        config_from_dict({'one_euro.gamma': 1.0})
    with pytest.raises(ValueError, match='gates.enabled'):
        config_from_dict({'gates.enabled': 'yes'})
    with pytest.raises(ValueError, match='stale_timeout_s'):
        config_from_dict({'stale_timeout_s': 0.1, 'max_gap_s': 0.5})


def test_bad_observations_raise():
    hand_filter = HandFilter()
    with pytest.raises(ValueError, match='keypoints_xyz'):
        hand_filter.update(0.0, [Observation(np.zeros((20, 3)))])
    with pytest.raises(ValueError, match='scores'):
        hand_filter.update(0.0, [Observation(_pose(), np.ones(5))])
    with pytest.raises(ValueError, match='stamp_s'):
        hand_filter.update(float('nan'), [])


def test_set_config_resizes_calibration_window():
    hand_filter, _ = _run(40)
    lengths = hand_filter.calibrated_bone_lengths(0)
    hand_filter.set_config(config_from_dict({'anatomy.calibration_window': 20,
                                             'anatomy.calibration_min_frames': 10}))
    np.testing.assert_allclose(hand_filter.calibrated_bone_lengths(0), lengths, atol=0.003)
    hand_filter.set_config(config_from_dict({'anatomy.calibration_min_frames': 100}))
    assert hand_filter.calibrated_bone_lengths(0) is None


def test_a_coasting_hand_keeps_its_checked_pose_and_follows_config_changes():
    angles = np.radians([REST_ANGLES_DEG[name] for name in ANGLE_NAMES])
    angles[ANGLE_NAMES.index('middle_dip_flexion')] = np.radians(130.0)
    turn = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    hand = hand_from_angles(angles) @ turn.T + np.array([0.0, 0.0, 0.5])
    hand_filter = HandFilter(config_from_dict(AT_ONCE))
    first = hand_filter.update(0.0, [Observation(hand)])[0]
    middle = FINGER_JOINTS[2, 1:]
    assert first.repaired[middle].all() and first.valid.all()
    repaired_per_frame = hand_filter.stats['repaired_joints']
    previous = first
    # Without detections the track coasts at zero velocity: same pose, same repair, and
    # every frame still counts its repaired joints; only the scores decay.
    for k in range(1, 4):
        out = hand_filter.update(k * PERIOD, [])[0]
        assert out.predicted and out.valid.all()
        np.testing.assert_array_equal(out.keypoints_xyz, first.keypoints_xyz)
        np.testing.assert_array_equal(out.repaired, first.repaired)
        assert np.all(out.scores < previous.scores)
        previous = out
    assert hand_filter.stats['repaired_joints'] == 4 * repaired_per_frame
    hand_filter.set_config(config_from_dict({'anatomy.action': 'invalidate_joints'}))
    out = hand_filter.update(4 * PERIOD, [])[0]
    assert not out.repaired.any() and not out.valid[FINGER_JOINTS[2, 3]]
    np.testing.assert_array_equal(out.keypoints_xyz, hand)
    # The checks' joint angles come with the output, but not with repaired keypoints.
    assert first.joint_angles is None
    np.testing.assert_allclose(out.joint_angles,
                               joint_angles(out.keypoints_xyz, out.handedness), atol=1e-12)


def test_tracked_hands_carry_the_joint_angles_of_their_keypoints():
    _, outputs = _run(10)
    assert outputs[0][1] == []
    for _, tracks in outputs[1:]:
        hand = tracks[0]
        np.testing.assert_allclose(hand.joint_angles,
                                   joint_angles(hand.keypoints_xyz, hand.handedness),
                                   atol=1e-12)
    # Without the pose checks nothing measures them.
    hand_filter = HandFilter(config_from_dict({'anatomy.enabled': False, **AT_ONCE}))
    assert hand_filter.update(0.0, [Observation(_pose() + [0.0, 0.0, 0.5])])[0] \
        .joint_angles is None


def test_association_gives_each_detection_the_nearest_free_track():
    from hand_pose_ros.core.filters.tracking import associate

    # Track 0 follows the hand; track 1 drifted far off. Minimum total distance would hand
    # the hand's detection (1) to track 1 and a false detection (0) to track 0.
    tracks = np.array([[0.0, 0.0, 0.5], [0.9, 0.0, 0.5]])
    detections = np.array([[0.35, 0.0, 0.5], [0.07, 0.0, 0.5]])
    pairs, unmatched = associate(tracks, detections, [0.75, 1.05])
    assert sorted(pairs) == [(0, 1), (1, 0)] and unmatched == []
    # Gates still apply per track.
    pairs, unmatched = associate(tracks, detections, [0.05, 0.6])
    assert pairs == [(1, 0)] and unmatched == [1]


def test_a_hand_that_stops_is_not_gated_as_a_jump():
    from hand_pose_ros.core.filters.config import GateConfig
    from hand_pose_ros.core.filters.gates import motion_gate

    previous = _pose() + [0.0, 0.0, 0.5]
    predicted = previous + [0.12, 0.0, 0.0]     # the filter expected 1.2 m/s at 10 Hz
    stopped = previous + [0.01, 0.0, 0.0]       # the hand braked
    jumped = previous + [0.30, 0.0, 0.0]        # far from both: an outlier
    variance, std, present = np.full(21, 1e-5), np.full(21, 0.007), np.ones(21, bool)
    for observed, expected in ((stopped, True), (jumped, False)):
        accepted, reasons = motion_gate(GateConfig(), 0.1, observed, present, predicted,
                                        variance, previous, std)
        assert accepted.all() == expected and reasons['acceleration'].any() != expected
