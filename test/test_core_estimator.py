"""
Estimator plumbing, API and bad input.

The backends here are built in the test: an oracle that returns known normalised joints
(tests the crop/decode plumbing exactly, not a network) and a tiny untrained A2J network
(tests that a real network's outputs pass through).
"""

import numpy as np
import pytest
from test_core_crop import nearest_point_network

from hand_pose_ros.core import CameraIntrinsics, HandPose, HandPoseEstimator, load_estimator
from hand_pose_ros.core.crop import CropSpec, make_transform
from hand_pose_ros.core.estimator import HandScore
from hand_pose_ros.core.localizer import DepthHandLocalizer
from hand_pose_ros.core.model_io import ModelFileError

INTRINSICS = CameraIntrinsics.from_preset('sr300')
SPEC = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3))
CENTER = np.array([0.03, -0.02, 0.5])


class OracleBackend:
    """Return fixed normalised joints (one set per hand) with a fixed confidence."""

    def __init__(self, joints_norm, confidence=0.8):
        self.joints_norm = np.asarray(joints_norm, dtype=np.float32)
        self.confidence = np.asarray(confidence, dtype=np.float32)
        self.batches = []

    def __call__(self, batch):
        self.batches.append(batch)
        count = len(batch)
        confidence = np.broadcast_to(self.confidence, (len(self.joints_norm),))[:count]
        return {'joints': self.joints_norm[:count],
                'confidence': np.repeat(confidence[:, None], 21, axis=1)}


def hand_scene(center=CENTER):
    """Return a depth image (float32 m) with a hand-sized disc 10 mm in front of center."""
    v, u = np.mgrid[0:INTRINSICS.height, 0:INTRINSICS.width]
    depth = np.full(v.shape, np.nan, dtype=np.float32)
    z = center[2] - 0.01
    x = (u - INTRINSICS.cx) * z / INTRINSICS.fx
    y = (v - INTRINSICS.cy) * z / INTRINSICS.fy
    depth[(x - center[0]) ** 2 + (y - center[1]) ** 2 < 0.06 ** 2] = z
    return depth


def known_joints(center=CENTER, seed=0):
    return center + np.random.default_rng(seed).uniform(-0.08, 0.08, size=(21, 3))


def estimator(backend, spec=SPEC):
    return HandPoseEstimator(DepthHandLocalizer(), spec, backend, max_hands=2, name='test')


def test_given_centres_decode_to_the_known_joints():
    joints = np.stack([known_joints(CENTER, 0), known_joints(CENTER + [0.1, 0, 0.1], 1)])
    centers = np.stack([CENTER, CENTER + [0.1, 0, 0.1]])
    norm = np.stack([make_transform(INTRINSICS, c, SPEC).normalized_from_xyz(j)
                     for c, j in zip(centers, joints)])
    backend = OracleBackend(norm)
    est = estimator(backend)
    depth_mm = np.round(hand_scene() * 1000).astype(np.float32)
    depth_mm = np.nan_to_num(depth_mm).astype(np.uint16)
    hands = est.estimate(depth_mm, INTRINSICS, centers=centers)
    assert len(hands) == 2 and all(isinstance(h, HandPose) for h in hands)
    for hand, expected, center in zip(hands, joints, centers):
        # float32 normalised joints: sub-micrometre loss.
        np.testing.assert_allclose(hand.keypoints_xyz, expected, atol=1e-5)
        np.testing.assert_allclose(hand.center_xyz, center)
        assert hand.keypoints_xyz.shape == (21, 3) and hand.scores.shape == (21,)
        assert hand.detection_score == 1.0
    np.testing.assert_allclose(hands[0].scores, 0.8, atol=1e-6)
    # One batched backend call for both hands.
    assert len(backend.batches) == 1 and backend.batches[0].shape == (2, 1, 64, 64)
    assert set(est.last_timings) == {'localize', 'find', 'crop', 'infer', 'decode'}
    assert est.last_timings['find'] == 0.0     # no learned finder in this estimator
    assert all(value >= 0 for value in est.last_timings.values())


def test_localised_hand_is_cropped_around_the_detected_centre():
    backend = OracleBackend(np.zeros((2, 21, 3)))  # every joint at the crop centre
    hands = estimator(backend).estimate(hand_scene(), INTRINSICS)
    assert len(hands) == 1
    hand = hands[0]
    np.testing.assert_allclose(hand.keypoints_xyz, np.tile(hand.center_xyz, (21, 1)),
                               atol=1e-6)
    # The localiser puts the centre 20 mm behind the surface; the disc is 10 mm in front.
    assert np.linalg.norm(hand.center_xyz - CENTER) < 0.015
    assert 0 < hand.detection_score <= 1
    # The patch is the crop of the disc: its centre pixel sees the disc surface.
    patch = backend.batches[0][0, 0]
    surface_z = CENTER[2] - 0.01
    assert patch[32, 32] == pytest.approx((surface_z - hand.center_xyz[2]) / 0.15, abs=1e-5)


