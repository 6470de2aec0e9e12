import math

import numpy as np
import pytest

from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz, xyz_from_uvd
from hand_pose_ros.core.crop import (
    BACKGROUND_VALUE, batch_views, crop_batch, crop_depth, CropSpec, make_transform,
    merge_views, VIEW_CONFIDENCE_POWER, VIEW_SETS)

INTRINSICS = CameraIntrinsics.from_preset('sr300')
SPEC = CropSpec(input_size=96, cube_size_m=(0.2, 0.2, 0.3))


def plane(depth_value, intrinsics=INTRINSICS):
    return np.full((intrinsics.height, intrinsics.width), depth_value, dtype=np.float32)


@pytest.mark.parametrize('rotation', [0.0, 0.7])
def test_round_trip_is_identity(rotation):
    rng = np.random.default_rng(0)
    center = np.array([0.05, -0.03, 0.5])
    transform = make_transform(INTRINSICS, center, SPEC, rotation)
    xyz = center + rng.uniform(-0.1, 0.1, size=(4, 21, 3))
    back = transform.xyz_from_normalized(transform.normalized_from_xyz(xyz))
    np.testing.assert_allclose(back, xyz, atol=1e-9)
    np.testing.assert_allclose(transform.normalized_from_xyz(center), [0, 0, 0], atol=1e-12)


def test_box_corners_map_to_unit_square():
    center = np.array([0.0, 0.0, 0.6])
    transform = make_transform(INTRINSICS, center, SPEC)
    corner = center + np.array([0.1, 0.1, 0.0])
    np.testing.assert_allclose(transform.normalized_from_xyz(corner), [1, 1, 0], atol=1e-9)
    back = center + np.array([-0.1, 0.0, 0.15])
    assert transform.normalized_from_xyz(back)[2] == pytest.approx(1.0)
    # The window scales inversely with distance: same metric box, same patch extent.
    far = make_transform(INTRINSICS, np.array([0.0, 0.0, 1.2]), SPEC)
    u_min, _, u_max, _ = far.window_uv
    assert u_max - u_min == pytest.approx(INTRINSICS.fx * 0.2 / 1.2)


def test_rendered_point_patch_value_matches_its_normalised_depth():
    center = np.array([0.02, 0.01, 0.45])
    transform = make_transform(INTRINSICS, center, SPEC)
    depth = plane(np.nan)
    # A slanted surface so every patch pixel has a different depth.
    v, u = np.mgrid[0:INTRINSICS.height, 0:INTRINSICS.width]
    depth[:] = 0.45 + 0.0004 * (u - 300) + 0.0002 * (v - 250)
    result = crop_depth(depth, INTRINSICS, center, SPEC)
    for row, col in [(10, 20), (48, 48), (90, 5)]:
        uv = transform.uv_from_normalized([(col + 0.5) / 48 - 1, (row + 0.5) / 48 - 1])
        d = depth[int(np.floor(uv[1] + 0.5)), int(np.floor(uv[0] + 0.5))]
        point = xyz_from_uvd([uv[0], uv[1], d], INTRINSICS)
        expected_z = transform.normalized_from_xyz(point)[2]
        if abs(expected_z) <= 1:
            assert result.patch[row, col] == pytest.approx(expected_z, abs=1e-5)
        else:
            assert result.patch[row, col] == BACKGROUND_VALUE


def test_normalisation_window_and_invalid_pixels():
    center = np.array([0.0, 0.0, 0.5])
    depth = plane(0.55)
    depth[:, :320] = np.nan
    patch = crop_depth(depth, INTRINSICS, center, SPEC).patch
    assert patch.dtype == np.float32 and patch.shape == (96, 96)
    left, right = patch[:, :40], patch[:, -40:]
    assert np.all(left == BACKGROUND_VALUE)
    np.testing.assert_allclose(right, (0.55 - 0.5) / 0.15, atol=1e-5)
    # Depths outside the +-150 mm window (in front or behind) are background.
    for outside in (0.3, 0.7):
        patch = crop_depth(plane(outside), INTRINSICS, center, SPEC).patch
        assert np.all(patch == BACKGROUND_VALUE)


