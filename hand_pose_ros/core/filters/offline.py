"""
Offline (whole-sequence) filtering of one hand: for datasets and self-training.

1. anatomy: frames failing the hand-level checks are dropped, joints blamed by the bone
   checks become missing (offline, interpolation beats repair);
2. motion gates in both directions: the online gate (constant-velocity prediction) runs
   forwards and backwards in time; a joint is rejected when both passes reject it, or when
   one rejects it while the other had no prediction yet (start of a pass);
3. bidirectional smoothing: a constant-velocity Rauch-Tung-Striebel smoother per joint,
   which has no lag and fills gaps up to ``max_gap_s`` with the motion that joins both
   ends (linear interpolation for constant velocity); longer gaps split the sequence and
   their frames are invalid.
"""

import collections

import numpy as np

from hand_pose_ros.core.filters import anatomy
from hand_pose_ros.core.filters.config import config_from_dict, FilterConfig
from hand_pose_ros.core.filters.pipeline import _MIN_SCORE_FOR_NOISE, _STAMP_EPS_S, _Track
from hand_pose_ros.core.skeleton import NUM_JOINTS


def _gate_pass(stamps_s, keypoints, present, scores, config):
    """
    Run the online gates over a sequence; return (rejected (T, 21), known (T, 21)).

    As the online filter drops a track not detected for ``stale_timeout_s``, the gates start
    afresh after such a gap (e.g. between two recorded clips).
    """
    track = _Track(0, config)
    rejected = np.zeros(present.shape, bool)
    known = np.zeros(present.shape, bool)
    stats = collections.Counter()
    for t, stamp in enumerate(stamps_s):
        if (track.last_detection_s is not None
                and stamp - track.last_detection_s > config.stale_timeout_s + _STAMP_EPS_S):
            track = _Track(0, config)
        known[t] = track.kalman.initialised
        if not np.any(present[t]):
            track.step(stamp, None, stats)
            continue
        out = track.step(stamp, (keypoints[t], scores[t], present[t]), stats)
        rejected[t] = out.rejected
    return rejected, known


def rts_smooth(stamps_s, points, observed, measurement_std_m, process_noise_m_s2,
               max_gap_s, initial_speed_m_s=1.0):
    """
    Smooth (T, N, 3) points with a constant-velocity Rauch-Tung-Striebel smoother.

    :param stamps_s: (T,) increasing stamps, seconds.
    :param points: (T, N, 3) observations (ignored where not observed).
    :param observed: (T, N) bool.
    :param measurement_std_m: (T, N) per-axis measurement noise, metres.
    :param process_noise_m_s2: white-acceleration standard deviation.
    :param max_gap_s: longer runs without observations split a point's sequence (a gap of
        exactly ``max_gap_s`` does not, whatever the rounding of the stamps).
    :param initial_speed_m_s: prior standard deviation of a sequence's starting speed.
    :return: (smoothed (T, N, 3), valid (T, N) bool).
    """
    num_frames, num_points = observed.shape
    out = np.full((num_frames, num_points, 3), np.nan)
    valid = np.zeros((num_frames, num_points), bool)
    q = process_noise_m_s2 ** 2
    for n in range(num_points):
        frames = np.flatnonzero(observed[:, n])
        if len(frames) == 0:
            continue
        # Split where consecutive observations are further apart than max_gap_s.
        splits = np.flatnonzero(np.diff(stamps_s[frames]) > max_gap_s + _STAMP_EPS_S) + 1
        for segment in np.split(frames, splits):
            first, last = segment[0], segment[-1]
            span = np.arange(first, last + 1)
            is_obs = observed[span, n]
            x_f = np.zeros((len(span), 2, 3))
            p_f = np.zeros((len(span), 2, 2))
            x_p = np.zeros((len(span), 2, 3))
            p_p = np.zeros((len(span), 2, 2))
            transitions = np.zeros((len(span), 2, 2))
            x = np.zeros((2, 3))
            x[0] = points[first, n]
            p = np.diag([measurement_std_m[first, n] ** 2, initial_speed_m_s ** 2])
            for k, t in enumerate(span):
                if k > 0:
                    dt = stamps_s[t] - stamps_s[span[k - 1]]
                    f = np.array([[1.0, dt], [0.0, 1.0]])
                    qk = q * np.array([[dt ** 4 / 4, dt ** 3 / 2], [dt ** 3 / 2, dt ** 2]])
                    x = f @ x
                    p = f @ p @ f.T + qk
                    transitions[k] = f
                x_p[k], p_p[k] = x, p
                if is_obs[k] and k > 0:
                    s = p[0, 0] + measurement_std_m[t, n] ** 2
                    gain = p[:, 0] / s
                    x = x + np.outer(gain, points[t, n] - x[0])
                    p = p - np.outer(gain, p[0])
                x_f[k], p_f[k] = x, p
            x_s, p_s = x_f[-1], p_f[-1]
            smoothed = np.zeros((len(span), 3))
            smoothed[-1] = x_s[0]
            for k in range(len(span) - 2, -1, -1):
                c = p_f[k] @ transitions[k + 1].T @ np.linalg.inv(p_p[k + 1])
                x_s = x_f[k] + c @ (x_s - x_p[k + 1])
                p_s = p_f[k] + c @ (p_s - p_p[k + 1]) @ c.T
                smoothed[k] = x_s[0]
            out[span, n] = smoothed
            valid[span, n] = True
    return out, valid