def test_tiny_network_backend_gives_finite_joints_near_the_crop():
    torch = pytest.importorskip('torch')
    from hand_pose_ros.core.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3))
    model = build_model('a2j', backbone='resnet18', width=0.25, input_size=64,
                        head_channels=16).eval()

    def backend(batch):
        with torch.no_grad():
            out = model(torch.from_numpy(batch))
        return {key: value.numpy() for key, value in out.items()}

    hands = estimator(backend, spec).estimate(hand_scene(), INTRINSICS)
    assert len(hands) == 1
    keypoints = hands[0].keypoints_xyz
    scores = hands[0].scores
    assert np.all(np.isfinite(keypoints)) and np.all((scores >= 0) & (scores <= 1))
    # A2J decodes joints as anchor averages: inside the crop box whatever the weights.
    assert np.all(np.abs(keypoints[:, :2] - hands[0].center_xyz[:2]) < 0.12)


def test_empty_and_invalid_images_give_no_hands():
    est = estimator(OracleBackend(np.zeros((2, 21, 3))))
    assert est.estimate(np.zeros((480, 640), np.uint16), INTRINSICS) == []
    assert est.estimate(np.full((480, 640), np.nan, np.float32), INTRINSICS) == []
    noisy = np.full((480, 640), np.inf, np.float32)
    noisy[::7, ::5] = np.nan
    assert est.estimate(noisy, INTRINSICS) == []
    assert est.backend.batches == []
    # Given centres where the crop has no depth in its cube: nothing to estimate from.
    centers = np.stack([CENTER, CENTER + [0.0, 0.0, 0.5]])   # the second far behind the disc
    assert est.estimate(np.zeros((480, 640), np.uint16), INTRINSICS, centers=centers) == []
    hands = est.estimate(hand_scene(), INTRINSICS, centers=centers)
    assert len(hands) == 1 and np.allclose(hands[0].center_xyz, CENTER)


def test_joints_decoded_behind_the_camera_are_dropped():
    # A centre 8 cm away with a 15 cm half-depth cube: the cube's near face is behind the
    # camera, and joints decoded there are not a hand.
    center = np.array([0.0, 0.0, 0.08])
    norm = np.zeros((1, 21, 3))
    norm[0, :, 2] = -0.9                              # z = 0.08 - 0.135 < 0
    depth = np.full((480, 640), 0.07, np.float32)
    est = estimator(OracleBackend(norm))
    assert est.estimate(depth, INTRINSICS, centers=center[None]) == []
    norm[0, :, 2] = 0.0
    assert len(estimator(OracleBackend(norm)).estimate(depth, INTRINSICS,
                                                       centers=center[None])) == 1


@pytest.mark.parametrize('depth, message', [
    (np.zeros((480, 640), np.uint8), 'dtype'),
    (np.zeros((480, 640, 3), np.float32), '2-D'),
    (np.zeros(640, np.float32), '2-D'),
    (np.zeros((0, 640), np.float32), 'empty'),
    (np.zeros((240, 320), np.float32), 'intrinsics'),
])
def test_bad_images_raise(depth, message):
    from hand_pose_ros.core import HandTracker

    est = estimator(OracleBackend(np.zeros((2, 21, 3))))
    with pytest.raises(ValueError, match=message):
        est.estimate(depth, INTRINSICS)
    with pytest.raises(ValueError, match=message):
        HandTracker(est).estimate(depth, INTRINSICS)


@pytest.mark.parametrize('centers, message', [
    ([[0.0, 0.0, -0.4]], 'behind'),
    ([[5.0, 0.0, 0.5]], 'outside'),
    ([[np.nan, 0.0, 0.5]], 'finite'),
    ([[0.0, 0.5]], 'shape'),
    ({'x': 1.0}, 'numbers in metres'),
    ([[0.0, 0.0, 0.5 + 1j]], 'complex'),
])
def test_bad_centres_raise(centers, message):
    est = estimator(OracleBackend(np.zeros((2, 21, 3))))
    with pytest.raises(ValueError, match=message):
        est.estimate(hand_scene(), INTRINSICS,
                     centers=centers if isinstance(centers, dict) else np.array(centers))


def test_bad_intrinsics_and_backend_outputs():
    est = estimator(OracleBackend(np.zeros((2, 21, 3))))
    with pytest.raises(ValueError, match='CameraIntrinsics'):
        est.estimate(hand_scene(), (475.0, 475.0, 320.0, 240.0))
    nan_joints = np.zeros((2, 21, 3))
    nan_joints[0, 3] = np.nan
    assert estimator(OracleBackend(nan_joints)).estimate(
        hand_scene(), INTRINSICS, centers=[CENTER]) == []
    wrong = estimator(lambda batch: {'joints': np.zeros((len(batch), 14, 3)),
                                     'confidence': np.zeros((len(batch), 14))})
    with pytest.raises(ValueError, match='expected'):
        wrong.estimate(hand_scene(), INTRINSICS, centers=[CENTER])
    with pytest.raises(ValueError, match='CropSpec'):
        HandPoseEstimator(DepthHandLocalizer(), {'input_size': 64}, OracleBackend([]))


