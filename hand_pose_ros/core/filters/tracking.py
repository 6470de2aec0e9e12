"""Association of hand detections with tracks: optimal assignment on palm distance."""

import numpy as np
from scipy.optimize import linear_sum_assignment

_UNASSIGNABLE = 1e6


def associate(track_palms, detection_palms, gate_m):
    """
    Assign detections to tracks minimising the total palm distance within a gate.

    :param track_palms: (M, 3) predicted palm centres of the tracks, metres.
    :param detection_palms: (K, 3) palm centres of the detections, metres.
    :param gate_m: maximum distance of an accepted pair: a scalar or (M,) per track.
    :return: (pairs list of (track index, detection index), unassigned detection indices).
    """
    track_palms = np.asarray(track_palms, dtype=np.float64).reshape(-1, 3)
    detection_palms = np.asarray(detection_palms, dtype=np.float64).reshape(-1, 3)
    if len(track_palms) == 0 or len(detection_palms) == 0:
        return [], list(range(len(detection_palms)))
    cost = np.linalg.norm(track_palms[:, None] - detection_palms[None], axis=2)
    gate = np.broadcast_to(np.asarray(gate_m, dtype=np.float64), (len(track_palms),))
    cost = np.where(np.isfinite(cost) & (cost <= gate[:, None]), cost, _UNASSIGNABLE)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] < _UNASSIGNABLE]
    assigned = {c for _, c in pairs}
    return pairs, [k for k in range(len(detection_palms)) if k not in assigned]
