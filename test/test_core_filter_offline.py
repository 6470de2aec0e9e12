"""Tests for offline (whole-sequence) filtering: two-way gates, RTS smoothing, gaps."""

import numpy as np
import pytest

from hand_pose_ros.core.filters import config_from_dict, FilterConfig, offline_filter
from hand_pose_ros.core.filters.offline import _gate_pass
from hand_pose_ros.core.kinematics import hand_from_angles

PERIOD = 1 / 30.0


def _sequence(frames, rng, noise=0.004):
    stamps = np.arange(frames) * PERIOD
    velocity = np.array([0.4, -0.2, 0.1])
    truth = hand_from_angles()[None] + np.array([0.0, 0.0, 0.5]) + stamps[:, None, None] * velocity
    return stamps, truth, truth + rng.normal(0.0, noise, truth.shape)


def test_offline_interpolates_short_gaps_and_removes_outliers():
    rng = np.random.default_rng(0)
    stamps, truth, observed = _sequence(90, rng)
    observed[40:44] = np.nan  # 4 missing frames
    observed[60, 8] += np.array([0.0, 0.08, 0.0])  # an outlier on the index tip
    observed[2, 12] += np.array([0.06, 0.0, 0.0])  # one at the start of the sequence
    output, valid = offline_filter(stamps, observed, None, FilterConfig())
    assert valid.all()
    errors = np.linalg.norm(output - truth, axis=2)
    raw = np.linalg.norm(observed - truth, axis=2)
    assert errors[40:44].max() < 0.006
    assert errors[60, 8] < 0.006 and errors[2, 12] < 0.006
    assert errors.mean() < 0.5 * np.nanmean(raw)


def test_offline_long_gap_is_invalid_and_splits_the_sequence():
    rng = np.random.default_rng(1)
    stamps, truth, observed = _sequence(60, rng)
    observed[20:35] = np.nan  # 0.5 s > max_gap_s
    observed[50:, 3] = np.nan
    output, valid = offline_filter(stamps, observed)
    assert not valid[20:35].any() and np.isnan(output[20:35]).all()
    assert valid[:20].all() and valid[35:50].all()
    assert not valid[50:, 3].any() and valid[50:, 4].all()
    assert np.linalg.norm(output[valid] - truth[valid], axis=1).max() < 0.012


def test_a_gap_of_exactly_max_gap_s_is_filled_at_epoch_stamps():
    # 10 Hz camera stamps near 2023 (nanoseconds to float seconds, as the node reads them):
    # one dropped frame is a gap of exactly max_gap_s (0.2 s), give or take rounding.
    rng = np.random.default_rng(2)
    stamps_ns = 1_700_000_000_594_374_602 + np.arange(12) * 100_000_000
    stamps = stamps_ns * 1e-9
    _, _, observed = _sequence(12, rng)
    observed[5] = np.nan
    assert np.diff(stamps)[4] + np.diff(stamps)[5] > 0.2 + 1e-9
    _, valid = offline_filter(stamps, observed)
    assert valid.all()


def test_offline_smoothing_follows_the_initial_speed_setting():
    rng = np.random.default_rng(3)
    stamps, _, observed = _sequence(20, rng)
    outputs = [offline_filter(stamps, observed, None,
                              config_from_dict({'kalman.initial_speed_m_s': speed}))[0]
               for speed in (0.01, 10.0)]
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-4


def test_offline_rejects_bad_input():
    with pytest.raises(ValueError, match='increasing'):
        offline_filter(np.zeros(3), np.zeros((3, 21, 3)))
    with pytest.raises(ValueError, match='keypoints'):
        offline_filter(np.arange(3.0), np.zeros((3, 20, 3)))
    with pytest.raises(ValueError, match='scores'):
        offline_filter(np.arange(3.0), np.zeros((3, 21, 3)), np.ones((3, 20)))


def test_two_clips_apart_are_filtered_as_if_alone():
    # Two recorded clips 2 s apart (more than stale_timeout_s): the second one's gates and
    # smoothing must not depend on the first.
    rng = np.random.default_rng(4)
    stamps, _, first = _sequence(30, rng)
    _, _, second = _sequence(30, rng)
    # Another, larger hand elsewhere: the first clip's bone calibration does not fit it.
    second = 1.25 * (second - second[:, :1]) + second[:, :1] + np.array([0.15, 0.05, 0.1])
    together, valid = offline_filter(np.concatenate([stamps, stamps[-1] + 2.0 + stamps]),
                                     np.concatenate([first, second]))
    alone, valid_alone = offline_filter(stamps, second)
    np.testing.assert_array_equal(valid[30:], valid_alone)
    np.testing.assert_allclose(together[30:], alone, atol=1e-12)
    # The two-way gates too: at the second clip's first frame nothing is known from the first.
    both = np.concatenate([first, second])
    rejected, known = _gate_pass(np.concatenate([stamps, stamps[-1] + 2.0 + stamps]), both,
                                 np.ones(both.shape[:2], bool), np.ones(both.shape[:2]),
                                 FilterConfig())
    rejected_alone, known_alone = _gate_pass(stamps, second, np.ones(second.shape[:2], bool),
                                             np.ones(second.shape[:2]), FilterConfig())
    assert not known[30].any()
    np.testing.assert_array_equal(known[30:], known_alone)
    np.testing.assert_array_equal(rejected[30:], rejected_alone)