def test_named_models_are_found_where_pip_install_puts_them(tmp_path, monkeypatch):
    # A plain (non-editable) `pip install .` puts setup.py's data files under
    # <prefix>/share/hand_pose_ros, outside any ament index.
    import shutil
    import sys

    from hand_pose_ros.core.estimator import PACKAGE_MODELS_DIR, resolve_card

    models = tmp_path / 'share' / 'hand_pose_ros' / 'models'
    models.mkdir(parents=True)
    shutil.copy(PACKAGE_MODELS_DIR / 'default.yaml', models / 'installed_only.yaml')
    monkeypatch.setattr(sys, 'prefix', str(tmp_path))
    monkeypatch.delenv('AMENT_PREFIX_PATH', raising=False)
    assert resolve_card('installed_only') == models / 'installed_only.yaml'
    # Debian's system Python: prefix /usr, but pip writes the data files under /usr/local.
    import sysconfig

    monkeypatch.setattr(sys, 'prefix', '/usr')
    monkeypatch.setattr(sysconfig, 'get_path',
                        lambda name, scheme=None: str(tmp_path) if scheme is None else '/nowhere')
    assert resolve_card('installed_only') == models / 'installed_only.yaml'


def test_missing_model_names_the_file(tmp_path):
    with pytest.raises(ModelFileError, match='no_such_model.yaml'):
        load_estimator('no_such_model')
    card = tmp_path / 'mine.yaml'
    with pytest.raises(ModelFileError, match=str(card)):
        load_estimator(str(card))
    card.write_text('network: a2j\n')
    with pytest.raises(ModelFileError, match='not a model card'):
        load_estimator(str(card))


def test_load_estimator_from_a_saved_card(tmp_path):
    torch = pytest.importorskip('torch')
    from hand_pose_ros.core.model_io import read_card, save_model, write_card
    from hand_pose_ros.core.models import build_model

    torch.set_num_threads(1)
    model = build_model('a2j', backbone='resnet18', width=0.25, input_size=64, head_channels=16)
    card = save_model(model, tmp_path, 'tiny', extra={'crop': SPEC.to_dict()})
    est = load_estimator(str(card), backend='torch', max_hands=1, device='cpu')
    assert est.spec == SPEC and est.max_hands == 1 and est.views == 1
    hands = est.estimate(hand_scene(), INTRINSICS)
    assert len(hands) == 1 and np.all(np.isfinite(hands[0].keypoints_xyz))
    # Test-time views: the card's inference.views unless the caller names a number.
    values = read_card(card)
    write_card(card, {**values, 'inference': {'views': 4}})
    assert load_estimator(str(card), backend='torch', device='cpu').views == 4
    assert load_estimator(str(card), backend='torch', device='cpu', views=2).views == 2
    write_card(card, {**values, 'inference': {'views': 3}})
    with pytest.raises(ModelFileError, match=r'tiny.yaml: inference.views must be one of'):
        load_estimator(str(card), backend='torch', device='cpu')
    # Re-centring passes likewise: the card's inference.refine_passes (else 1).
    assert est.refine_passes == 1
    write_card(card, {**values, 'inference': {'refine_passes': 3}})
    assert load_estimator(str(card), backend='torch', device='cpu').refine_passes == 3
    assert load_estimator(str(card), backend='torch', device='cpu',
                          refine_passes=0).refine_passes == 0
    for bad in (-1, 1.5, True):
        write_card(card, {**values, 'inference': {'refine_passes': bad}})
        with pytest.raises(ModelFileError, match=r'inference.refine_passes must be an integer'):
            load_estimator(str(card), backend='torch', device='cpu')
    # A corrupted weights file is refused, naming the file.
    weights = tmp_path / 'tiny.safetensors'
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match='tiny.safetensors'):
        load_estimator(str(card), backend='torch')


