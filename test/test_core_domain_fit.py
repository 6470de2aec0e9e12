"""Fitting the synthetic engine to a recording: the statistics, the search, the engine knobs."""

import dataclasses

import numpy as np
import pytest

from hand_pose_ros.core import augment, domain_fit
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.crop import CropSpec
from hand_pose_ros.core.recordings import DepthFrame
from hand_pose_ros.core.synth import SensorConfig, SyntheticGenerator
from hand_pose_ros.core.synth.hand_model import HandShapeConfig, sample_hand_shape
from hand_pose_ros.core.synth.scene import SceneConfig
from hand_pose_ros.core.training import SyntheticCrops

CAMERA = CameraIntrinsics(250.0, 250.0, 80.0, 60.0, 160, 120)
SPEC = augment.context_spec(CropSpec(input_size=32, cube_size_m=(0.25, 0.25, 0.3)), 1.5)


def bar_frame(width_px=10, depth_m=0.5):
    """Return a depth image (metres) holding one vertical bar, and its centre (3,)."""
    depth = np.full((CAMERA.height, CAMERA.width), np.nan, np.float32)
    u0 = 80 - width_px // 2
    depth[20:100, u0:u0 + width_px] = depth_m
    return depth, np.array([0.0, 0.0, depth_m])


def test_a_bar_measures_its_half_width_area_and_no_noise():
    depth, center = bar_frame()
    region = domain_fit.hand_region(depth, CAMERA, center)
    metres_per_px = 0.5 / CAMERA.fx
    # The ridge of a 10 px wide bar lies 5 px from the background (edt to pixel centres).
    assert np.median(region['half_widths_mm']) == pytest.approx(5 * metres_per_px * 1000,
                                                                abs=metres_per_px * 1000)
    assert region['area_cm2'] == pytest.approx(10 * 80 * metres_per_px ** 2 * 1e4, rel=0.01)
    assert region['noise_mm_per_m2'] == 0.0
    assert region['missing_inside'] == 0.0


