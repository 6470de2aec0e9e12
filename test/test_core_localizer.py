import numpy as np
import pytest

from hand_pose_ros.core.camera import CameraIntrinsics, depth_to_metres
from hand_pose_ros.core.localizer import DepthHandLocalizer, LocalizerConfig

INTRINSICS = CameraIntrinsics.from_preset('sr300')
V, U = np.mgrid[0:INTRINSICS.height, 0:INTRINSICS.width]
RAY_X = (U - INTRINSICS.cx) / INTRINSICS.fx
RAY_Y = (V - INTRINSICS.cy) / INTRINSICS.fy


def empty():
    return np.full((INTRINSICS.height, INTRINSICS.width), np.nan, dtype=np.float32)


def paint(depth, mask, z):
    """Draw a surface where ``mask`` holds, keeping the nearer of it and what is there."""
    z = np.broadcast_to(np.asarray(z, dtype=np.float32), depth.shape)
    closer = mask & ~(depth <= z)
    depth[closer] = z[closer]


def add_hand(depth, center, arm_to=None):
    """
    Draw a fronto-parallel hand (palm disc + finger block), optionally with a forearm.

    The hand surface is 10 mm in front of ``center`` (the joints lie inside the hand), and
    ``center`` lies 30 mm from the palm's middle towards the fingers, like the centroid of a
    hand's 21 joints (the ground truth the localiser is measured against).
    """
    x0, y0, z0 = center
    y0 = y0 + 0.03
    zs = z0 - 0.01
    x, y = RAY_X * zs, RAY_Y * zs
    radius2 = ((x - x0) ** 2 + (y - y0 - 0.02) ** 2) / 0.045 ** 2
    fingers = (np.abs(x - x0) < 0.04) & (y < y0) & (y > y0 - 0.08) \
        & (np.mod((x - x0) * 100, 2.0) < 1.4)
    paint(depth, fingers, zs)
    # The palm bulges 15 mm towards the camera (a real hand is not flat).
    paint(depth, radius2 < 1.0, zs - 0.015 * (1.0 - np.minimum(radius2, 1.0)))
    if arm_to is not None:
        # Forearm from the wrist towards image direction arm_to (unit 2-vector), receding.
        direction = np.asarray(arm_to, dtype=np.float64)
        wrist = np.array([x0, y0 + 0.06])
        for step in np.linspace(0.0, 0.5, 120):
            z = zs + 0.35 * step
            px, py = wrist + direction * step
            xr, yr = RAY_X * z, RAY_Y * z
            paint(depth, (xr - px) ** 2 + (yr - py) ** 2 < 0.035 ** 2, z)
    return depth


def locate(depth, max_hands=2, config=None):
    return DepthHandLocalizer(config).locate(depth, INTRINSICS, max_hands=max_hands)


def test_single_hand_with_forearm_to_the_border():
    center = np.array([0.02, -0.03, 0.5])
    depth = add_hand(empty(), center, arm_to=(0.0, 1.0))
    hands = locate(depth)
    assert len(hands) == 1
    assert hands[0].arm_cut
    assert np.linalg.norm(hands[0].center_xyz - center) < 0.03
    u_min, v_min, u_max, v_max = hands[0].bbox
    assert u_min < 320 < u_max and v_min < 215 < v_max


def test_arm_entering_from_the_side_is_cut_at_the_far_end():
    center = np.array([-0.05, 0.0, 0.45])
    depth = add_hand(empty(), center, arm_to=(0.8, 0.6))
    hands = locate(depth)
    assert len(hands) == 1 and hands[0].arm_cut
    assert np.linalg.norm(hands[0].center_xyz - center) < 0.035


def test_two_hands_at_different_depths():
    left, right = np.array([-0.15, 0.0, 0.5]), np.array([0.15, 0.02, 0.62])
    depth = add_hand(add_hand(empty(), left, arm_to=(-0.3, 1.0)), right, arm_to=(0.3, 1.0))
    hands = locate(depth, max_hands=2)
    assert len(hands) == 2
    found = sorted((h.center_xyz for h in hands), key=lambda c: c[0])
    assert np.linalg.norm(found[0] - left) < 0.035
    assert np.linalg.norm(found[1] - right) < 0.035
    assert len(locate(depth, max_hands=1)) == 1
    assert locate(depth, max_hands=0) == []


def test_no_hand_empty_and_all_invalid_images():
    assert locate(empty()) == []
    assert locate(depth_to_metres(np.zeros((480, 640), np.uint16))) == []
    # Speckle: a few isolated near pixels are too small to be a hand.
    depth = empty()
    depth[100:103, 200:202] = 0.4
    depth[300, 400] = 0.3
    assert locate(depth) == []


