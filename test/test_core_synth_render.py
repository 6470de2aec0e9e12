"""Ray casting, labels, sensor artefacts and determinism of synthetic frames."""

from dataclasses import replace

import numpy as np
import pytest

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CameraIntrinsics, depth_to_millimetres, uvd_from_xyz
from hand_pose_ros.core.synth import (
    Box, Cylinder, generate_motion, Plane, POSTURES, RoundCone, sample_hand_shape, Scene,
    SceneConfig, SceneItem, SensorConfig, Sphere, SyntheticGenerator)
from hand_pose_ros.core.synth.generator import hand_crop_intrinsics, VISIBILITY_MARGIN_M
from hand_pose_ros.core.synth.pose import HandPose
from hand_pose_ros.core.synth.render import ray_grid, ZBuffer
from hand_pose_ros.core.synth.scene import PART_OBJECT, PART_TABLE, sample_scene
from hand_pose_ros.core.synth.sensor import apply_sensor

SMALL = CameraIntrinsics(240.0, 240.0, 79.5, 59.5, 160, 120)
SR300 = CameraIntrinsics.from_preset('sr300')


def _render(primitive, intrinsics=SMALL):
    zbuffer = ZBuffer(intrinsics, dtype=np.float64)
    zbuffer.add(primitive, 0)
    depth = np.where(np.isfinite(zbuffer.depth), zbuffer.depth, np.nan)
    return depth, zbuffer.index


def _brute_force_round_cone(a, b, ra, rb, intrinsics, steps=4000):
    """Entry depth of the union of the spheres interpolated between (a, ra) and (b, rb)."""
    dx, dy = ray_grid(intrinsics, np.float64)
    d = np.stack(np.broadcast_arrays(dx, dy, np.ones_like(dx * dy)), axis=-1)
    dd = np.sum(d * d, axis=-1)
    best = np.full(dd.shape, np.inf)
    for lam in np.linspace(0.0, 1.0, steps):
        c = a + lam * (b - a)
        r = ra + lam * (rb - ra)
        cd = d @ c
        disc = cd * cd - dd * (c @ c - r * r)
        with np.errstate(invalid='ignore'):
            t = (cd - np.sqrt(disc)) / dd
        best = np.fmin(best, np.where(disc >= 0, t, np.inf))
    return np.where(np.isfinite(best), best, np.nan)


@pytest.mark.parametrize('a, b, ra, rb', [
    ((0.01, -0.02, 0.40), (0.05, 0.04, 0.45), 0.012, 0.007),
    ((0.0, 0.0, 0.30), (0.0, 0.0, 0.38), 0.015, 0.006),   # along the view axis
    ((-0.03, 0.01, 0.35), (0.04, -0.01, 0.30), 0.006, 0.014),
    ((0.0, 0.0, 0.5), (0.03, 0.0, 0.5), 0.01, 0.01),      # plain capsule
])
def test_round_cone_matches_a_brute_force_union_of_spheres(a, b, ra, rb):
    a, b = np.array(a), np.array(b)
    depth, _ = _render(RoundCone(tuple(a), tuple(b), ra, rb))
    expected = _brute_force_round_cone(a, b, ra, rb, SMALL)
    both = np.isfinite(depth) & np.isfinite(expected)
    assert both.sum() > 50
    assert np.abs(depth[both] - expected[both]).max() < 2e-4
    # Silhouettes agree except on a thin rim where the sampled union is a little smaller.
    assert np.sum(np.isfinite(depth) != np.isfinite(expected)) < 0.08 * both.sum()


def test_grouped_cones_render_like_separate_cones(monkeypatch):
    from hand_pose_ros.core.synth import render

    generator = SyntheticGenerator(SR300, sensor=SensorConfig.clean(), seed=8)
    scenes = [generator.sample_scene() for _ in range(3)]
    monkeypatch.setattr(render, 'BLOCK_COST_PX', 10 ** 6)  # group whole hands
    grouped = [generator.render(scene) for scene in scenes]
    monkeypatch.setattr(render, 'BLOCK_COST_PX', 0)  # every cone on its own
    for scene, frame in zip(scenes, grouped):
        alone = generator.render(scene)
        np.testing.assert_array_equal(alone.depth_mm, frame.depth_mm)
        np.testing.assert_array_equal(alone.parts, frame.parts)
        np.testing.assert_array_equal(alone.hands[0].visible, frame.hands[0].visible)