def offline_filter(stamps_s, keypoints, scores=None, config=None):
    """
    Filter a whole sequence of one hand (anatomy, two-way gates, RTS smoothing, gaps).

    :param stamps_s: (T,) strictly increasing stamps, seconds.
    :param keypoints: (T, 21, 3) keypoints, metres, NaN for missing joints or frames.
    :param scores: (T, 21) confidences in [0, 1] or None (all 1).
    :param config: FilterConfig (anatomy, gates, kalman, max_gap_s, min_score are used).
    :return: (keypoints (T, 21, 3) filtered, NaN where invalid; valid (T, 21) bool).
    """
    config = (config if config is not None else FilterConfig()).validate()
    stamps_s = np.asarray(stamps_s, dtype=np.float64)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if stamps_s.ndim != 1 or keypoints.shape != (len(stamps_s), NUM_JOINTS, 3):
        raise ValueError(
            f'expected stamps_s (T,) and keypoints (T, 21, 3), got {stamps_s.shape} and '
            f'{keypoints.shape}')
    if len(stamps_s) > 1 and np.any(np.diff(stamps_s) <= 0):
        raise ValueError('stamps_s must be strictly increasing')
    if scores is None:
        scores = np.ones(keypoints.shape[:2])
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != keypoints.shape[:2]:
        raise ValueError(f'scores must be {keypoints.shape[:2]}, got {scores.shape}')
    scores = np.where(np.isfinite(scores), np.clip(scores, 0.0, 1.0), 0.0)
    present = np.all(np.isfinite(keypoints), axis=2) & (scores >= config.min_score)
    for t in range(len(stamps_s)):
        if anatomy.hand_level_problems(config.anatomy, keypoints[t], present[t]):
            present[t] = False
    # Gates see the anatomy too (invalidation, no repair) through the online track.
    gate_config = config_from_dict(
        {'anatomy.action': 'invalidate_joints', 'smoother': 'none'}, base=config)
    rejected_f, known_f = _gate_pass(stamps_s, keypoints, present, scores, gate_config)
    back = slice(None, None, -1)
    rejected_b, known_b = _gate_pass(-stamps_s[back], keypoints[back], present[back],
                                     scores[back], gate_config)
    rejected_b, known_b = rejected_b[back], known_b[back]
    rejected = (rejected_f & (rejected_b | ~known_b)) | (rejected_b & ~known_f)
    observed = present & ~rejected
    measurement_std = config.kalman.measurement_noise_m / np.clip(
        scores, _MIN_SCORE_FOR_NOISE, 1.0)
    return rts_smooth(stamps_s, keypoints, observed, measurement_std,
                      config.kalman.process_noise_m_s2, config.max_gap_s,
                      config.kalman.initial_speed_m_s)