def test_refinement_pass_recrops_at_the_joint_centroid():
    shift = np.zeros((2, 21, 3))
    shift[..., 0] = 0.2  # every joint 0.2 crop half-widths right of the crop centre
    backend = OracleBackend(shift)
    est = estimator(backend)
    hands = est.estimate(hand_scene(), INTRINSICS)
    assert len(hands) == 1 and len(backend.batches) == 2
    first = DepthHandLocalizer().locate(hand_scene(), INTRINSICS)[0].center_xyz
    expected = make_transform(INTRINSICS, first, SPEC).xyz_from_normalized(shift[0]).mean(0)
    np.testing.assert_allclose(hands[0].center_xyz, expected, atol=1e-9)
    assert hands[0].center_xyz[0] - first[0] == pytest.approx(0.02, abs=1e-3)
    # Given centres are used as they are: one pass.
    backend.batches.clear()
    est.estimate(hand_scene(), INTRINSICS, centers=[CENTER])
    assert len(backend.batches) == 1
    no_refine = HandPoseEstimator(DepthHandLocalizer(), SPEC, backend, refine_passes=0)
    backend.batches.clear()
    no_refine.estimate(hand_scene(), INTRINSICS)
    assert len(backend.batches) == 1
    # A re-centring pass is made only while it moves a crop: joints 2 cm off the crop centre
    # keep moving it, joints around it need none (the first pass has converged).
    for joints, batches in ((shift, 4), (np.zeros((2, 21, 3)), 1)):
        backend = OracleBackend(joints)
        HandPoseEstimator(DepthHandLocalizer(), SPEC, backend, max_hands=1,
                          refine_passes=3).estimate(hand_scene(), INTRINSICS)
        assert len(backend.batches) == batches


class FixedLocalizer:
    """Report fixed candidates (a swapped-in localiser part)."""

    def __init__(self, candidates):
        self.candidates = candidates

    def locate(self, depth_m, intrinsics, max_hands=2):
        return self.candidates[:max_hands]


def candidate(center, score):
    from hand_pose_ros.core.localizer import HandCandidate

    return HandCandidate(np.asarray(center), score, (0, 0, 1, 1), 0.01, 10, False)


def test_candidates_on_one_hand_are_reported_once():
    backend = OracleBackend(np.zeros((3, 21, 3)))
    near = [candidate(CENTER, 0.6), candidate(CENTER + [0.03, 0, 0], 0.9),
            candidate(CENTER + [-0.2, 0, 0], 0.5)]
    est = HandPoseEstimator(FixedLocalizer(near), SPEC, backend, max_hands=3)
    hands = est.estimate(np.fmin(hand_scene(), hand_scene(CENTER + [-0.2, 0, 0])), INTRINSICS)
    assert [h.detection_score for h in hands] == [0.9, 0.5]
    np.testing.assert_allclose(hands[0].center_xyz, CENTER + [0.03, 0, 0])


def test_crops_apart_whose_joints_meet_are_one_hand_even_without_re_centring():
    # Two candidates 6 cm apart (the localiser keeps 5 cm between them); without a
    # re-centring pass the crops stay apart, but the network puts both hands' joints on
    # the first crop's centre (normalised x -0.6 of the 10 cm half cube on the second).
    joints = np.zeros((2, 21, 3))
    joints[1, :, 0] = -0.6
    est = HandPoseEstimator(FixedLocalizer([candidate(CENTER, 0.9),
                                            candidate(CENTER + [0.06, 0, 0], 0.8)]),
                            SPEC, OracleBackend(joints), max_hands=2, refine_passes=0)
    hands = est.estimate(hand_scene(), INTRINSICS)
    assert len(hands) == 1 and hands[0].detection_score == 0.9


def test_hand_score_drops_false_hands_and_lets_the_spare_candidate_in():
    # Three candidates far apart; the network is unsure of the localiser's favourite.
    found = [candidate(CENTER + [dx, 0, 0], score)
             for dx, score in ((0.0, 0.9), (0.15, 0.6), (-0.15, 0.3))]
    backend = OracleBackend(np.zeros((3, 21, 3)), confidence=[0.1, 0.7, 0.6])
    score = HandScore(bias=-8.0, localizer_weight=0.5, joint_weight=15.0)
    est = HandPoseEstimator(FixedLocalizer(found), SPEC, backend, max_hands=2,
                            hand_score=score)
    hands = est.estimate(hand_scene(), INTRINSICS)
    assert len(hands) == 2 and len(backend.batches[0]) == 3   # max_hands + 1 scored
    np.testing.assert_allclose([h.center_xyz[0] for h in hands],
                               [CENTER[0] + 0.15, CENTER[0] - 0.15], atol=1e-9)
    assert [h.localizer_score for h in hands] == [0.6, 0.3]
    for hand in hands:
        assert hand.detection_score == pytest.approx(
            score(hand.localizer_score, hand.scores))
    assert hands[0].detection_score > hands[1].detection_score > est.min_hand_score
    assert score(0.9, np.full(21, 0.1)) < est.min_hand_score
    # A stricter threshold keeps only the best; without a hand score the localiser decides.
    est.min_hand_score = 0.9
    assert len(est.estimate(hand_scene(), INTRINSICS)) == 1
    plain = HandPoseEstimator(FixedLocalizer(found), SPEC, backend, max_hands=2)
    assert [h.detection_score for h in plain.estimate(hand_scene(), INTRINSICS)] == [0.9, 0.6]
    # Given centres are the caller's hands: never scored away.
    assert len(est.estimate(hand_scene(), INTRINSICS, centers=[CENTER])) == 1
    with pytest.raises(ValueError, match='min_hand_score'):
        HandPoseEstimator(FixedLocalizer(found), SPEC, backend, min_hand_score=1.5)


