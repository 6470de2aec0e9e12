"""Tests for the One Euro and constant-velocity Kalman filters (stamp driven)."""

import numpy as np
import pytest

from hand_pose_ros.core.filters.config import KalmanConfig, OneEuroConfig
from hand_pose_ros.core.filters.kalman import ConstantVelocityKalman
from hand_pose_ros.core.filters.one_euro import OneEuroFilter

NOISE_M = 0.007


def _filters():
    return {'one_euro': OneEuroFilter(OneEuroConfig(), 2),
            'kalman': ConstantVelocityKalman(KalmanConfig(), 2)}


def _static_error_ratio(smoother):
    rng = np.random.default_rng(0)
    truth = np.array([[0.1, 0.0, 0.5], [0.0, 0.1, 0.6]])
    errors_in, errors_out = [], []
    for k in range(300):
        noisy = truth + rng.normal(0.0, NOISE_M, truth.shape)
        out = smoother.update(k / 30.0, noisy)
        if k >= 60:
            errors_in.append(np.linalg.norm(noisy - truth, axis=1))
            errors_out.append(np.linalg.norm(out - truth, axis=1))
    return np.mean(errors_out) / np.mean(errors_in)


@pytest.mark.parametrize('name', ['one_euro', 'kalman'])
def test_reduces_noise_on_a_static_point(name):
    # Defaults are tuned for little lag in fast motion, so they smooth moderately at rest.
    assert _static_error_ratio(_filters()[name]) < 0.8
    strong = {'one_euro': OneEuroFilter(OneEuroConfig(min_cutoff_hz=0.5, beta=0.0), 2),
              'kalman': ConstantVelocityKalman(KalmanConfig(process_noise_m_s2=0.02), 2)}
    assert _static_error_ratio(strong[name]) < 0.35


@pytest.mark.parametrize('name', ['one_euro', 'kalman'])
def test_follows_a_ramp_with_variable_frame_rate(name):
    smoother = _filters()[name]
    rng = np.random.default_rng(1)
    velocity = np.array([1.0, -0.5, 0.2])  # ~1.1 m/s
    # Irregular stamps: 30 Hz with jitter and dropped frames.
    stamps = np.cumsum(rng.choice([1 / 30, 1 / 30, 2 / 30, 1 / 25], size=150))
    lags = []
    for stamp in stamps:
        truth = np.stack([velocity * stamp, velocity * stamp + 0.1])
        out = smoother.update(stamp, truth)
        if stamp > 1.5:
            lags.append(np.linalg.norm(out - truth, axis=1).max())
    speed = np.linalg.norm(velocity)
    # Kalman: no steady-state lag on a ramp; One Euro: well under one frame of travel.
    limit = 0.002 if name == 'kalman' else 0.5 * speed / 30.0
    assert max(lags) < limit


def test_one_euro_cutoff_rises_with_speed():
    slow = OneEuroFilter(OneEuroConfig(beta=0.0), 1)
    fast = OneEuroFilter(OneEuroConfig(beta=20.0), 1)
    for k in range(60):
        point = np.array([[1.0 * k / 30.0, 0.0, 0.0]])
        out_slow = slow.update(k / 30.0, point)
        out_fast = fast.update(k / 30.0, point)
    assert np.linalg.norm(out_fast - point) < 0.3 * np.linalg.norm(out_slow - point)


def test_one_euro_masked_points_keep_state_and_reset():
    smoother = OneEuroFilter(OneEuroConfig(), 2)
    smoother.update(0.0, np.zeros((2, 3)))
    out = smoother.update(0.1, np.ones((2, 3)), mask=np.array([True, False]))
    np.testing.assert_array_equal(out[1], np.zeros(3))
    assert 0.0 < out[0, 0] < 1.0
    smoother.reset(np.array([True, False]))
    out = smoother.update(0.2, np.full((2, 3), 2.0), mask=np.array([True, False]))
    np.testing.assert_array_equal(out[0], np.full(3, 2.0))  # restarted on the sample


def test_kalman_prediction_extrapolates_and_grows_uncertain():
    kalman = ConstantVelocityKalman(KalmanConfig(), 1)
    for k in range(30):
        kalman.update(k / 30.0, np.array([[0.5 * k / 30.0, 0.0, 0.0]]))
    last = 29 / 30.0
    predicted, variance_soon = kalman.predict(last + 1 / 30.0)
    predicted_late, variance_late = kalman.predict(last + 0.2)
    assert predicted_late[0, 0] == pytest.approx(0.5 * (last + 0.2), abs=0.002)
    assert variance_late[0] > variance_soon[0] > 0.0
    assert predicted[0, 0] == pytest.approx(0.5 * (last + 1 / 30.0), abs=0.001)
    # A point that was never measured stays unknown.
    kalman.reset()
    assert not kalman.initialised.any()
    assert np.isnan(kalman.predict(2.0)[0]).all()
