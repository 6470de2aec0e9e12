"""Augmentations keep crops and labels consistent."""

import dataclasses
import math

import numpy as np
import pytest

from hand_pose_ros.core import augment
from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz
from hand_pose_ros.core.crop import crop_color, crop_depth, CropSpec

CAMERA = CameraIntrinsics(475.0, 475.0, 320.0, 240.0, 640, 480)
SPEC = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3))
CONTEXT = 1.6


def marked_scene(rng):
    """Return (depth image in metres, joints (21, 3)): a disk at each joint's own depth."""
    joints = np.array([0.01, -0.02, 0.5]) + rng.uniform(-0.06, 0.06, (21, 3)) * [1, 1, 0.5]
    depth = np.full((CAMERA.height, CAMERA.width), np.nan, dtype=np.float32)
    depth[200:280, 250:400] = 0.62  # a back plane inside the depth window
    rows, cols = np.mgrid[0:CAMERA.height, 0:CAMERA.width]
    for (u, v, d) in uvd_from_xyz(joints, CAMERA)[np.argsort(-joints[:, 2])]:
        depth[(rows - v) ** 2 + (cols - u) ** 2 <= 4.0 ** 2] = d
    return depth, joints


def context_crop(depth, joints):
    result = crop_depth(depth, CAMERA, joints.mean(axis=0), augment.context_spec(SPEC, CONTEXT))
    return result.patch, result.transform.normalized_from_xyz(joints)


def pixel_of(joints_norm, size):
    return np.floor((joints_norm[:, :2] + 1.0) / 2.0 * size).astype(int)


def test_geometric_jitter_keeps_joints_on_their_depth():
    rng = np.random.default_rng(0)
    depth, joints = marked_scene(rng)
    patch_ctx, joints_ctx = context_crop(depth, joints)
    config = dataclasses.replace(augment.NO_AUGMENT, rotation_deg=180.0, scale_range=(0.9, 1.1),
                                 shift_px=4.0, depth_shift_m=0.01)
    checked = 0
    for _ in range(20):
        patch, joints_out, color = augment.augment_crop(patch_ctx, joints_ctx, rng, config,
                                                        SPEC, CONTEXT)
        assert patch.shape == (64, 64) and patch.dtype == np.float32 and color is None
        for (col, row), z in zip(pixel_of(joints_out, 64), joints_out[:, 2]):
            if 0 <= col < 64 and 0 <= row < 64 and abs(z) < 1:
                # Nearest-joint disks may overlap: the visible disk is at most as far.
                assert patch[row, col] <= z + 1e-3
                checked += 1
        front = np.argmin(joints[:, 2])
        col, row = pixel_of(joints_out, 64)[front]
        assert patch[row, col] == pytest.approx(joints_out[front, 2], abs=1e-3)
    assert checked > 300


def test_context_resampling_matches_a_direct_rotated_scaled_crop():
    rng = np.random.default_rng(1)
    depth, joints = marked_scene(rng)
    patch_ctx, joints_ctx = context_crop(depth, joints)
    center = joints.mean(axis=0)
    for rotation_deg, scale in ((0.0, 1.0), (37.0, 1.08), (-150.0, 0.92)):
        jitter = augment.GeometricJitter(math.radians(rotation_deg), scale)
        patch, joints_out = augment.resample_context(patch_ctx, joints_ctx, jitter, CONTEXT, 64)
        spec = dataclasses.replace(SPEC, cube_size_m=tuple(c * scale for c in SPEC.cube_size_m))
        direct = crop_depth(depth, CAMERA, center, spec, rotation_rad=math.radians(rotation_deg))
        np.testing.assert_allclose(joints_out, direct.transform.normalized_from_xyz(joints),
                                   atol=1e-9)
        # Nearest sampling from the coarser context grid only moves edges by a pixel.
        close = np.abs(patch - direct.patch) < 0.02
        assert close.mean() > 0.93


def test_depth_shift_moves_values_and_labels_together():
    rng = np.random.default_rng(2)
    depth, joints = marked_scene(rng)
    patch_ctx, joints_ctx = context_crop(depth, joints)
    base, base_joints = augment.resample_context(patch_ctx, joints_ctx,
                                                 augment.GeometricJitter(), CONTEXT, 64)
    shifted, shifted_joints = augment.resample_context(
        patch_ctx, joints_ctx, augment.GeometricJitter(depth_shift_norm=0.1), CONTEXT, 64)
    np.testing.assert_allclose(shifted_joints[:, 2], base_joints[:, 2] - 0.1)
    np.testing.assert_allclose(shifted_joints[:, :2], base_joints[:, :2])
    inside = (base < 1.0) & (base > -0.85)
    np.testing.assert_allclose(shifted[inside], base[inside] - 0.1, atol=1e-6)