def test_hand_score_section_of_a_model_card(tiny_model_card, tmp_path):
    import shutil

    from hand_pose_ros.core import model_io

    assert HandScore.from_card({}) is None
    assert HandScore.from_card({'hand_score': {
        'bias': -1, 'localizer_weight': 2, 'joint_weight': 3.5, 'fitted_on': {}}}) == \
        HandScore(-1.0, 2.0, 3.5)
    with pytest.raises(ValueError, match='hand_score'):
        HandScore.from_card({'hand_score': {'bias': 1.0}})
    folder = shutil.copytree(tiny_model_card.parent, tmp_path / 'model')
    card_path = folder / tiny_model_card.name
    card = model_io.read_card(card_path)
    card['hand_score'] = {'bias': 'high', 'localizer_weight': 1.0, 'joint_weight': 1.0}
    model_io.write_card(card_path, card)
    with pytest.raises(ModelFileError, match='hand_score'):
        load_estimator(str(card_path), backend='onnxruntime')
    # A NaN score would drop every hand without a word.
    card['hand_score']['bias'] = float('nan')
    model_io.write_card(card_path, card)
    with pytest.raises(ModelFileError, match='must be finite'):
        load_estimator(str(card_path), backend='onnxruntime')
    card['hand_score']['bias'] = -2.0
    model_io.write_card(card_path, card)
    est = load_estimator(str(card_path), backend='onnxruntime', min_hand_score=0.4)
    assert est.hand_score == HandScore(-2.0, 1.0, 1.0) and est.min_hand_score == 0.4


def test_a_damaged_card_section_is_named_not_a_crash(tiny_model_card, tmp_path):
    import shutil

    from hand_pose_ros.core import model_io

    folder = shutil.copytree(tiny_model_card.parent, tmp_path / 'model')
    card_path = folder / tiny_model_card.name
    card = model_io.read_card(card_path)
    size = card['crop']['input_size']
    changes = [
        ({'inference': None}, '"inference" must be a mapping'),
        ({'config': [1, 2]}, '"config" must be a mapping'),
        ({'localizer': [1, 2]}, '"localizer" must be a mapping'),
        ({'localizer': {'min_depth': 'abc'}}, 'bad "localizer" section'),
        ({'finder': 5}, '"finder" must be a mapping'),
        ({'crop': {**card['crop'], 'input_size': size * 2}},
         f'crop.input_size {size * 2} differs from the network input size'),
    ]
    for change, message in changes:
        model_io.write_card(card_path, {**card, **change})
        with pytest.raises(ModelFileError, match=message):
            load_estimator(str(card_path), backend='onnxruntime')


def test_views_of_the_reported_hands_agree_for_an_equivariant_network():
    calls = []

    def nearest_point(batch):
        calls.append(len(batch))
        joints, confidence = nearest_point_network(batch)
        return {'joints': joints.astype(np.float32), 'confidence': confidence / 21.0}

    depth = hand_scene()
    rows, cols = np.mgrid[0:20, 0:20]
    # A bump whose sampled pixels all differ in depth: one nearest point in every view.
    depth[230:250, 320:340] = 0.45 + 1e-4 * cols + 3.7e-5 * rows
    single = estimator(nearest_point).estimate(depth, INTRINSICS, centers=[CENTER])
    for views in (2, 4, 8):
        calls.clear()
        est = HandPoseEstimator(DepthHandLocalizer(), SPEC, nearest_point, views=views)
        hands = est.estimate(depth, INTRINSICS, centers=[CENTER])
        assert calls == [1, views - 1]  # the hand, then its other views in one call
        np.testing.assert_allclose(hands[0].keypoints_xyz, single[0].keypoints_xyz, atol=1e-9)
        np.testing.assert_allclose(hands[0].scores, single[0].scores)
    # Localised: two passes over the candidates, then the views of the hand reported.
    calls.clear()
    est = HandPoseEstimator(DepthHandLocalizer(), SPEC, nearest_point, max_hands=1, views=4)
    assert len(est.estimate(depth, INTRINSICS)) == 1 and calls == [1, 1, 3]
    # No view is run when the hand score rejects every candidate.
    calls.clear()
    est.hand_score = HandScore(bias=-50.0, localizer_weight=0.0, joint_weight=0.0)
    assert est.estimate(depth, INTRINSICS) == [] and calls == [1, 1]
    with pytest.raises(ValueError, match='views must be one of'):
        HandPoseEstimator(DepthHandLocalizer(), SPEC, nearest_point, views=3)


