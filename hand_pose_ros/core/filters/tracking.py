"""
Association of hand detections with tracks: nearest pairs first, on palm distance.

Nearest-first (greedy) rather than minimum total distance: when one track has drifted
(coasting through a dropout, or a track started on a false hand), the optimal assignment
can hand the well-tracked hand's detection to the drifted track to save total distance,
while nearest-first always gives each detection to the closest track that is still free.
"""

import numpy as np


def nearest_pairs(distance, limit):
    """
    Pair rows with columns one-to-one, nearest pairs first.

    :param distance: (M, K) distances; NaN never pairs.
    :param limit: largest distance of a pair: a scalar or (M,) per row.
    :return: list of (row, column) pairs, nearest first.
    """
    distance = np.asarray(distance, dtype=np.float64)
    limit = np.broadcast_to(np.asarray(limit, dtype=np.float64), (distance.shape[0],))
    allowed = np.where(np.isfinite(distance) & (distance <= limit[:, None]), distance, np.inf)
    pairs, rows, columns = [], set(), set()
    for flat in np.argsort(allowed, axis=None, kind='stable'):
        row, column = (int(i) for i in np.unravel_index(flat, distance.shape))
        if not np.isfinite(allowed[row, column]):
            break
        if row not in rows and column not in columns:
            pairs.append((row, column))
            rows.add(row)
            columns.add(column)
    return pairs


def associate(track_palms, detection_palms, gate_m):
    """
    Assign detections to tracks, nearest palms first, within a gate.

    :param track_palms: (M, 3) predicted palm centres of the tracks, metres.
    :param detection_palms: (K, 3) palm centres of the detections, metres.
    :param gate_m: maximum distance of an accepted pair: a scalar or (M,) per track.
    :return: (pairs list of (track index, detection index), unassigned detection indices).
    """
    track_palms = np.asarray(track_palms, dtype=np.float64).reshape(-1, 3)
    detection_palms = np.asarray(detection_palms, dtype=np.float64).reshape(-1, 3)
    distance = np.linalg.norm(track_palms[:, None] - detection_palms[None], axis=2)
    pairs = nearest_pairs(distance, gate_m)
    assigned = {c for _, c in pairs}
    return pairs, [k for k in range(len(detection_palms)) if k not in assigned]
