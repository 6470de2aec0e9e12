"""Evaluation metrics on constructed predictions with known errors."""

import numpy as np
from PIL import Image
import pytest

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.estimator import HandPose
from hand_pose_ros.core.evaluation import (
    draw_success_curves, evaluate_estimator, evaluate_localizer, joint_errors_mm,
    LabelledFrame, match_centers, success_curve, summarize_errors)
from hand_pose_ros.core.localizer import HandCandidate

INTRINSICS = CameraIntrinsics.from_preset('sr300')


def ground_truth(center, seed):
    return np.asarray(center) + np.random.default_rng(seed).uniform(-0.07, 0.07, (21, 3))


def frame(hands, mask=None):
    joints = np.stack(hands)
    if mask is None:
        mask = np.ones(joints.shape[:2], dtype=bool)
    depth = np.full((INTRINSICS.height, INTRINSICS.width), 0.5, dtype=np.float32)
    return LabelledFrame(depth, INTRINSICS, joints, mask)


class ShiftedEstimator:
    """
    Return the ground truth shifted by a known offset (a constructed prediction).

    With centres given it answers per centre; without, it reports ``detected`` hands: the
    ground-truth hands it was told about plus optional extra (false) hands.
    """

    def __init__(self, truth_by_center, offset_m, extra_centers=()):
        self.truth_by_center = truth_by_center
        self.offset_m = np.asarray(offset_m)
        self.extra_centers = list(extra_centers)
        self.last_timings = {'localize': 0.1, 'crop': 0.2, 'infer': 1.0, 'decode': 0.05}
        self.calls = []

    def _pose(self, joints, center):
        return HandPose(keypoints_xyz=joints + self.offset_m, scores=np.ones(21),
                        center_xyz=np.asarray(center), detection_score=1.0,
                        localizer_score=1.0)

    def estimate(self, depth, intrinsics, centers=None):
        self.calls.append(centers)
        if centers is not None:
            return [self._pose(self._truth(c), c) for c in centers]
        hands = [self._pose(j, c + 0.01) for c, j in self.truth_by_center]
        return hands + [self._pose(np.zeros((21, 3)) + c, c) for c in self.extra_centers]

    def _truth(self, center):
        for known, joints in self.truth_by_center:
            if np.allclose(known, center):
                return joints
        raise AssertionError('unexpected centre')


def test_joint_errors_and_mask():
    gt = ground_truth([0, 0, 0.5], 0)
    pred = gt + [0.003, 0.004, 0.0]  # 5 mm everywhere
    mask = np.ones(21, dtype=bool)
    mask[[0, 4]] = False
    errors = joint_errors_mm(pred, gt, mask)
    np.testing.assert_allclose(errors[mask], 5.0)
    assert np.isnan(errors[[0, 4]]).all()
    with pytest.raises(ValueError, match='21, 3'):
        joint_errors_mm(pred[:14], gt[:14], mask[:14])


def test_success_curve_and_summary():
    errors = np.full((4, 21), 5.0)
    errors[1, 3] = 30.0          # worst joint 30 mm
    errors[2, :] = np.nan
    errors[2, 0] = 12.0          # only one labelled joint, 12 mm
    errors[3, :] = np.inf        # missed hand
    curve = success_curve(errors, [0, 5, 12, 29, 30, 80])
    np.testing.assert_allclose(curve, [0, 0.25, 0.5, 0.5, 0.75, 0.75])
    summary = summarize_errors(errors, [0, 5, 12, 29, 30, 80])
    values = np.concatenate([np.full(21, 5.0), np.r_[np.full(20, 5.0), 30.0], [12.0]])
    assert summary['mean_mm'] == pytest.approx(values.mean())
    assert summary['median_mm'] == pytest.approx(5.0)
    assert summary['hands'] == {'evaluated': 3, 'missed': 1}
    assert summary['per_joint_mm']['wrist'] == pytest.approx((5 + 5 + 12) / 3)
    assert summary['per_joint_mm']['thumb_ip'] == pytest.approx((5 + 30) / 2)


def test_match_centers_one_to_one_nearest_first():
    truth = np.array([[0, 0, 0.5], [0.1, 0, 0.5]])
    found = np.array([[0.09, 0, 0.5], [0.02, 0, 0.5], [0.3, 0, 0.5]])
    np.testing.assert_array_equal(match_centers(found, truth, 0.05), [1, 0])
    np.testing.assert_array_equal(match_centers(found[:1], truth, 0.05), [-1, 0])
    np.testing.assert_array_equal(match_centers(np.zeros((0, 3)), truth, 0.05), [-1, -1])