class CountingLocalizer(FixedLocalizer):
    """A FixedLocalizer that counts its calls."""

    calls = 0

    def locate(self, depth_m, intrinsics, max_hands=2):
        self.calls += 1
        return super().locate(depth_m, intrinsics, max_hands)


def test_tracker_follows_a_hand_and_searches_every_interval_or_when_it_is_lost():
    from hand_pose_ros.core import HandTracker

    localizer = CountingLocalizer([candidate(CENTER, 0.8)])
    backend = OracleBackend(np.zeros((2, 21, 3)), confidence=0.9)
    est = HandPoseEstimator(localizer, SPEC, backend, max_hands=1,
                            hand_score=HandScore(bias=-8.0, localizer_weight=0.5,
                                                 joint_weight=15.0))
    tracker = HandTracker(est, redetect_interval=3)
    for bad in (0, 2.5, None, '3', True):
        with pytest.raises(ValueError, match='redetect_interval must be an integer'):
            HandTracker(est, redetect_interval=bad)
    assert HandTracker(est, redetect_interval=np.int64(2)).redetect_interval == 2
    depth = hand_scene()
    searched = []
    for _ in range(7):
        hands = tracker.estimate(depth, INTRINSICS)
        searched.append(tracker.last_localized)
        assert len(hands) == 1 and hands[0].localizer_score == 0.8
        np.testing.assert_allclose(hands[0].center_xyz, CENTER, atol=1e-9)
    assert searched == [True, False, False, True, False, False, True]
    assert localizer.calls == 3
    # A followed frame runs the followed hand only (no spare candidate), in one pass here:
    # its crop sits on the joint centroid, so re-centring would not move it.
    backend.batches.clear()
    tracker.estimate(depth, INTRINSICS)
    assert not tracker.last_localized and [len(b) for b in backend.batches] == [1]
    assert tracker.last_timings['localize'] > 0.0 and tracker.last_timings['infer'] > 0.0
    # The network loses confidence: the followed hand fails its hand score, the localiser
    # runs on the same frame, and its candidate fails too.
    backend.confidence = np.float32(0.05)
    assert tracker.estimate(depth, INTRINSICS) == [] and tracker.last_localized
    assert localizer.calls == 4
    # Nothing followed: the next frame is searched as well.
    backend.confidence = np.float32(0.9)
    assert len(tracker.estimate(depth, INTRINSICS)) == 1 and tracker.last_localized
    tracker.reset()
    tracker.estimate(depth, INTRINSICS)
    assert tracker.last_localized and localizer.calls == 6
    tracker.estimate(depth, INTRINSICS)
    assert not tracker.last_localized
    # The view changes (most pixels move): searched again, though the hand score passes.
    tracker.estimate(depth + 0.2, INTRINSICS)
    assert tracker.last_localized and localizer.calls == 7


def test_tracker_pairs_each_followed_hand_with_itself_when_their_order_changes():
    from hand_pose_ros.core import HandTracker

    other = CENTER + [0.15, 0.0, 0.0]
    localizer = CountingLocalizer([candidate(CENTER, 0.8), candidate(other, 0.8)])
    backend = OracleBackend(np.zeros((2, 21, 3)), confidence=np.array([0.9, 0.8]))
    est = HandPoseEstimator(localizer, SPEC, backend, max_hands=2,
                            hand_score=HandScore(bias=-8.0, localizer_weight=0.5,
                                                 joint_weight=15.0))
    tracker = HandTracker(est, redetect_interval=10)
    depth = np.fmin(hand_scene(), hand_scene(other))
    first = tracker.estimate(depth, INTRINSICS)
    assert len(first) == 2 and np.allclose(first[0].center_xyz, CENTER)
    backend.confidence = np.array([0.8, 0.9])     # the other hand now scores higher
    followed = tracker.estimate(depth, INTRINSICS)
    assert not tracker.last_localized and np.allclose(followed[0].center_xyz, other)
    # Neither hand moved: no motion is carried into the next frame's crops.
    assert np.abs(tracker._motion).max() < 1e-9


def test_tracker_gives_each_of_two_moving_hands_its_own_motion():
    from hand_pose_ros.core import HandTracker

    class Followed:
        """Report hands at set places; followed ones come back rightmost first."""

        hand_score = HandScore(bias=0.0, localizer_weight=0.0, joint_weight=0.0)
        last_timings = {}

        def __init__(self):
            self.places = []

        def hands(self):
            return [HandPose(np.tile(p, (21, 1)), np.full(21, 0.9), np.asarray(p), 0.9, 0.9)
                    for p in self.places]

        def estimate(self, depth, intrinsics, color=None):
            return self.hands()

        def estimate_near(self, depth, intrinsics, centers, scores, color=None):
            return sorted(self.hands(), key=lambda hand: -hand.center_xyz[0])

    est = Followed()
    tracker = HandTracker(est, redetect_interval=10)
    depth = hand_scene()
    # Two hands 12 cm apart, both moving 7 cm to the right per frame: each hand is nearer
    # the other's last place than its own.
    for step in range(3):
        est.places = [CENTER + [0.07 * step, 0, 0], CENTER + [0.12 + 0.07 * step, 0, 0]]
        tracker.estimate(depth, INTRINSICS)
    assert not tracker.last_localized
    np.testing.assert_allclose(tracker._motion, [[0.07, 0, 0]] * 2, atol=1e-9)