def test_missing_pixels_and_noise_raise_their_statistics():
    depth, center = bar_frame(width_px=30)
    rng = np.random.default_rng(0)
    noisy = depth + rng.normal(0.0, 0.002, depth.shape).astype(np.float32)
    holes = depth.copy()
    inside = np.argwhere(np.isfinite(depth))
    dropped = inside[rng.choice(len(inside), len(inside) // 10, replace=False)]
    holes[dropped[:, 0], dropped[:, 1]] = np.nan
    clean = domain_fit.hand_region(depth, CAMERA, center)
    # Mean distance to the 3x3 median: between half and all of sigma (2 mm at 0.25 m^2).
    assert 0.5 * 2.0 / 0.25 < domain_fit.hand_region(noisy, CAMERA, center)[
        'noise_mm_per_m2'] < 2.0 / 0.25
    assert clean['noise_mm_per_m2'] == 0.0
    assert domain_fit.hand_region(holes, CAMERA, center)['missing_inside'] == pytest.approx(
        0.1, abs=0.03)


def test_no_hand_region_gives_none_and_no_regions_a_clear_error():
    empty = np.full((CAMERA.height, CAMERA.width), np.nan, np.float32)
    assert domain_fit.hand_region(empty, CAMERA, np.array([0.0, 0.0, 0.5])) is None
    depth, _ = bar_frame()
    assert domain_fit.hand_region(depth, CAMERA, np.array([0.0, 0.0, np.nan])) is None
    assert domain_fit.hand_region(depth, CAMERA, np.array([5.0, 0.0, 0.5])) is None
    with pytest.raises(ValueError, match='no frame has a usable hand region'):
        domain_fit.summarise([None])


def test_interpolation_inverts_an_increasing_statistic_and_clamps():
    grid = (0.0, 1.0, 2.0, 4.0)
    values = (10.0, 12.0, 11.0, 20.0)  # noisy: made monotone first
    assert domain_fit.interpolate(grid, values, 11.0) == pytest.approx(0.5)
    assert domain_fit.interpolate(grid, values, 16.0) == pytest.approx(3.0)
    assert domain_fit.interpolate(grid, values, 5.0) == 0.0
    assert domain_fit.interpolate(grid, values, 25.0) == 4.0


def test_a_glove_thickens_every_surface_and_nothing_else():
    bare = sample_hand_shape(np.random.default_rng(4), 'left', HandShapeConfig())
    gloved = sample_hand_shape(np.random.default_rng(4), 'left', HandShapeConfig(glove_mm=3.0))
    np.testing.assert_allclose(gloved.joint_radii_m - bare.joint_radii_m, 0.003)
    assert gloved.palm_thickness_m - bare.palm_thickness_m == pytest.approx(0.006)
    np.testing.assert_array_equal(gloved.bone_lengths_m, bare.bone_lengths_m)
    with pytest.raises(ValueError, match='glove_mm'):
        HandShapeConfig(glove_mm=-1.0)
    # Data configs give the hand shape as a mapping.
    assert SceneConfig(hand_shape={'glove_mm': 2.0}).hand_shape.glove_mm == 2.0
    with pytest.raises(ValueError, match='unknown scene.hand_shape keys'):
        SceneConfig(hand_shape={'gloves': 2.0})


def test_synthetic_crops_take_a_camera_preset_or_its_intrinsics():
    as_dict = dataclasses.asdict(CAMERA)
    assert SyntheticCrops(SPEC, 0, camera=as_dict).intrinsics == CAMERA
    assert CameraIntrinsics.from_spec('icvl') == CameraIntrinsics.from_preset('icvl')
    with pytest.raises(ValueError, match='preset name or a mapping'):
        CameraIntrinsics.from_spec({'fx': 1.0})
    with pytest.raises(ValueError, match='unknown camera preset'):
        CameraIntrinsics.from_spec('kinect9')


def recording(glove_mm, noise, frames, seed):
    """Return (DepthFrame list, true hand centres) of full ICVL frames of a domain."""
    generator = SyntheticGenerator(
        CameraIntrinsics.from_preset('icvl'),
        scene=SceneConfig(hand_shape={'glove_mm': glove_mm}),
        sensor=SensorConfig(noise_sigma_z2=noise), seed=seed)
    result, centers = [], []
    for index in range(frames):
        frame = generator.sample_frame()
        result.append(DepthFrame(index, frame.depth_mm, frame.intrinsics))
        centers.append(frame.hands[0].joints_xyz.mean(axis=0))
    return result, np.array(centers)


def test_the_fit_recovers_a_glove_and_the_depth_noise():
    base = {'type': 'synthetic', 'camera': 'sr300'}
    fits = {}
    for glove_mm, noise in ((0.0, 0.0012), (4.0, 0.005)):
        frames, centers = recording(glove_mm, noise, 100, seed=7)
        fit = domain_fit.fit_domain(frames, centers, base, SPEC, crops=150, passes=1, seed=1)
        assert fit.fitted['sensor.noise_sigma_z2'] == pytest.approx(noise, rel=0.35)
        assert 90 <= fit.recording['frames'] <= 100  # hands cut by the border may not count
        # The fitted engine's noise statistic is the recording's.
        assert fit.rendered['noise_mm_per_m2'] == pytest.approx(
            fit.recording['noise_mm_per_m2'], rel=0.1)
        assert CameraIntrinsics(**fit.data['camera']) == CameraIntrinsics.from_preset('icvl')
        fits[glove_mm] = fit.fitted['hand_shape.glove_mm']
    # The thin widths of 100 frames tell a glove from bare hands, its thickness only coarsely
    # (the statistic flattens beyond about 5 mm).
    assert fits[0.0] <= 2.0 and fits[4.0] >= 3.0
    with pytest.raises(ValueError, match='fits the synthetic engine'):
        domain_fit.fit_domain(frames, centers, {'type': 'nyu', 'root': '/data'}, SPEC)


def test_depth_away_from_the_estimated_bones_counts_as_unexplained():
    depth, center = bar_frame()
    # A hand whose joints run down the bar's axis (wrist on top): all of the bar is near a bone.
    keypoints = np.zeros((21, 3))
    keypoints[:, 1] = np.linspace(-0.07, 0.07, 21)
    keypoints[:, 2] = 0.5
    assert domain_fit.hand_region(depth, CAMERA, center, keypoints)['unexplained'] == 0.0
    held = depth.copy()
    held[55:65, 105:115] = 0.5  # 100 px, 5 cm beside the bar
    share = domain_fit.hand_region(held, CAMERA, center, keypoints)['unexplained']
    assert share == pytest.approx(100 / 900, rel=0.05)
    assert np.isnan(domain_fit.hand_region(held, CAMERA, center)['unexplained'])
    summary = domain_fit.summarise([domain_fit.hand_region(held, CAMERA, center, keypoints),
                                    domain_fit.hand_region(depth, CAMERA, center, keypoints)])
    assert summary['object_share'] == 0.5
    assert np.isnan(domain_fit.summarise([domain_fit.hand_region(held, CAMERA, center)])[
        'object_share'])


def test_the_fit_finds_held_objects_with_the_estimator():
    from hand_pose_ros.core.estimator import load_estimator

    estimator = load_estimator('default', backend='onnxruntime')

    def estimate(depth_mm, intrinsics, center):
        return estimator.estimate(depth_mm, intrinsics, centers=center[None])[0].keypoints_xyz

    base = {'type': 'synthetic', 'camera': 'icvl'}
    fitted = {}
    for object_prob in (0.0, 1.0):
        generator = SyntheticGenerator(
            CameraIntrinsics.from_preset('icvl'),
            scene=SceneConfig(object_prob=object_prob, out_of_frame_prob=0.0,
                              **domain_fit.FIT_SCENE), seed=11)
        frames, joints = [], []
        for index in range(60):
            frame = generator.sample_frame()
            center = frame.hands[0].joints_xyz.mean(axis=0)
            frames.append(DepthFrame(index, frame.depth_mm, frame.intrinsics))
            joints.append(estimate(frame.depth_mm, frame.intrinsics, center))
        joints = np.array(joints)
        fit = domain_fit.fit_domain(frames, joints.mean(axis=1), base, SPEC, crops=60,
                                    passes=1, seed=2, keypoints=joints, estimate=estimate)
        fitted[object_prob] = fit.fitted['scene.object_prob']
    assert fitted[0.0] <= 0.35 and fitted[1.0] >= 0.65, fitted