def test_table_and_wall_are_rejected_but_hand_in_front_is_found():
    table = empty()
    # A table plane seen from above, filling the lower half of the image.
    paint(table, V > 240, 0.6 + 0.002 * (V - 240))
    assert locate(table) == []
    wall = np.full_like(table, 0.9)
    assert locate(wall) == []
    center = np.array([0.0, -0.05, 0.5])
    scene = add_hand(wall.copy(), center, arm_to=(0.0, 1.0))
    paint(scene, V > 300, 0.75 + 0.0005 * (V - 300))
    hands = locate(scene)
    assert len(hands) == 1
    assert np.linalg.norm(hands[0].center_xyz - center) < 0.03


def test_hand_near_the_image_border():
    # Hand centre 40 px from the left edge: part of the palm lies outside the image.
    z = 0.5
    center = np.array([(40 - INTRINSICS.cx) * z / INTRINSICS.fx, 0.0, z])
    depth = add_hand(empty(), center)
    hands = locate(depth)
    assert len(hands) == 1
    assert abs(hands[0].center_xyz[2] - z) < 0.02
    assert np.linalg.norm(hands[0].center_xyz[:2] - center[:2]) < 0.04


def test_bad_input_and_config():
    with pytest.raises(ValueError, match='float metres'):
        locate(np.zeros((480, 640), np.uint16))
    with pytest.raises(ValueError, match='intrinsics'):
        locate(np.zeros((240, 320), np.float32))
    with pytest.raises(ValueError, match='max_depth_m'):
        LocalizerConfig(min_depth_m=2.0, max_depth_m=1.0)
    with pytest.raises(ValueError, match='limb_radius_m'):
        LocalizerConfig(limb_radius_m=0.0)
    with pytest.raises(ValueError, match='min_body_area_m2'):
        LocalizerConfig(min_body_area_m2=-1.0)


def test_detection_rate_and_centre_error_on_synthetic_frames():
    from hand_pose_ros.core.evaluation import (
        evaluate_localizer, synthetic_frames, synthetic_scene_config)

    # Held-out seed; full figures (2000 frames) come from hand_pose_evaluate --localizer-only.
    frames = synthetic_frames(30, seed=1000, scene=synthetic_scene_config('hand_only'))
    result = evaluate_localizer(DepthHandLocalizer(), frames, max_hands=1)
    assert result['hands'] == 30
    assert result['detection_rate'] >= 0.8
    assert result['center_error_mm']['median'] < 35.0
    assert result['false_positives_per_frame'] <= 0.2


def test_nearer_of_two_similar_hands_ranks_first():
    near, far = np.array([-0.12, 0.0, 0.45]), np.array([0.15, 0.0, 0.95])
    depth = add_hand(add_hand(empty(), far, arm_to=(0.3, 1.0)), near, arm_to=(-0.3, 1.0))
    hands = locate(depth, max_hands=2)
    assert len(hands) == 2 and hands[0].score > hands[1].score
    assert np.linalg.norm(hands[0].center_xyz - near) < 0.035
    assert np.linalg.norm(locate(depth, max_hands=1)[0].center_xyz - near) < 0.035


def test_synthetic_arms_leave_the_image_or_recede_like_real_arms():
    # The localiser picks the hand end of an arm by where the arm enters; synthetic arms
    # must not end in mid-air next to the hand (real arms reach the border or a body).
    from hand_pose_ros.core.synth import SceneConfig, SensorConfig, SyntheticGenerator
    from hand_pose_ros.core.synth.scene import PART_FOREARM

    generator = SyntheticGenerator(INTRINSICS.scaled(0.25), scene=SceneConfig.hand_only(),
                                   sensor=SensorConfig.clean(), seed=7)
    for _ in range(12):
        frame = generator.sample_frame()
        arm = frame.parts == PART_FOREARM
        on_border = arm[0].any() or arm[-1].any() or arm[:, 0].any() or arm[:, -1].any()
        behind = np.nanmax(np.where(arm, frame.depth_m, np.nan)) \
            - frame.hands[0].joints_xyz[:, 2].mean()
        assert on_border or behind > 0.4