def test_sphere_box_cylinder_and_plane_depths_are_exact():
    centred = CameraIntrinsics(240, 240, 80, 60, 161, 121)
    depth, _ = _render(Sphere((0.0, 0.0, 0.5), 0.05), centred)
    assert depth[60, 80] == pytest.approx(0.45, abs=1e-9)
    depth, _ = _render(Box((0.0, 0.0, 0.6), np.eye(3), (0.05, 0.04, 0.1)))
    assert np.nanmax(depth) == pytest.approx(0.5, abs=1e-9)
    assert np.nanmin(depth) == pytest.approx(0.5, abs=1e-9)
    depth, _ = _render(Cylinder((0.0, 0.0, 0.7), (0.0, 0.0, 1.0), 0.03, 0.05))
    assert np.nanmin(depth) == pytest.approx(0.65, abs=1e-9)
    depth, _ = _render(Cylinder((0.0, 0.0, 0.7), (1.0, 0.0, 0.0), 0.03, 0.05))
    assert np.nanmin(depth) == pytest.approx(0.67, abs=1e-4)
    depth, _ = _render(Plane((0.0, 0.0, 2.0), (0.0, 0.0, -1.0)))
    assert np.all(np.abs(depth - 2.0) < 1e-9)


def _clean_generator(seed=0, intrinsics=SR300):
    return SyntheticGenerator(intrinsics, scene=SceneConfig.hand_only(),
                              sensor=SensorConfig.clean(), seed=seed)


def test_depth_at_visible_joints_is_within_the_surface_radius():
    generator = _clean_generator(seed=11)
    visible_count = 0
    for _ in range(12):
        scene = generator.sample_scene()
        frame = generator.render(scene)
        label = frame.hands[0]
        radii = label.surface_radius_m
        pixels = np.round(label.joints_uvd[:, :2]).astype(int)
        for joint in np.flatnonzero(label.visible):
            u, v = pixels[joint]
            seen = frame.depth_m[v, u]
            # Own surface within its radius (+ margin, + half a millimetre of quantisation).
            tolerance = radii[joint] + VISIBILITY_MARGIN_M + 0.0005
            assert abs(seen - label.joints_uvd[joint, 2]) <= tolerance, joint
        visible_count += label.visible.sum()
        assert label.mask.sum() > 100
        np.testing.assert_allclose(label.joints_uvd, uvd_from_xyz(label.joints_xyz, SR300))
    assert visible_count > 12 * 8


def test_joints_behind_an_object_are_flagged_occluded():
    generator = _clean_generator()
    shape = sample_hand_shape(np.random.default_rng(0), 'right')
    # Palm towards the camera (hand +z along camera -z), fingers up (hand +y along camera -y).
    rotation = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])
    pose = HandPose(shape, POSTURES['open'], rotation, np.array([0.0, 0.08, 0.5]))
    xyz = pose.keypoints_xyz
    hand = Scene((pose,), seed=1)
    before = generator.render(hand).hands[0]
    assert before.visible[skeleton.FINGERTIPS[1:]].all()
    tip = xyz[8]  # index tip
    # A small card 8 cm in front of the tip, on the tip's line of sight.
    card = SceneItem(Box(tuple(tip * (tip[2] - 0.08) / tip[2]), np.eye(3),
                         (0.012, 0.012, 0.002)), PART_OBJECT)
    frame = generator.render(hand.with_items(card))
    label = frame.hands[0]
    assert not label.visible[8]
    assert label.visible[0] and label.visible[12] and label.visible[16]
    u, v = np.round(label.joints_uvd[8, :2]).astype(int)
    assert frame.depth_m[v, u] == pytest.approx(tip[2] - 0.082, abs=0.0015)
    assert not label.mask[v, u] and before.mask[v, u]


def test_self_occlusion_is_flagged_for_a_fist_seen_from_the_back():
    generator = _clean_generator()
    shape = sample_hand_shape(np.random.default_rng(1), 'left')
    rotation = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]]) @ np.diag([-1.0, 1, -1])
    pose = HandPose(shape, POSTURES['fist'], rotation, np.array([0.0, 0.05, 0.45]))
    label = generator.render(Scene((pose,), seed=2)).hands[0]
    # Back of the hand towards the camera: the curled fingertips hide behind the knuckles.
    assert not label.visible[skeleton.FINGERTIPS[1:]].any()
    assert label.visible[0]


def test_same_seed_gives_identical_frames():
    frames = [SyntheticGenerator(SR300, seed=5).sample_frame(color=True) for _ in range(2)]
    np.testing.assert_array_equal(frames[0].depth_mm, frames[1].depth_mm)
    np.testing.assert_array_equal(frames[0].color, frames[1].color)
    np.testing.assert_array_equal(frames[0].hands[0].joints_xyz, frames[1].hands[0].joints_xyz)
    other = SyntheticGenerator(SR300, seed=6).sample_frame()
    assert not np.array_equal(other.depth_mm, frames[0].depth_mm)


