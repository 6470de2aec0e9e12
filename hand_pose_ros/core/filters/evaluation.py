"""
Evaluation of the hand filters: estimator-like corruption and the figures of merit.

Corruption of a clean sequence (:func:`corrupt_sequence`): Gaussian noise per axis, gross
outliers (random direction, heavy-tailed Pareto magnitude from ``outlier_min_m``), swaps of
the PIP/DIP/tip joints of two neighbouring fingers for one frame, dropped frames (no message
at all: the stamps skip) and dropped hands (a message without the hand, bursts of up to
``drop_hand_max_frames`` frames).

Metrics (:func:`sequence_metrics`):

* mean 3D error (mm) over the frames and joints where the hand was detected and the output is
  valid, and the fraction of such joints that are valid (coverage);
* acceleration error (mm/frame^2, shared reference): mean over t, j of
  ``|(P[t-1] - 2 P[t] + P[t+1]) - (G[t-1] - 2 G[t] + G[t+1])|`` over triplets of consecutive
  frames (no dropped frame in between) with the hand detected and the output valid;
* lag (ms): on fast frames (wrist speed above half its maximum) the time shift of the ground
  truth that best matches the output (0.1-frame steps; positive = output behind);
* outlier recall: fraction of gross injected errors (>= outlier_min_m) rejected or repaired;
  false-rejection rate: the same over joints without injected corruption;
* gap error (mm): mean error over frames where the hand was not detected, in gaps of at most
  ``max_gap_frames`` frames, where the output is valid (predicted or interpolated).
"""

import dataclasses

import numpy as np

from hand_pose_ros.core.filters.offline import offline_filter
from hand_pose_ros.core.filters.pipeline import HandFilter, Observation
from hand_pose_ros.core.skeleton import FINGER_JOINTS, NUM_JOINTS, WRIST

_SHIFT_STEP_FRAMES = 0.1
_MAX_SHIFT_FRAMES = 4.0
_FAST_FRACTION = 0.5


@dataclasses.dataclass
class CorruptionConfig:
    noise_m: float = 0.007
    outlier_prob: float = 0.02
    outlier_min_m: float = 0.05
    outlier_max_m: float = 0.3
    outlier_pareto_shape: float = 2.0
    swap_prob: float = 0.02
    drop_frame_prob: float = 0.05
    drop_hand_prob: float = 0.02
    drop_hand_max_frames: int = 5


@dataclasses.dataclass
class CorruptedSequence:
    """
    A corrupted sequence (frames that were dropped entirely are removed).

    :param stamps_s: (T,) stamps of the frames that exist.
    :param gt: (T, 21, 3) ground truth, metres.
    :param observed: (T, 21, 3) corrupted keypoints, NaN where the hand was dropped.
    :param detected: (T,) bool, hand present in the frame's message.
    :param gross: (T, 21) bool, injected errors of at least outlier_min_m.
    :param corrupted: (T, 21) bool, any injected non-Gaussian error (small swaps included).
    :param frame_period_s: nominal frame period.
    :param full_stamps_s: (T0,) stamps of the clean sequence (for the lag).
    :param full_gt: (T0, 21, 3) clean sequence.
    """

    stamps_s: np.ndarray
    gt: np.ndarray
    observed: np.ndarray
    detected: np.ndarray
    gross: np.ndarray
    corrupted: np.ndarray
    frame_period_s: float
    full_stamps_s: np.ndarray
    full_gt: np.ndarray


