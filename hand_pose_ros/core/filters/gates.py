"""
Motion gates: reject keypoints that move implausibly before they reach the smoother.

Three tests per joint, against the track's constant-velocity prediction and last estimate:

* velocity: the speed implied by the jump from the last estimate, for the palm joints
  (wrist, thumb CMC, finger MCPs) absolutely and for finger joints relative to the palm,
  must stay below the configured maxima (plus the noise allowance);
* acceleration: the distance between observation and prediction, or between observation
  and the last estimate, must stay below ``0.5 * max_acceleration * dt^2`` plus
  ``noise_sigmas`` standard deviations of the prediction and measurement noise. The second
  reference is a hand that stopped: a velocity estimated from noisy detections can carry
  the prediction past a hand that braked, and the good detection must not be rejected
  for that;
* swaps: when the distal joints of two neighbouring fingers fit each other's predictions much
  better than their own, both fingers are rejected for this frame.
"""

import numpy as np

from hand_pose_ros.core.rotations import norm
from hand_pose_ros.core.skeleton import FINGER_JOINTS, MCPS, NUM_JOINTS, WRIST

# Joints that move with the palm (rigid-ish): wrist, thumb CMC and the four finger MCPs.
PALM_GATE_JOINTS = np.array([WRIST, 1, *MCPS[1:].tolist()], dtype=np.int64)
_IS_PALM = np.zeros(NUM_JOINTS, bool)
_IS_PALM[PALM_GATE_JOINTS] = True
# Finger pairs whose distal joints (the last three of each chain) can be confused.
SWAP_PAIRS = ((0, 1), (1, 2), (2, 3), (3, 4))
_SWAP_MIN_GAIN = 0.5
_DISTAL = FINGER_JOINTS[:, 1:]
_SWAP_FIRST, _SWAP_SECOND = np.array(SWAP_PAIRS).T


def _palm_reference(points, mask):
    """Return the mean of the palm joints present in mask (NaN if none)."""
    use = _IS_PALM & mask
    if not np.any(use):
        return np.full(3, np.nan)
    return points[use].mean(axis=0)


def motion_gate(config, dt_s, observed, present, predicted, predicted_var, previous,
                measurement_std_m):
    """
    Decide which observed joints are plausible given the motion model.

    :param config: GateConfig.
    :param dt_s: time since the previous estimate, seconds (> 0).
    :param observed: (21, 3) observed keypoints, metres.
    :param present: (21,) bool, joints observed with enough score.
    :param predicted: (21, 3) predicted keypoints at this stamp (NaN where unknown).
    :param predicted_var: (21,) per-axis variance of the prediction, m^2.
    :param previous: (21, 3) previous estimates (NaN where unknown).
    :param measurement_std_m: (21,) per-axis measurement noise, metres.
    :return: (accepted (21,) bool, reasons dict name -> (21,) bool of rejected joints).
    """
    known = present & np.all(np.isfinite(predicted), axis=1) & np.all(
        np.isfinite(previous), axis=1)
    reasons = {}
    if not config.enabled or not np.any(known):
        return present.copy(), reasons
    sigma = np.sqrt(predicted_var + measurement_std_m ** 2)
    noise = config.noise_sigmas * sigma
    residual = norm(observed - predicted)
    jump = norm(observed - previous)
    accel_limit = 0.5 * config.max_acceleration_m_s2 * dt_s ** 2 + noise
    reasons['acceleration'] = known & (residual > accel_limit) & (jump > accel_limit)

    palm_limit = config.palm_max_speed_m_s * dt_s + noise
    velocity = known & _IS_PALM & (jump > palm_limit)
    palm_now = _palm_reference(observed, known)
    palm_before = _palm_reference(previous, known)
    if np.all(np.isfinite(palm_now)) and np.all(np.isfinite(palm_before)):
        relative_jump = norm((observed - palm_now) - (previous - palm_before))
        finger_limit = config.fingertip_max_speed_m_s * dt_s + noise
        velocity |= known & ~_IS_PALM & (relative_jump > finger_limit)
    reasons['velocity'] = velocity

    if config.swap_check:
        reasons['swap'] = _swapped_fingers(known, observed, predicted, sigma)
    rejected = np.zeros(NUM_JOINTS, bool)
    for mask in reasons.values():
        rejected |= mask
    return present & ~rejected, reasons


def _swapped_fingers(known, observed, predicted, sigma):
    """
    Return (21,) bool: distal joints of neighbouring fingers that fit each other's predictions.

    A pair counts when all six joints are known, the crossed fit's total distance is under
    ``_SWAP_MIN_GAIN`` times the own fit's and the own fit is off by more than twice the
    joints' summed noise.
    """
    swap = np.zeros(NUM_JOINTS, bool)
    whole = known[_DISTAL].all(axis=1)
    pairs = whole[_SWAP_FIRST] & whole[_SWAP_SECOND]
    if not pairs.any():
        return swap
    seen, expected = observed[_DISTAL], predicted[_DISTAL]
    own = norm(seen - expected).sum(axis=1)
    same = own[_SWAP_FIRST] + own[_SWAP_SECOND]
    crossed = (norm(seen[_SWAP_FIRST] - expected[_SWAP_SECOND]).sum(axis=1)
               + norm(seen[_SWAP_SECOND] - expected[_SWAP_FIRST]).sum(axis=1))
    spread = sigma[_DISTAL].sum(axis=1)
    with np.errstate(invalid='ignore'):  # unknown joints may be NaN; their pairs are out
        swapped = pairs & (crossed < _SWAP_MIN_GAIN * same) & (
            same > 2.0 * (spread[_SWAP_FIRST] + spread[_SWAP_SECOND]))
    swap[_DISTAL[_SWAP_FIRST[swapped]]] = True
    swap[_DISTAL[_SWAP_SECOND[swapped]]] = True
    return swap