def test_window_render_equals_the_crop_of_the_full_render():
    sensor = replace(SensorConfig.clean(), noise_sigma_m=0.001, noise_sigma_z2=0.002,
                     dropout_prob=0.01, holes_per_megapixel=200.0)
    generator = SyntheticGenerator(SR300, sensor=sensor, seed=3)
    scene = None
    for index in range(4):
        scene = generator.sample_scene() if index < 3 else scene
        full = generator.render(scene, color=True)
        u, v = np.round(full.hands[0].joints_uvd[9, :2]).astype(int)
        # The last window hangs over the image's top-left corner.
        u0, v0 = (u - 88, v - 88) if index < 3 else (-60, -50)
        window = generator.render(scene, intrinsics=SR300.window(u0, v0, 176, 176), color=True)
        top, left = max(v0, 0), max(u0, 0)
        bottom, right = min(v0 + 176, 480), min(u0 + 176, 640)
        crop = (slice(top, bottom), slice(left, right))
        inner = (slice(top - v0, bottom - v0), slice(left - u0, right - u0))
        mismatch = full.depth_mm[crop] != window.depth_mm[inner]
        assert mismatch.mean() < 1e-3  # float rounding at an exact half millimetre
        np.testing.assert_array_equal(full.hands[0].mask[crop], window.hands[0].mask[inner])
        # Colour shading uses neighbouring pixels: compare away from the window's rim.
        difference = np.abs(full.color[crop].astype(int) - window.color[inner])[1:-1, 1:-1]
        assert np.mean(difference > 2) < 0.01
        np.testing.assert_allclose(window.hands[0].joints_uvd[:, :2],
                                   full.hands[0].joints_uvd[:, :2] - [u0, v0], atol=1e-9)
        outside = np.ones((176, 176), dtype=bool)
        outside[inner] = False
        assert not window.depth_mm[outside].any() and not window.hands[0].mask[outside].any()
    assert outside.sum() == 176 * 176 - 116 * 126


def test_hand_crop_intrinsics_centres_the_hand():
    generator = _clean_generator(seed=4)
    scene = generator.sample_scene()
    center = skeleton.palm_center(scene.hands[0].keypoints_xyz)
    crop = hand_crop_intrinsics(SR300, center, cube_m=0.2, size_px=176)
    frame = generator.render(scene, intrinsics=crop)
    assert frame.depth_mm.shape == (176, 176)
    np.testing.assert_allclose(uvd_from_xyz(center, crop)[:2], [87.5, 87.5], atol=1e-9)
    assert frame.hands[0].mask.sum() > 1000


def test_sensor_noise_grows_with_depth_squared():
    sensor = replace(SensorConfig.clean(), noise_sigma_m=0.0, noise_sigma_z2=0.004)
    for z in (0.5, 1.5):
        wall = Scene((), (SceneItem(Plane((0.0, 0.0, z), (0.0, 0.0, -1.0)), 6),), seed=3)
        depth = SyntheticGenerator(SR300, sensor=sensor).render(wall).depth_m
        assert np.std(depth - z) == pytest.approx(0.004 * z * z, rel=0.1)


def test_default_sensor_drops_edges_shadows_and_holes():
    scene_generator = SyntheticGenerator(SR300, seed=9)
    scene = scene_generator.sample_scene()
    clean = SyntheticGenerator(SR300, sensor=SensorConfig.clean()).render(scene)
    noisy = scene_generator.render(scene)
    lost = np.isfinite(clean.depth_m) & ~np.isfinite(noisy.depth_m)
    assert lost.sum() > 100
    valid = np.isfinite(clean.depth_m) & np.isfinite(noisy.depth_m)
    assert 0 < np.median(np.abs(clean.depth_m[valid] - noisy.depth_m[valid])) < 0.01


@pytest.mark.parametrize('baseline_m', [0.04, -0.04])
def test_shadows_fall_beside_a_near_object_on_the_baseline_side(baseline_m):
    depth = np.full((120, 160), 1.0, dtype=np.float32)
    depth[40:80, 60:100] = 0.5
    depth[:10] = np.nan  # rows without any surface
    sensor = replace(SensorConfig.clean(), shadows=True, baseline_m=baseline_m)
    lost = np.isnan(apply_sensor(depth, sensor, SMALL, seed=0)) & np.isfinite(depth)
    # Disparity step 240 px * 0.04 m * (1 / 0.5 m - 1 / 1 m) = 9.6 px: 9 columns hidden on
    # the emitter's side of the near square, on each of its rows.
    columns = np.arange(51, 60) if baseline_m > 0 else np.arange(100, 109)
    expected = np.zeros_like(lost)
    expected[40:80, columns] = True
    np.testing.assert_array_equal(lost, expected)


