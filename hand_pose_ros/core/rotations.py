"""Rotation helpers: rotation matrices to unit quaternions (x, y, z, w, ROS order)."""

import numpy as np

# Component i of a x b is a[i + 1] b[i + 2] - a[i + 2] b[i + 1] (indices mod 3): the six
# factors of each side are gathered with one take.
_CROSS_A = np.array([1, 2, 0, 2, 0, 1])
_CROSS_B = np.array([2, 0, 1, 1, 2, 0])
# quaternion_from_matrix: flat indices of m00, m11, m22; signs of the diagonal in 4 w^2,
# 4 x^2, 4 y^2, 4 z^2 (minus one); m21, m02, m10 and their transposed partners.
_DIAGONAL = np.array([0, 4, 8])
_SQUARE_SIGNS = np.array([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0],
                          [1.0, -1.0, -1.0, 1.0]])
_PAIRS = np.array([7, 2, 3])
_OPPOSITE = np.array([5, 6, 1])
# Terms (4 w^2, 4 x^2, 4 y^2, 4 z^2, m21 - m12, m02 - m20, m10 - m01, m21 + m12,
# m02 + m20, m10 + m01) proportional to x, y, z, w when w, x, y or z is the largest.
_QUATERNION_TERMS = np.array([[4, 5, 6, 0], [1, 9, 8, 4], [9, 2, 7, 5], [8, 7, 3, 6]])


def quaternion_from_matrix(rotation):
    """
    Return unit quaternions (x, y, z, w) of rotation matrices.

    :param rotation: (..., 3, 3) proper rotation matrices.
    :return: (..., 4) float64 quaternions with w >= 0.
    """
    r = np.asarray(rotation, dtype=np.float64)
    flat = r.reshape(*r.shape[:-2], 9)
    # Four times the squares of w, x, y, z; the largest gives the stable formula.
    squares = 1.0 + flat[..., _DIAGONAL] @ _SQUARE_SIGNS
    pairs, opposite = flat[..., _PAIRS], flat[..., _OPPOSITE]
    terms = np.concatenate([squares, pairs - opposite, pairs + opposite], axis=-1)
    # Each formula's (x, y, z, w) are proportional to four of the terms: normalising them
    # gives the quaternion.
    q = np.take_along_axis(terms, _QUATERNION_TERMS[np.argmax(squares, axis=-1)], axis=-1)
    q /= np.sqrt((q * q).sum(axis=-1, keepdims=True))
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