def test_appearance_augmentations_respect_the_crop_contract():
    rng = np.random.default_rng(3)
    depth, joints = marked_scene(rng)
    patch_ctx, joints_ctx = context_crop(depth, joints)
    clean, _ = augment.resample_context(patch_ctx, joints_ctx, augment.GeometricJitter(),
                                        CONTEXT, 64)
    background = clean == 1.0
    for _ in range(10):
        patch = clean.copy()
        augment.augment_appearance(patch, rng, augment.AugmentConfig(), 0.15)
        assert patch.min() >= -1.0 and patch.max() <= 1.0
        assert np.all(patch[background] == 1.0)  # nothing appears out of nowhere

    noisy = clean.copy()
    augment.add_depth_noise(noisy, np.random.default_rng(4), 0.02)
    diff = (noisy - clean)[~background]
    assert 0.015 < diff.std() < 0.025

    holed = clean.copy()
    augment.add_holes(holed, np.random.default_rng(5), 3, (0.05, 0.1))
    assert np.all(holed[holed != clean] == 1.0) and (holed != clean).sum() > 10

    erased = clean.copy()
    augment.random_erase(erased, np.random.default_rng(6), (0.1, 0.1))
    assert np.all(erased[erased != clean] == 1.0)

    edged = clean.copy()
    augment.drop_edges(edged, np.random.default_rng(7), 20e-3 / 0.15, (0.0, 0.0))
    dropped = (edged != clean)
    assert dropped.sum() > 0
    # Only pixels beside a depth jump lose their value; disk interiors survive.
    padded = np.pad(clean, 1, mode='edge')
    jump = np.max([np.abs(padded[1 + dr:65 + dr, 1 + dc:65 + dc] - clean)
                   for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0))], axis=0)
    assert np.all(jump[dropped] > 20e-3 / 0.15)


def test_no_augment_is_identity_on_labels():
    rng = np.random.default_rng(8)
    depth, joints = marked_scene(rng)
    patch_ctx, joints_ctx = context_crop(depth, joints)
    patch, joints_out, _ = augment.augment_crop(patch_ctx, joints_ctx, rng,
                                                augment.NO_AUGMENT, SPEC, CONTEXT)
    direct = crop_depth(depth, CAMERA, joints.mean(axis=0), SPEC)
    np.testing.assert_allclose(joints_out, direct.transform.normalized_from_xyz(joints),
                               atol=1e-9)


@pytest.mark.parametrize('values, message', [
    ({'rotation_deg': -1.0}, 'rotation_deg must be finite non-negative'),
    ({'scale_range': (1.2, 0.8)}, 'scale_range must be a'),
    ({'erase_prob': 2.0}, 'erase_prob is a probability'),
    ({'bogus': 1}, 'unknown augment keys'),
])
def test_config_validation(values, message):
    with pytest.raises(ValueError, match=message):
        augment.AugmentConfig.from_dict(values)


def test_context_spec():
    spec = augment.context_spec(SPEC, 1.5)
    assert spec.input_size == 96
    assert spec.cube_size_m == pytest.approx((0.3, 0.3, 0.45))
    with pytest.raises(ValueError, match='context factor'):
        augment.context_spec(SPEC, 0.5)


def test_colour_crops_get_the_depth_crops_jitter():
    rng = np.random.default_rng(8)
    depth, joints = marked_scene(rng)
    # A colour image that shows the depth: red = millimetres beyond 0.4 m, black where empty.
    red = np.where(np.isfinite(depth), np.clip((depth - 0.4) * 1000.0, 1, 255), 0)
    color = np.zeros((*depth.shape, 3), np.uint8)
    color[..., 0] = red.astype(np.uint8)
    center = joints.mean(axis=0)
    spec = augment.context_spec(SPEC, CONTEXT)
    context = crop_depth(depth, CAMERA, center, spec)
    context_color = crop_color(color, context.transform)
    assert context_color.shape == (spec.input_size, spec.input_size, 3)
    config = dataclasses.replace(augment.NO_AUGMENT, rotation_deg=180.0, shift_px=4.0)
    half_depth = context.transform.half_depth_m
    for _ in range(10):
        patch, _, crop = augment.augment_crop(context.patch, joints, rng, config, SPEC,
                                              CONTEXT, context_color)
        assert crop.shape == (3, 64, 64) and crop.dtype == np.float32
        foreground = patch < 1.0
        seen = 0.4 + crop[0] * 255.0 / 1000.0
        shown = center[2] + patch * half_depth / CONTEXT
        assert foreground.sum() > 300
        assert np.mean(np.abs(seen - shown)[foreground] < 2e-3) > 0.98


def test_colour_augmentation_stays_in_range_and_changes_the_colours():
    rng = np.random.default_rng(9)
    color = rng.uniform(0.2, 0.8, (3, 16, 16)).astype(np.float32)
    changed = color.copy()
    augment.augment_color(changed, rng, augment.AugmentConfig())
    assert changed.min() >= 0.0 and changed.max() <= 1.0
    assert not np.allclose(changed, color)
    same = color.copy()
    augment.augment_color(same, rng, augment.NO_AUGMENT)
    np.testing.assert_array_equal(same, color)


def test_colour_crop_takes_the_depth_crops_window():
    depth = np.full((CAMERA.height, CAMERA.width), 0.5, np.float32)
    rows, cols = np.mgrid[0:CAMERA.height, 0:CAMERA.width]
    color = np.stack([cols % 256, rows % 256, np.full_like(rows, 7)], -1).astype(np.uint8)
    # A centre near the top-left corner: part of the window lies outside the image.
    center = np.array([-0.28, -0.2, 0.5])
    result = crop_depth(depth, CAMERA, center, SPEC)
    crop = crop_color(color, result.transform)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    inside = result.patch < 1.0
    assert 0 < inside.mean() < 1
    assert np.all(crop[~inside] == 0) and np.all(crop[inside, 2] == 7)
    grid = (np.arange(64) + 0.5) / 64 * 2 - 1
    uv = result.transform.uv_from_normalized(np.stack(np.meshgrid(grid, grid), -1))
    np.testing.assert_array_equal(crop[inside, 0], np.floor(uv[inside, 0] + 0.5) % 256)
    np.testing.assert_array_equal(crop[inside, 1], np.floor(uv[inside, 1] + 0.5) % 256)
    with pytest.raises(ValueError, match='colour image'):
        crop_color(color[:, :, :2], result.transform)
    with pytest.raises(ValueError, match='colour image'):
        crop_color(color[:100], result.transform)