def test_bilinear_ignores_invalid_neighbours():
    spec = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3), interpolation='bilinear')
    depth = plane(0.52)
    depth[::2, ::2] = np.nan
    patch = crop_depth(depth, INTRINSICS, np.array([0.0, 0.0, 0.5]), spec).patch
    np.testing.assert_allclose(patch, 0.02 / 0.15, atol=1e-5)


def test_window_past_the_border_is_padded_as_invalid():
    # A centre near the left edge: the left part of the window is outside the image.
    uvd = np.array([3.0, 240.0, 0.4])
    center = xyz_from_uvd(uvd, INTRINSICS)
    result = crop_depth(plane(0.4), INTRINSICS, center, SPEC)
    u_min = result.transform.window_uv[0]
    assert u_min < -100
    outside_cols = int(96 * (-0.5 - u_min) / (2 * (uvd[0] - u_min)))
    assert np.all(result.patch[:, :outside_cols - 1] == BACKGROUND_VALUE)
    np.testing.assert_allclose(result.patch[:, outside_cols + 1:], 0.0, atol=1e-6)


@pytest.mark.parametrize('center, message', [
    ([0.0, 0.0, -0.5], 'behind'),
    ([0.0, 0.0, 0.0], 'behind'),
    ([np.nan, 0.0, 0.5], 'finite'),
    ([0.0, 0.0, np.inf], 'finite'),
    ([2.0, 0.0, 0.5], 'outside'),
    ([0.0, 0.0], 'shape'),
])
def test_bad_centres_raise(center, message):
    with pytest.raises(ValueError, match=message):
        crop_depth(plane(0.5), INTRINSICS, np.array(center), SPEC)


def test_bad_images_and_specs_raise():
    center = np.array([0.0, 0.0, 0.5])
    with pytest.raises(ValueError, match='2-D'):
        crop_depth(np.zeros((480, 640, 3), np.float32), INTRINSICS, center, SPEC)
    with pytest.raises(ValueError, match='dtype'):
        crop_depth(np.zeros((480, 640), np.int32), INTRINSICS, center, SPEC)
    with pytest.raises(ValueError, match='intrinsics'):
        crop_depth(np.zeros((240, 320), np.float32), INTRINSICS, center, SPEC)
    with pytest.raises(ValueError, match='cube_size_m'):
        CropSpec(96, (0.2, 0.2))
    with pytest.raises(ValueError, match='interpolation'):
        CropSpec(96, (0.2, 0.2, 0.3), 'cubic')
    assert CropSpec.from_dict(SPEC.to_dict()) == SPEC


@pytest.mark.parametrize('interpolation', ['nearest', 'bilinear'])
def test_camera_images_crop_like_their_metre_conversion(interpolation):
    from hand_pose_ros.core.camera import depth_to_metres

    rng = np.random.default_rng(4)
    millimetres = rng.integers(420, 580, size=(480, 640)).astype(np.uint16)
    millimetres[rng.random((480, 640)) < 0.2] = 0   # holes
    # The same image in float metres, its holes any of the invalid values.
    raw = millimetres * np.float32(0.001)
    raw[millimetres == 0] = rng.choice([np.nan, np.inf, -1.0, 0.0], size=(millimetres == 0).sum())
    spec = CropSpec(96, (0.25, 0.25, 0.3), interpolation)
    center = np.array([0.01, -0.02, 0.5])
    expected = crop_depth(depth_to_metres(millimetres), INTRINSICS, center, spec).patch
    for image in (millimetres, raw):
        np.testing.assert_allclose(crop_depth(image, INTRINSICS, center, spec).patch,
                                   expected, atol=1e-6)