def test_evaluate_estimator_oracle_gives_the_known_error():
    frames, truth = [], []
    for i in range(3):
        joints = ground_truth([0.02 * i, 0, 0.5], i)
        frames.append(frame([joints]))
        truth.append((joints.mean(axis=0), joints))
    est = ShiftedEstimator(truth, [0.0, 0.006, 0.008])  # 10 mm
    result = evaluate_estimator(est, frames, 'oracle', thresholds_mm=[9.0, 10.0 + 1e-9])
    assert result['mean_mm'] == pytest.approx(10.0)
    assert result['detection_rate'] == 1.0 and result['frames'] == 3
    assert result['success_curve']['fraction'] == [0.0, 1.0]
    assert result['timings_ms']['infer'] == pytest.approx(1.0)
    # The oracle centre is the centroid of the labelled joints.
    np.testing.assert_allclose(est.calls[0][0], truth[0][0])


def test_evaluate_estimator_detect_counts_misses_and_false_positives():
    a = ground_truth([-0.1, 0, 0.5], 1)
    b = ground_truth([0.1, 0, 0.5], 2)
    # The estimator finds hand a (centre 17 mm off) and a spurious hand; b is missed.
    est = ShiftedEstimator([(a.mean(axis=0), a)], [0.004, 0.0, 0.003],
                           extra_centers=[np.array([0.0, 0.2, 0.6])])
    result = evaluate_estimator(est, [frame([a, b])], 'detect', match_radius_m=0.05,
                                thresholds_mm=[4.0, 6.0])
    assert result['detection_rate'] == pytest.approx(0.5)
    assert result['false_positives'] == 1
    assert result['mean_mm'] == pytest.approx(5.0)
    assert result['center_error_mm']['mean'] == pytest.approx(np.sqrt(3) * 10.0)
    assert result['success_curve']['fraction'] == [0.0, 0.5]
    with pytest.raises(ValueError, match='center_mode'):
        evaluate_estimator(est, [], 'guess')


def test_hands_centred_outside_the_image_are_skipped():
    outside = ground_truth([3.0, 0, 0.5], 3)
    inside = ground_truth([0.0, 0, 0.5], 4)
    est = ShiftedEstimator([(inside.mean(axis=0), inside)], [0, 0, 0])
    result = evaluate_estimator(est, [frame([outside, inside])], 'oracle')
    assert result['hands_skipped_outside_image'] == 1
    assert result['mean_mm'] == pytest.approx(0.0)


def test_detect_searches_every_frame_and_ignores_hands_found_where_none_is_counted():
    outside = ground_truth([3.0, 0, 0.5], 3)
    inside = ground_truth([0.0, 0, 0.5], 4)
    # Frame 1: one hand, centre outside the image, found (neither a hit nor a false hand),
    # and a false hand. Frame 2: the same uncounted hand alone, and a false hand there too.
    est = ShiftedEstimator([(outside.mean(axis=0), outside), (inside.mean(axis=0), inside)],
                           [0, 0, 0], extra_centers=[np.array([0.0, 0.2, 0.6])])
    result = evaluate_estimator(est, [frame([outside, inside]), frame([outside])], 'detect')
    assert len(est.calls) == 2
    assert result['hands_skipped_outside_image'] == 2 and result['found_skipped_hands'] == 2
    assert result['false_positives'] == 2 + 1  # frame 2 reports the inside hand too
    assert result['detection_rate'] == 1.0


def test_streams_are_reset_and_hands_without_labelled_errors_stay_aligned():
    hand = ground_truth([0.0, 0, 0.5], 5)
    far = ground_truth([0.1, 0, 0.9], 6)

    class Stream(ShiftedEstimator):
        resets = 0

        def reset(self):
            self.resets += 1

    est = Stream([(hand.mean(axis=0), hand), (far.mean(axis=0), far)], [0, 0, 0])

    def pose(joints, center):
        near = np.allclose(joints, hand)
        return HandPose(keypoints_xyz=np.full((21, 3), np.nan) if near else joints + 0.002,
                        scores=np.ones(21), center_xyz=np.asarray(center),
                        detection_score=1.0, localizer_score=1.0)

    est._pose = pose
    frames = [LabelledFrame(f.depth_m, f.intrinsics, f.joints_xyz, f.joint_mask,
                            sequence_start=i != 1)
              for i, f in enumerate([frame([hand, far])] * 3)]
    result = evaluate_estimator(est, frames, 'detect')
    assert est.resets == 2
    # The near hand's joints are all NaN: found, with no error; the far hand is 3.5 mm off.
    assert result['mean_mm'] == pytest.approx(2.0 * np.sqrt(3))
    assert result['breakdown']['by_distance_m'][-1]['mean_mm'] == pytest.approx(2 * np.sqrt(3))


