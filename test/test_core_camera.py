import numpy as np
import pytest

from hand_pose_ros.core.camera import (CameraIntrinsics, depth_to_metres, depth_to_millimetres,
                                       uvd_from_xyz, xyz_from_uvd)


def test_projection_round_trip_vectorised():
    cam = CameraIntrinsics.from_preset('sr300')
    xyz = np.random.default_rng(1).uniform([-0.3, -0.2, 0.2], [0.3, 0.2, 1.5], size=(5, 21, 3))
    uvd = uvd_from_xyz(xyz, cam)
    assert uvd.shape == xyz.shape
    np.testing.assert_allclose(xyz_from_uvd(uvd, cam), xyz, atol=1e-12)
    # The principal point back-projects onto the optical axis.
    np.testing.assert_allclose(xyz_from_uvd([cam.cx, cam.cy, 0.7], cam), [0, 0, 0.7])


@pytest.mark.parametrize('kwargs, message', [
    ({'fx': 0.0}, 'focal lengths must be positive'),
    ({'fy': -5.0}, 'focal lengths must be positive'),
    ({'fx': 1e100}, 'at most 10,000 image sizes'),   # overflowed the localiser's grids
    ({'cx': float('nan')}, 'cx must be a finite number'),
    ({'width': 0}, 'width must be a positive integer'),
    ({'height': 10.5}, 'height must be a positive integer'),
    ({'width': float('inf')}, 'width must be a positive integer'),
    ({'height': None}, 'height must be a positive integer'),
    ({'width': '640'}, 'width must be a positive integer'),
])
def test_intrinsics_validation(kwargs, message):
    values = {'fx': 500.0, 'fy': 500.0, 'cx': 320.0, 'cy': 240.0, 'width': 640, 'height': 480}
    values.update(kwargs)
    with pytest.raises(ValueError, match=message):
        CameraIntrinsics(**values)


def test_window_intrinsics_and_image_check():
    cam = CameraIntrinsics(500.0, 500.0, 320.0, 240.0, 640, 480)
    win = cam.window(100, 50, 64, 32)
    point = np.array([0.05, -0.02, 0.6])
    np.testing.assert_allclose(uvd_from_xyz(point, win)[:2] + [100, 50],
                               uvd_from_xyz(point, cam)[:2])
    cam.check_image(np.zeros((480, 640)))
    with pytest.raises(ValueError, match='image is 320x240'):
        cam.check_image(np.zeros((240, 320)))
    with pytest.raises(ValueError, match='unknown camera preset'):
        CameraIntrinsics.from_preset('nope')
    # A window may leave the principal point outside it; a camera's own image may not.
    cam.check_principal_point()
    assert (win.cx, win.cy) == (220.0, 190.0)
    with pytest.raises(ValueError, match=r'principal point \(220, 190\) is outside the 64x32'):
        win.check_principal_point()


def test_depth_unit_conversions():
    mm = np.array([[0, 1000], [65535, 250]], dtype=np.uint16)
    m = depth_to_metres(mm)
    assert m.dtype == np.float32 and np.isnan(m[0, 0])
    np.testing.assert_allclose(m[0, 1], 1.0)
    np.testing.assert_array_equal(depth_to_millimetres(m), mm)
    floats = np.array([[np.nan, np.inf], [-1.0, 0.5]], dtype=np.float32)
    out = depth_to_metres(floats)
    assert np.isnan(out[0]).all() and np.isnan(out[1, 0]) and out[1, 1] == 0.5
    assert not np.isnan(floats[1, 1]) and floats[1, 0] == -1.0  # input untouched
    # Big-endian images (some 16-bit PNG/PGM readers) are read as the same values.
    np.testing.assert_array_equal(depth_to_metres(mm.astype('>u2')), m)
    np.testing.assert_array_equal(depth_to_metres(floats.astype('>f4')), out)
    with pytest.raises(ValueError, match='dtype'):
        depth_to_metres(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match='2-D'):
        depth_to_metres(np.zeros((2, 2, 2), dtype=np.uint16))
    with pytest.raises(ValueError, match='empty'):
        depth_to_metres(np.zeros((0, 3), dtype=np.uint16))