def test_crop_batch_matches_single_crops():
    rng = np.random.default_rng(1)
    depth = (0.5 + 0.05 * rng.random((480, 640))).astype(np.float32)
    centers = np.array([[0.0, 0.0, 0.5], [0.1, 0.05, 0.52]])
    batch, transforms = crop_batch(depth, INTRINSICS, centers, SPEC)
    assert batch.shape == (2, 1, 96, 96) and batch.dtype == np.float32
    for i, center in enumerate(centers):
        single = crop_depth(depth, INTRINSICS, center, SPEC)
        np.testing.assert_array_equal(batch[i, 0], single.patch)
        np.testing.assert_allclose(transforms[i].center_xyz, center)
    with pytest.raises(ValueError, match='shape'):
        crop_batch(depth, INTRINSICS, np.zeros(3), SPEC)
    empty, none = crop_batch(depth, INTRINSICS, np.zeros((0, 3)), SPEC)
    assert empty.shape == (0, 1, 96, 96) and none == []


def test_rotated_crop_samples_rotated_window():
    center = np.array([0.0, 0.0, 0.5])
    depth = plane(0.5)
    u_c = uvd_from_xyz(center, INTRINSICS)[0]
    depth[:, int(u_c) + 5:] = 0.6  # right half farther away
    straight = crop_depth(depth, INTRINSICS, center, SPEC).patch
    turned = crop_depth(depth, INTRINSICS, center, SPEC, rotation_rad=math.pi / 2).patch
    # After a quarter turn the patch's +y axis points along image -x (the near half).
    assert straight[48, 90] == pytest.approx(0.1 / 0.15, abs=1e-5)
    assert turned[90, 48] == pytest.approx(0.0, abs=1e-5)
    assert turned[5, 48] == pytest.approx(0.1 / 0.15, abs=1e-5)


def nearest_point_network(batch):
    """Put every joint at the crop's nearest pixel (an exactly equivariant 'network')."""
    size = batch.shape[-1]
    flat = batch[:, 0].reshape(len(batch), -1).argmin(axis=1)
    rows, cols = np.divmod(flat, size)
    uv = np.stack([(2 * cols + 1) / size - 1, (2 * rows + 1) / size - 1], axis=-1)
    joints = np.concatenate([uv, batch[:, 0].min(axis=(1, 2))[:, None]], axis=-1)
    return np.repeat(joints[:, None], 21, axis=1), np.tile(np.arange(21.0), (len(batch), 1))


@pytest.mark.parametrize('views', sorted(VIEW_SETS))
def test_views_map_back_to_the_original_crop(views):
    batch = np.ones((2, 1, 8, 8), np.float32)
    batch[0, 0, 1, 5], batch[1, 0, 5, 3] = -0.5, -0.2  # off every symmetry axis
    expected, confidence = nearest_point_network(batch)
    seen = batch_views(batch, views)
    assert seen.shape == (2 * views, 1, 8, 8) and seen.flags.c_contiguous
    assert len({seen[i].tobytes() for i in range(0, 2 * views, 2)}) == views  # all differ
    joints, merged_confidence = merge_views(*nearest_point_network(seen), views)
    np.testing.assert_allclose(joints, expected)
    np.testing.assert_allclose(merged_confidence, confidence)


def test_views_are_weighted_by_their_confidence():
    # Two views (the crop and its half turn) of one hand: the turned view's (u, v) are negated.
    joints = np.zeros((2, 21, 3))
    joints[0, :, 2], joints[1, :, 2] = 0.1, 0.4
    confidence = np.ones((2, 21))
    confidence[1, 0] = 0.5  # the second view is unsure of the wrist
    confidence[:, 1] = 0.0  # neither is sure of the thumb CMC
    merged, merged_confidence = merge_views(joints, confidence, 2)
    weight = 0.5 ** VIEW_CONFIDENCE_POWER
    assert merged[0, 0, 2] == pytest.approx((0.1 + weight * 0.4) / (1.0 + weight))
    assert merged[0, 1, 2] == pytest.approx(0.25)  # no weight at all: the plain mean
    assert merged[0, 2, 2] == pytest.approx(0.25)
    assert merged_confidence[0, 0] == pytest.approx(0.75)


def test_unknown_view_counts_raise():
    batch = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r'views must be one of \[1, 2, 4, 8\]'):
        batch_views(batch, 3)
    with pytest.raises(ValueError, match='views must be one of'):
        merge_views(np.zeros((3, 21, 3)), np.zeros((3, 21)), 3)