def test_hand_at_the_end_of_an_arm_growing_out_of_a_body():
    # The arm runs depth-continuously into a torso: the torso is the arm's entry, and the
    # hand is the arm's other end, not the torso or the join.
    center = np.array([-0.25, -0.05, 0.75])
    depth = add_hand(empty(), center, arm_to=(1.0, 0.0))
    z = 0.93
    torso = ((RAY_X * z - 0.40) / 0.17) ** 2 + ((RAY_Y * z - 0.05) / 0.3) ** 2 < 1.0
    paint(depth, torso, z)
    hands = locate(depth, max_hands=1)
    assert len(hands) == 1
    assert np.linalg.norm(hands[0].center_xyz - center) < 0.035


def test_image_whose_strided_size_is_odd():
    # 700 x 470 pixels (stride 4: 118 x 175): the block grid of the core step drops the
    # last column; a hand with an arm from a torso is still found, without errors.
    intrinsics = CameraIntrinsics(INTRINSICS.fx, INTRINSICS.fy, INTRINSICS.cx + 30.0,
                                  INTRINSICS.cy - 5.0, 700, 470)
    v, u = np.mgrid[0:470, 0:700]
    ray_x, ray_y = (u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy
    depth = np.full((470, 700), np.nan, dtype=np.float32)
    center = np.array([-0.2, -0.02, 0.7])
    z = center[2] - 0.01
    palm = (ray_x * z - center[0]) ** 2 + (ray_y * z - center[1] - 0.03) ** 2 < 0.045 ** 2
    arm = (np.abs(ray_y * z - center[1] - 0.02) < 0.03) & (ray_x * z > center[0]) \
        & (ray_x * z < 0.2)
    torso = ((ray_x * 0.72 - 0.32) / 0.15) ** 2 + ((ray_y * 0.72) / 0.3) ** 2 < 1.0
    paint(depth, torso, 0.72)
    paint(depth, arm, z)
    paint(depth, palm, z - 0.01)
    hands = DepthHandLocalizer().locate(depth, intrinsics, max_hands=1)
    assert len(hands) == 1
    assert np.linalg.norm(hands[0].center_xyz[:2] - center[:2]) < 0.05
    assert abs(hands[0].center_xyz[2] - center[2]) < 0.03


def test_a_hand_cut_by_the_border_keeps_its_centre_in_the_image():
    from hand_pose_ros.core.crop import check_center
    from hand_pose_ros.core.evaluation import labelled_frames

    # Frame 251 of the single-hand held-out set: a hand at 0.26 m leaving the top of the
    # image, whose centre correction pointed outside the image (a crash in the estimator).
    *_, frame = labelled_frames('synthetic', num_frames=252, scene='single_hand')
    candidates = DepthHandLocalizer().locate(frame.depth_m, frame.intrinsics)
    assert candidates
    for candidate in candidates:
        check_center(candidate.center_xyz, frame.intrinsics)


def test_a_hand_at_the_right_edge_keeps_its_box_in_the_image():
    # 702 x 470 pixels at stride 4: the last strided column ends past the image.
    intrinsics = CameraIntrinsics(INTRINSICS.fx, INTRINSICS.fy, 351.0, 235.0, 702, 470)
    v, u = np.mgrid[0:470, 0:702]
    z = 0.6
    x, y = (u - intrinsics.cx) / intrinsics.fx * z, (v - intrinsics.cy) / intrinsics.fy * z
    depth = np.full((470, 702), np.nan, dtype=np.float32)
    # A palm at the right edge, fingers pointing left.
    paint(depth, (np.abs(y) < 0.04) & (x < 0.38) & (x > 0.30) & (np.mod(y * 100, 2.0) < 1.4),
          z)
    paint(depth, (x - 0.41) ** 2 + y ** 2 < 0.045 ** 2, z - 0.01)
    hands = DepthHandLocalizer().locate(depth, intrinsics, max_hands=2.0)  # a float count too
    assert len(hands) == 1
    u_min, v_min, u_max, v_max = hands[0].bbox
    assert 0 <= u_min <= u_max == 701 and 0 <= v_min <= v_max <= 469


def test_max_slope_is_the_steepest_surface_kept_whole():
    from hand_pose_ros.core.localizer import _far_side_of_jumps

    # A plane rising 0.2 m per metre across the image at 1 m, 1 mm pixels (pitch 1 mm at
    # 1 m: 1,000 pixels per metre): kept whole up to max_slope 0.2, cut beyond.
    depth = 1.0 + 0.2 * np.arange(50)[None, :] * 0.001 * np.ones((4, 1))
    for slope, cut in ((0.25, False), (0.15, True)):
        far = _far_side_of_jumps(depth, 0.0, slope / 1000.0)
        assert far.any() == cut