class FixedLocalizer:

    def __init__(self, centers):
        self.centers = centers

    def locate(self, depth_m, intrinsics, max_hands=2):
        return [HandCandidate(np.asarray(c), 0.9, (0, 0, 1, 1), 0.01, 10, False)
                for c in self.centers][:max_hands]


def test_evaluate_localizer_rates_and_centre_error():
    joints = ground_truth([0, 0, 0.5], 5)
    center = joints.mean(axis=0)
    frames = [frame([joints])] * 4
    result = evaluate_localizer(FixedLocalizer([center + [0.02, 0, 0]]), frames)
    assert result['detection_rate'] == 1.0 and result['hands'] == 4
    assert result['center_error_mm']['mean'] == pytest.approx(20.0)
    far = evaluate_localizer(FixedLocalizer([center + [0.06, 0, 0], center + [0.0, 0.3, 0]]),
                             frames)
    assert far['detection_rate'] == 0.0 and far['false_positives'] == 8
    assert far['false_positives_per_frame'] == 2.0 and far['center_error_mm'] is None
    assert result['detection_rate_mostly_visible'] is None
    # With visibility labels: a hand with most joints occluded is left out of that rate.
    hidden = frame([joints])
    hidden.visible = np.zeros((1, 21), dtype=bool)
    shown = frame([joints])
    shown.visible = np.ones((1, 21), dtype=bool)
    mixed = evaluate_localizer(FixedLocalizer([center]), [hidden, shown])
    assert mixed['hands_mostly_visible'] == 1 and mixed['detection_rate_mostly_visible'] == 1.0
    # A candidate on a hand centred outside the image is neither a hit nor a false hand.
    outside = ground_truth([3.0, 0, 0.5], 3)
    edge = evaluate_localizer(FixedLocalizer([outside.mean(axis=0), center]),
                              [frame([outside, joints])])
    assert edge['hands'] == 1 and edge['detection_rate'] == 1.0
    assert edge['false_positives'] == 0


def test_success_curve_png(tmp_path):
    path = tmp_path / 'curve.png'
    thresholds = np.arange(0, 81)
    draw_success_curves({'a': (thresholds, np.clip(thresholds / 40, 0, 1)),
                         'b': (thresholds, np.clip(thresholds / 60, 0, 1))}, path)
    with Image.open(path) as image:
        assert image.size == (640, 480)
        pixels = np.asarray(image.convert('RGB'))
    # Both curves are drawn in their colours.
    assert np.any(np.all(pixels == (31, 119, 180), axis=-1))
    assert np.any(np.all(pixels == (214, 39, 40), axis=-1))


class ScoredHandsEstimator:
    """Find the given hands (confident joints) and a false hand (unsure joints)."""

    def __init__(self, hands, false_confidence=0.2):
        self.hands = hands
        self.false_confidence = false_confidence

    def estimate(self, depth, intrinsics):
        def pose(joints, confidence):
            return HandPose(keypoints_xyz=joints, scores=np.full(21, confidence),
                            center_xyz=joints.mean(axis=0), detection_score=0.5,
                            localizer_score=0.5)

        false = np.zeros((21, 3)) + self.hands[0].mean(axis=0) + [0.0, 0.2, 0.1]
        return [pose(j, 0.8) for j in self.hands] + [pose(false, self.false_confidence)]


def test_fit_hand_score_separates_hands_from_false_hands():
    from hand_pose_ros.core.evaluation import fit_hand_score

    a = ground_truth([-0.1, 0, 0.5], 1)
    b = ground_truth([0.1, 0, 0.5], 2)
    frames = [frame([a, b])] * 4
    score, counts = fit_hand_score(ScoredHandsEstimator([a, b]), frames)
    assert counts == {'hands': 8, 'false_hands': 4}
    assert score.joint_weight > 0
    assert score(0.5, np.full(21, 0.8)) > 0.95 and score(0.5, np.full(21, 0.2)) < 0.05
    # Only hands, nothing false to learn from: a clear error.
    with pytest.raises(ValueError, match='false hands'):
        fit_hand_score(ScoredHandsEstimator([a, b]), [frame([a, b, a + [0.0, 0.2, 0.1]])])


class ScriptedEstimator:
    """Report the hands of a script, one list per frame."""

    def __init__(self, hands_per_frame):
        self.hands_per_frame = iter(hands_per_frame)
        self.last_timings = {'infer': 1.0}

    def estimate(self, depth, intrinsics, color=None):
        return next(self.hands_per_frame)