def test_tracker_searches_every_frame_without_a_hand_score_or_when_the_hand_leaves():
    from hand_pose_ros.core import HandTracker

    localizer = CountingLocalizer([candidate(CENTER, 0.8)])
    est = HandPoseEstimator(localizer, SPEC, OracleBackend(np.zeros((2, 21, 3))), max_hands=1)
    tracker = HandTracker(est, redetect_interval=10)
    for _ in range(3):
        assert len(tracker.estimate(hand_scene(), INTRINSICS)) == 1 and tracker.last_localized
    # With a hand score, a hand moving out of the image is searched for, not followed out.
    edge = np.array([0.0, 0.0, 0.5])
    edge[0] = (INTRINSICS.width - 2.0 - INTRINSICS.cx) * edge[2] / INTRINSICS.fx
    joints = make_transform(INTRINSICS, edge, SPEC).normalized_from_xyz(
        np.repeat(edge[None] + [0.05, 0.0, 0.0], 21, axis=0))
    backend = OracleBackend(joints[None].repeat(2, axis=0), confidence=0.9)
    est = HandPoseEstimator(CountingLocalizer([candidate(edge, 0.8)]), SPEC, backend,
                            max_hands=1, hand_score=HandScore(-8.0, 0.5, 15.0))
    tracker = HandTracker(est, redetect_interval=10)
    tracker.estimate(hand_scene(), INTRINSICS)
    assert tracker.last_localized
    tracker.estimate(hand_scene(), INTRINSICS)
    assert tracker.last_localized   # the joints' centroid lies outside the image
    for bad in (0, 2.5, -1):
        with pytest.raises(ValueError, match='redetect_interval'):
            HandTracker(est, redetect_interval=bad)
    with pytest.raises(ValueError, match='localizer scores'):
        est.estimate_near(hand_scene(), INTRINSICS, [CENTER], [0.5, 0.5])
    with pytest.raises(ValueError, match='outside'):
        est.estimate_near(hand_scene(), INTRINSICS, [[5.0, 0.0, 0.5]], [0.5])


def test_tracker_is_as_accurate_as_searching_every_frame_on_a_moving_hand():
    from hand_pose_ros.core import HandTracker
    from hand_pose_ros.core.selftrain import render_sequence

    frames = render_sequence(40, seed=1200)
    est = load_estimator('default', backend='onnxruntime', max_hands=1, views=1)
    tracker = HandTracker(est, redetect_interval=5)
    errors = {'tracked': [], 'searched': []}
    searched = 0
    for frame in frames:
        truth = frame.hands[0].joints_xyz
        for name, hands in (('tracked', tracker.estimate(frame.depth_mm, frame.intrinsics)),
                            ('searched', est.estimate(frame.depth_mm, frame.intrinsics))):
            if hands:
                errors[name].append(np.linalg.norm(hands[0].keypoints_xyz - truth, axis=1).mean())
        searched += tracker.last_localized
    assert searched <= 0.4 * len(frames)
    assert len(errors['tracked']) >= len(errors['searched']) >= 0.8 * len(frames)
    assert np.mean(errors['tracked']) <= np.mean(errors['searched']) + 0.002


def red_dot_network(batch):
    """Put every joint on the red pixels' centroid in each colour crop, at the crop's depth."""
    color = batch['color']
    assert batch['depth'].shape == (len(color), 1, *color.shape[2:])
    size = color.shape[-1]
    red = (color[:, 0] - color[:, 1]) > 0.5
    rows, cols = np.mgrid[0:size, 0:size]
    uv = np.stack([(cols * red).sum(axis=(1, 2)), (rows * red).sum(axis=(1, 2))], axis=1)
    uv = (uv / red.sum(axis=(1, 2))[:, None] + 0.5) / size * 2.0 - 1.0
    joints = np.concatenate([uv, np.zeros((len(color), 1))], axis=1)
    return {'joints': np.repeat(joints[:, None].astype(np.float32), 21, axis=1),
            'confidence': np.full((len(color), 21), 0.5, np.float32)}