def test_frame_millimetres_and_metres_agree():
    generator = SyntheticGenerator(SR300, seed=12)
    for _ in range(3):
        frame = generator.sample_frame()
        np.testing.assert_array_equal(depth_to_millimetres(frame.depth_m), frame.depth_mm)
        np.testing.assert_array_equal(np.isnan(frame.depth_m), frame.depth_mm == 0)
        assert frame.depth_mm.any() and not frame.depth_mm.all()


def test_motion_frames_follow_the_sequence():
    motion = generate_motion(5, seed=2, intrinsics=SMALL)
    generator = SyntheticGenerator(SMALL, seed=1)
    frames = list(generator.render_motion(motion))
    assert len(frames) == 5
    for frame, xyz, stamp in zip(frames, motion.joints_xyz, motion.stamps_s):
        np.testing.assert_array_equal(frame.hands[0].joints_xyz, xyz)
        assert frame.stamp_s == stamp and frame.depth_mm.dtype == np.uint16


@pytest.mark.parametrize('seed', [1, 8])
def test_a_motion_sequence_table_stays_below_every_pose(seed):
    # Seed 1's hand moves 8 cm below where its first pose would have put the table.
    motion = generate_motion(60, seed=seed, intrinsics=SMALL)
    config = replace(SceneConfig.hand_only(), table_prob=1.0)
    background = SyntheticGenerator(SMALL, scene=config, seed=seed).motion_scene(motion)
    (table,) = [item.primitive for item in background.items if item.part == PART_TABLE]
    down = np.asarray(table.rotation)[:, 1]
    top = np.asarray(table.center) @ down - table.half_size[1]
    assert max(float(np.max(pose.keypoints_xyz @ down)) for pose in motion.poses) <= top


def test_colour_frames_show_skin_on_the_hand():
    generator = SyntheticGenerator(SMALL, scene=SceneConfig.hand_only(), seed=3)
    frame = generator.sample_frame(color=True)
    assert frame.color.shape == (120, 160, 3) and frame.color.dtype == np.uint8
    hand = frame.color[frame.hands[0].mask].astype(float)
    # Skin: red above blue.
    assert np.mean(hand[:, 0] >= hand[:, 2]) > 0.9


@pytest.mark.parametrize('seed', range(4))
def test_grasp_blend_sets_how_far_a_hand_holding_an_object_closes(seed):
    def fingers(blend):
        config = SceneConfig(object_prob=1.0, grasp_blend=blend)
        scene = sample_scene(np.random.default_rng(seed), SMALL, config)
        assert any(item.part == PART_OBJECT for item in scene.items)
        return scene.hands[0].articulation.angles_deg

    free, half, grasp = (fingers(blend) for blend in ((0.0, 0.0), (0.5, 0.5), (1.0, 1.0)))
    # The same draws each time: only the blend between the hand's own posture and the
    # grasp changes.
    assert any(np.allclose(grasp, POSTURES[name].angles_deg)
               for name in ('power_grasp', 'pinch', 'tripod', 'relaxed'))
    assert not np.allclose(free, grasp)
    np.testing.assert_allclose(half, (free + grasp) / 2.0)


def test_scene_config_from_plain_values():
    config = SceneConfig(hand_shape={'glove_mm': 2.0}, articulation={'noise_deg': 3.0})
    assert config.hand_shape.glove_mm == 2.0 and config.articulation.noise_deg == 3.0
    with pytest.raises(ValueError, match='scene.articulation'):
        SceneConfig(articulation={'noise': 3.0})


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match='object_prob'):
        SceneConfig(object_prob=1.5)
    with pytest.raises(ValueError, match='grasp_blend'):
        SceneConfig(grasp_blend=(0.9, 0.5))
    with pytest.raises(ValueError, match='grasp_blend'):
        SceneConfig(grasp_blend=(0.5, 1.2))
    with pytest.raises(ValueError, match='dropout_prob'):
        SensorConfig(dropout_prob=2.0)
    with pytest.raises(ValueError, match='intrinsics'):
        SyntheticGenerator('sr300')


def test_the_forearm_is_not_the_wrists_own_surface():
    from hand_pose_ros.core.synth.hand_model import hand_capsules, joint_surface_radii

    shape = sample_hand_shape(np.random.default_rng(0), 'right')
    rotation = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]])
    pose = HandPose(shape, POSTURES['open'], rotation, np.array([0.0, 0.05, 0.5]))
    radii = []
    for elbow_m in (0.025, 0.05):  # how wide the arm grows must not hide or show the wrist
        arm = replace(shape, forearm_radii_m=np.array([shape.forearm_radii_m[0], elbow_m]))
        capsules = hand_capsules(arm, pose.keypoints_xyz, rotation, np.array([0.0, 1.0, 0.0]),
                                 0.25)
        radii.append(joint_surface_radii(capsules, pose.keypoints_xyz))
    np.testing.assert_allclose(radii[0], radii[1])