def test_filtered_hands_are_those_the_filter_publishes():
    from hand_pose_ros.core.evaluation import FilteredEstimator
    from hand_pose_ros.core.filters import config_from_dict
    from hand_pose_ros.core.kinematics import hand_from_angles

    turn = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    hand = hand_from_angles() @ turn.T + [0.0, 0.0, 0.5]
    depth = np.full((INTRINSICS.height, INTRINSICS.width), 0.5, dtype=np.float32)
    # Five frames of a still hand; the second also has a false hand; a new sequence starts
    # at the fourth.
    frames = [LabelledFrame(depth, INTRINSICS, hand[None], np.ones((1, 21), bool),
                            sequence_start=i in (0, 3)) for i in range(5)]

    def pose(joints):
        return HandPose(keypoints_xyz=joints, scores=np.full(21, 0.9),
                        center_xyz=joints.mean(axis=0), detection_score=1.0,
                        localizer_score=1.0)

    script = [[pose(hand)] for _ in range(5)]
    script[1].append(pose(hand + [0.3, 0.1, 0.1]))
    result = evaluate_estimator(FilteredEstimator(ScriptedEstimator(script)), frames, 'detect')
    # A new track shows from its second detection, in each sequence; the false hand, seen
    # once, never shows; the still hand is published where it is.
    assert result['detection_rate'] == pytest.approx(3 / 5)
    assert result['false_positives'] == 0 and result['mean_mm'] < 0.01
    at_once = FilteredEstimator(ScriptedEstimator(script),
                                config_from_dict({'tracking.min_detections': 1}))
    result = evaluate_estimator(at_once, frames, 'detect')
    # Published at once, the false hand shows, and coasts on in the next frame.
    assert result['detection_rate'] == 1.0 and result['false_positives'] == 2


def test_error_breakdown_groups_hands_by_distance_border_and_visibility():
    from hand_pose_ros.core.evaluation import error_breakdown

    errors = np.full((4, 21), 10.0)
    errors[1] = 30.0                       # a close hand the border cuts
    errors[3, :10] = np.nan                # half its joints unlabelled
    visible = np.ones((4, 21), dtype=bool)
    visible[2, :7] = False                 # a third of hand 2 hidden, 50 mm off there
    errors[2, :7] = 50.0
    result = error_breakdown(errors, [0.5, 0.3, 0.8, 0.8], [False, True, False, False],
                             visible)
    by_distance = {tuple(row['range']): row for row in result['by_distance_m']}
    assert by_distance[(0.0, 0.4)] == {'range': [0.0, 0.4], 'hands': 1, 'mean_mm': 30.0}
    assert by_distance[(0.4, 0.55)]['mean_mm'] == 10.0
    assert by_distance[(0.7, None)]['hands'] == 2   # the open last bin
    assert by_distance[(0.55, 0.7)] == {'range': [0.55, 0.7], 'hands': 0, 'mean_mm': None}
    assert result['cut_by_border'] == {'hands': 1, 'mean_mm': 30.0}
    labelled = np.isfinite(errors)
    assert result['inside_image']['mean_mm'] == pytest.approx(
        np.nanmean(errors[[0, 2, 3]]))
    assert result['hidden_joints_mm'] == 50.0 and result['visible_joints_mm'] == pytest.approx(
        np.nanmean(np.where(visible & labelled, errors, np.nan)))
    assert result['hidden_joint_fraction'] == pytest.approx(7 / labelled.sum())
    # The worst tenth of four hands is one hand: hand 1 (30 mm mean) over 10 + 30 + 23.3 + 10.
    means = np.nanmean(errors, axis=1)
    assert result['worst_share_of_error'] == pytest.approx(30.0 / means.sum())
    assert result['mean_without_worst_mm'] == pytest.approx(np.mean([10.0, means[2], 10.0]))
    assert [row['hands'] for row in result['by_visible_fraction']] == [0, 1, 0, 3]
    assert 'visible_joints_mm' not in error_breakdown(errors, [0.5] * 4, [False] * 4)
    assert error_breakdown(np.zeros((0, 21)), [], []) is None


def test_evaluate_estimator_reports_the_breakdown():
    near = ground_truth([0.0, 0, 0.3], 5)
    far = ground_truth([0.0, 0, 0.9], 6)
    frames = [frame([near]), frame([far])]
    est = ShiftedEstimator([(j.mean(axis=0), j) for j in (near, far)], [0.0, 0.006, 0.008])
    breakdown = evaluate_estimator(est, frames, 'oracle')['breakdown']
    assert [row['hands'] for row in breakdown['by_distance_m']] == [1, 0, 0, 1]
    assert breakdown['inside_image'] == {'hands': 2, 'mean_mm': pytest.approx(10.0)}
    assert 'visible_joints_mm' not in breakdown   # these frames do not say what is hidden