def corrupt_sequence(stamps_s, joints_xyz, rng, config=None):
    """Return a CorruptedSequence of a clean (T, 21, 3) sequence (see the module docstring)."""
    config = config if config is not None else CorruptionConfig()
    stamps_s = np.asarray(stamps_s, dtype=np.float64)
    gt = np.asarray(joints_xyz, dtype=np.float64)
    num_frames = len(stamps_s)
    observed = gt + rng.normal(0.0, config.noise_m, gt.shape)
    injected = np.zeros(gt.shape)
    outlier = rng.random((num_frames, NUM_JOINTS)) < config.outlier_prob
    count = int(np.count_nonzero(outlier))
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    magnitude = np.minimum(config.outlier_min_m * (1.0 + rng.pareto(
        config.outlier_pareto_shape, count)), config.outlier_max_m)
    injected[outlier] = direction * magnitude[:, None]
    for t in np.flatnonzero(rng.random(num_frames) < config.swap_prob):
        first = rng.integers(0, 4)
        a, b = FINGER_JOINTS[first, 1:], FINGER_JOINTS[first + 1, 1:]
        injected[t, a] += gt[t, b] - gt[t, a]
        injected[t, b] += gt[t, a] - gt[t, b]
    observed += injected
    size = np.linalg.norm(injected, axis=2)
    corrupted = size > 0.0
    gross = size >= config.outlier_min_m
    detected = np.ones(num_frames, bool)
    t = 0
    while t < num_frames:
        if rng.random() < config.drop_hand_prob:
            length = int(rng.integers(1, config.drop_hand_max_frames + 1))
            detected[t:t + length] = False
            t += length + 1
        else:
            t += 1
    observed[~detected] = np.nan
    keep = rng.random(num_frames) >= config.drop_frame_prob
    keep[0] = True
    period = float(np.median(np.diff(stamps_s))) if num_frames > 1 else 1.0 / 30.0
    return CorruptedSequence(
        stamps_s=stamps_s[keep], gt=gt[keep], observed=observed[keep], detected=detected[keep],
        gross=gross[keep] & detected[keep, None], corrupted=corrupted[keep] & detected[keep, None],
        frame_period_s=period, full_stamps_s=stamps_s, full_gt=gt)


def run_raw(sequence):
    """Return (output, valid, rejected) of the unfiltered input."""
    valid = np.all(np.isfinite(sequence.observed), axis=2)
    return sequence.observed.copy(), valid, np.zeros_like(valid)


def run_online(sequence, config):
    """Run a HandFilter over a single-hand sequence; return (output, valid, rejected)."""
    hand_filter = HandFilter(config)
    num_frames = len(sequence.stamps_s)
    output = np.full((num_frames, NUM_JOINTS, 3), np.nan)
    valid = np.zeros((num_frames, NUM_JOINTS), bool)
    rejected = np.zeros((num_frames, NUM_JOINTS), bool)
    hand_id = None
    for t, stamp in enumerate(sequence.stamps_s):
        observations = [Observation(sequence.observed[t])] if sequence.detected[t] else []
        tracks = hand_filter.update(stamp, observations)
        if not tracks:
            if sequence.detected[t]:
                rejected[t] = True
            continue
        # One hand: follow the first track; a new id after a loss is the same hand.
        track = next((h for h in tracks if h.hand_id == hand_id), tracks[0])
        hand_id = track.hand_id
        output[t] = track.keypoints_xyz
        valid[t] = track.valid
        if sequence.detected[t]:
            rejected[t] = track.rejected | track.predicted
    return output, valid, rejected


def run_offline(sequence, config):
    """Run offline_filter over the sequence; return (output, valid, None)."""
    output, valid = offline_filter(sequence.stamps_s, sequence.observed, None, config)
    return output, valid, None


def _consecutive_triplets(stamps_s, period_s):
    gaps = np.diff(stamps_s)
    ok = np.abs(gaps - period_s) < 0.25 * period_s
    return np.flatnonzero(ok[:-1] & ok[1:]) + 1