def test_colour_networks_see_the_colour_window_of_each_depth_crop():
    from hand_pose_ros.core import HandTracker
    from hand_pose_ros.core.camera import uvd_from_xyz

    dot_xyz = CENTER + [0.02, 0.03, 0.0]
    u, v, _ = uvd_from_xyz(dot_xyz, INTRINSICS)
    color = np.full((INTRINSICS.height, INTRINSICS.width, 3), 90, np.uint8)
    # A dot of 9x9 pixels: crops sample the image about every 3 pixels.
    color[int(round(v)) - 4:int(round(v)) + 5, int(round(u)) - 4:int(round(u)) + 5] = (255, 0, 0)
    pixel_m = CENTER[2] / INTRINSICS.fx
    for views in (1, 4):
        est = HandPoseEstimator(DepthHandLocalizer(), SPEC, red_dot_network, views=views,
                                input_names=('depth', 'color'))
        for hands in (est.estimate(hand_scene(), INTRINSICS, centers=[CENTER], color=color),
                      est.estimate(hand_scene(), INTRINSICS, color=color)):
            assert len(hands) == 1
            found = uvd_from_xyz(hands[0].keypoints_xyz[0], INTRINSICS)[:2]
            # Within the crop's pixel size (about 2 image pixels) of the dot.
            assert np.all(np.abs(found - [round(u), round(v)]) < 2.5), found
    # The tracker's followed frames crop the colour image too.
    est.hand_score = HandScore(bias=5.0, localizer_weight=0.0, joint_weight=0.0)
    tracker = HandTracker(est, redetect_interval=3)
    for localized in (True, False):
        hands = tracker.estimate(hand_scene(), INTRINSICS, color=color)
        assert tracker.last_localized == localized and len(hands) == 1
        assert np.abs(hands[0].keypoints_xyz[0, :2] - dot_xyz[:2]).max() < 2.5 * pixel_m


def test_colour_networks_need_a_registered_colour_image():
    est = HandPoseEstimator(DepthHandLocalizer(), SPEC, red_dot_network,
                            input_names=('depth', 'color'))
    with pytest.raises(ValueError, match='takes a colour image'):
        est.estimate(hand_scene(), INTRINSICS)
    for bad in (np.zeros((INTRINSICS.height, INTRINSICS.width, 3), np.float32),
                np.zeros((240, 320, 3), np.uint8),
                np.zeros((INTRINSICS.height, INTRINSICS.width), np.uint8)):
        with pytest.raises(ValueError, match=r'colour image must be \(480, 640, 3\) uint8'):
            est.estimate(hand_scene(), INTRINSICS, color=bad)
    with pytest.raises(ValueError, match='input_names must name some of'):
        HandPoseEstimator(DepthHandLocalizer(), SPEC, red_dot_network, input_names=('ir',))
    # A depth network leaves a colour image aside.
    backend = OracleBackend([np.zeros((21, 3))])
    hands = estimator(backend).estimate(hand_scene(), INTRINSICS, centers=[CENTER],
                                        color=np.zeros((2, 2), np.uint8))
    assert len(hands) == 1 and isinstance(backend.batches[0], np.ndarray)


def test_load_estimator_runs_an_rgb_card(tmp_path):
    torch = pytest.importorskip('torch')
    from hand_pose_ros.core import export
    from hand_pose_ros.core.model_io import save_model
    from hand_pose_ros.core.models import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model('joint_groups_rgb', width=0.125, input_size=64).eval()
    card = save_model(model, tmp_path, 'rgb', extra={'crop': SPEC.to_dict()})
    export.export_card(card)
    color = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for backend in ('onnxruntime', 'torch'):
        est = load_estimator(str(card), backend=backend, device='cpu', threads=1, views=2)
        assert est.input_names == ('color', 'depth')
        hands = est.estimate(hand_scene(), INTRINSICS, centers=[CENTER], color=color)
        assert len(hands) == 1 and np.all(np.isfinite(hands[0].keypoints_xyz))
        with pytest.raises(ValueError, match='takes a colour image'):
            est.estimate(hand_scene(), INTRINSICS, centers=[CENTER])


def test_estimate_gives_the_same_hands_from_several_threads(tiny_model_card):
    from concurrent.futures import ThreadPoolExecutor

    from hand_pose_ros.core.synth import SyntheticGenerator

    est = load_estimator(str(tiny_model_card), backend='onnxruntime')
    generator = SyntheticGenerator(INTRINSICS, seed=3)
    frames = [generator.sample_frame().depth_mm for _ in range(6)]
    alone = [est.estimate(depth, INTRINSICS) for depth in frames]
    assert sum(map(len, alone)) >= len(frames)
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda depth: est.estimate(depth, INTRINSICS), frames * 3))
    for hands, expected in zip(together, alone * 3):
        assert len(hands) == len(expected)
        for hand, reference in zip(hands, expected):
            np.testing.assert_array_equal(hand.keypoints_xyz, reference.keypoints_xyz)
