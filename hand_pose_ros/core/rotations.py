"""Rotation helpers: rotation matrices to unit quaternions (x, y, z, w, ROS order)."""

import numpy as np

# Component i of a x b is a[i + 1] b[i + 2] - a[i + 2] b[i + 1] (indices mod 3): the six
# factors of each side are gathered with one take.
_CROSS_A = np.array([1, 2, 0, 2, 0, 1])
_CROSS_B = np.array([2, 0, 1, 1, 2, 0])


def quaternion_from_matrix(rotation):
    """
    Return unit quaternions (x, y, z, w) of rotation matrices.

    :param rotation: (..., 3, 3) proper rotation matrices.
    :return: (..., 4) float64 quaternions with w >= 0.
    """
    r = np.asarray(rotation, dtype=np.float64)
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    # Four candidate magnitudes; pick the largest per matrix for numerical stability.
    candidates = np.stack([
        1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
        1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], axis=-1)
    best = np.argmax(candidates, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(candidates, best[..., None], -1)[..., 0], 1e-12))
    s = 2.0 * s
    d21, d02, d10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], \
        r[..., 1, 0] - r[..., 0, 1]
    s21, s02, s10 = r[..., 2, 1] + r[..., 1, 2], r[..., 0, 2] + r[..., 2, 0], \
        r[..., 1, 0] + r[..., 0, 1]
    options = [
        np.stack([d21 / s, d02 / s, d10 / s, 0.25 * s], -1),
        np.stack([0.25 * s, s10 / s, s02 / s, d21 / s], -1),
        np.stack([s10 / s, 0.25 * s, s21 / s, d02 / s], -1),
        np.stack([s02 / s, s21 / s, 0.25 * s, d10 / s], -1),
    ]
    q = np.choose(best[..., None], options)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:4] < 0, -q, q)


def matrix_from_quaternion(quaternion):
    """Return (..., 3, 3) rotation matrices of (..., 4) quaternions (x, y, z, w)."""
    q = np.asarray(quaternion, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def norm(v):
    """
    Return the Euclidean norms of (..., 3) vectors along the last axis.

    Same result as ``np.linalg.norm(v, axis=-1)`` with less call overhead on small arrays.
    """
    return np.sqrt((v * v).sum(axis=-1))


def cross(a, b):
    """
    Return the cross product of (..., 3) vectors.

    Same result as ``np.cross`` for 3-vectors but several times faster on the small arrays
    of per-frame hand geometry, where ``np.cross``'s axis handling dominates.
    """
    products = (np.take(np.asarray(a, dtype=np.float64), _CROSS_A, axis=-1)
                * np.take(np.asarray(b, dtype=np.float64), _CROSS_B, axis=-1))
    return products[..., :3] - products[..., 3:]