def lag_ms(sequence, output, valid):
    """Return the best time shift (ms) of the ground truth onto the output on fast frames."""
    full_t, full_gt = sequence.full_stamps_s, sequence.full_gt
    speed = np.zeros(len(full_t))
    speed[1:] = np.linalg.norm(np.diff(full_gt[:, WRIST], axis=0), axis=1) / np.diff(full_t)
    fast_full = speed > _FAST_FRACTION * speed.max()
    fast = np.interp(sequence.stamps_s, full_t, fast_full.astype(float)) > 0.5
    use = fast & np.all(valid, axis=1)
    if np.count_nonzero(use) < 3:
        return float('nan')
    steps = int(round(_MAX_SHIFT_FRAMES / _SHIFT_STEP_FRAMES))
    shifts = np.arange(-steps, steps + 1) * _SHIFT_STEP_FRAMES
    errors = []
    flat_gt = full_gt.reshape(len(full_t), -1)
    for shift in shifts:
        times = sequence.stamps_s[use] - shift * sequence.frame_period_s
        shifted = np.stack([np.interp(times, full_t, flat_gt[:, k])
                            for k in range(flat_gt.shape[1])], axis=1)
        errors.append(np.linalg.norm(
            output[use] - shifted.reshape(-1, NUM_JOINTS, 3), axis=2).mean())
    return float(shifts[int(np.argmin(errors))] * sequence.frame_period_s * 1000.0)


def sequence_metrics(sequence, output, valid, rejected, max_gap_frames=5):
    """Return a dict of the figures of merit of one output (see the module docstring)."""
    error = np.linalg.norm(output - sequence.gt, axis=2) * 1000.0
    seen = sequence.detected[:, None] & valid
    metrics = {
        'mean_error_mm': float(error[seen].mean()) if np.any(seen) else float('nan'),
        'coverage': float(np.count_nonzero(seen)
                          / max(np.count_nonzero(sequence.detected) * NUM_JOINTS, 1)),
    }
    centre = _consecutive_triplets(sequence.stamps_s, sequence.frame_period_s)
    frames = np.stack([centre - 1, centre, centre + 1])
    ok = np.all(sequence.detected[frames], axis=0)[:, None] & np.all(valid[frames], axis=0)
    accel_p = output[centre - 1] - 2 * output[centre] + output[centre + 1]
    accel_g = sequence.gt[centre - 1] - 2 * sequence.gt[centre] + sequence.gt[centre + 1]
    accel = np.linalg.norm(accel_p - accel_g, axis=2) * 1000.0
    metrics['accel_error_mm_f2'] = float(accel[ok].mean()) if np.any(ok) else float('nan')
    metrics['lag_ms'] = lag_ms(sequence, output, valid)
    if rejected is not None:
        good = sequence.detected[:, None] & ~sequence.corrupted
        metrics['outlier_recall'] = (float(rejected[sequence.gross].mean())
                                     if np.any(sequence.gross) else float('nan'))
        metrics['false_rejection'] = float(rejected[good].mean()) if np.any(good) else 0.0
    else:
        metrics['outlier_recall'] = metrics['false_rejection'] = float('nan')
    in_gap = _short_gap_frames(sequence, max_gap_frames)
    gap = in_gap[:, None] & valid
    metrics['gap_error_mm'] = float(error[gap].mean()) if np.any(gap) else float('nan')
    metrics['gap_coverage'] = float(np.count_nonzero(gap)
                                    / max(np.count_nonzero(in_gap) * NUM_JOINTS, 1))
    return metrics


def _short_gap_frames(sequence, max_gap_frames):
    """Return (T,) bool: frames without the hand inside a gap of <= max_gap_frames periods."""
    missing = ~sequence.detected
    in_gap = np.zeros(len(missing), bool)
    t = 0
    while t < len(missing):
        if not missing[t]:
            t += 1
            continue
        end = t
        while end < len(missing) and missing[end]:
            end += 1
        closed = t > 0 and end < len(missing)
        if closed:
            span = (sequence.stamps_s[end] - sequence.stamps_s[t - 1]) / sequence.frame_period_s
            if span - 1 <= max_gap_frames + 0.5:
                in_gap[t:end] = True
        t = end
    return in_gap


def pooled(metric_dicts, weights):
    """Return the weighted mean of each metric over sequences (NaNs ignored)."""
    keys = metric_dicts[0].keys()
    out = {}
    for key in keys:
        values = np.array([m[key] for m in metric_dicts], dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        finite = np.isfinite(values)
        out[key] = float(np.sum(values[finite] * w[finite]) / np.sum(w[finite])) \
            if np.any(finite) else float('nan')
    return out
