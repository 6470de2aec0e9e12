import numpy as np

from hand_pose_ros.core.rotations import cross, matrix_from_quaternion, quaternion_from_matrix


def test_quaternion_round_trip_covers_all_branches():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(500, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    # Include 180 degree turns about each axis (w = 0) and the identity.
    q = np.vstack([q, np.eye(4)])
    r = matrix_from_quaternion(q)
    identity = np.broadcast_to(np.eye(3), r.shape)
    np.testing.assert_allclose(np.einsum('nij,nkj->nik', r, r), identity, atol=1e-12)
    back = quaternion_from_matrix(r)
    same = np.minimum(np.abs(back - q).max(axis=1), np.abs(back + q).max(axis=1))
    assert same.max() < 1e-9
    np.testing.assert_allclose(quaternion_from_matrix(np.eye(3)), [0, 0, 0, 1])


def test_cross_matches_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 7, 5, 3))
    np.testing.assert_allclose(cross(a, b), np.cross(a, b), atol=1e-12)
    np.testing.assert_allclose(cross(a[0, 0], b), np.cross(a[0, 0], b), atol=1e-12)
