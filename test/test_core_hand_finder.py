"""The learned hand finder: input, targets and decoding, training, export, fusion, loading."""

import dataclasses

import numpy as np
import pytest

from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz, xyz_from_uvd
from hand_pose_ros.core.crop import check_center
from hand_pose_ros.core.hand_finder import (decode_peaks, finder_input, FusedLocalizer,
                                            FUSION_FEATURES, heat_at, LearnedHandFinder)
from hand_pose_ros.core.localizer import DepthHandLocalizer, LocalizerConfig, logit

torch = pytest.importorskip('torch')
from hand_pose_ros.core import finder_training  # noqa: E402, I100  (needs torch)

SR300 = CameraIntrinsics.from_preset('sr300')


def test_input_planes_mark_valid_depth_and_pad_to_the_network_stride():
    depth = np.full((480, 640), 0.6, dtype=np.float32)
    depth[0, 0] = np.nan
    depth[0, 4] = 5.0         # beyond the range
    depth[0, 8] = 0.05        # too near
    planes, stride = finder_input(depth, SR300)
    assert stride == 4 and planes.shape == (2, 120, 160) and planes.dtype == np.float32
    assert planes[1, 0, :3].tolist() == [0.0, 0.0, 0.0] and planes[1, 1, 1] == 1.0
    assert planes[0, 0, :3].tolist() == [0.0, 0.0, 0.0]
    assert planes[0, 5, 5] == pytest.approx(0.6 - 1.0)
    wide = CameraIntrinsics.from_preset('d435_848x480')
    planes, stride = finder_input(np.full((480, 848), 0.6, np.float32), wide)
    assert stride == 5 and planes.shape == (2, 96, 176)
    assert planes[1, :, 170:].sum() == 0 and planes[1, :, :170].all()


def encoded_maps(rows, cells):
    """Return heat (probabilities), offset and depth maps holding the targets of ``rows``."""
    heat, _, peaks, offsets, depths = finder_training.hand_targets(rows, cells)
    offset = np.zeros((2,) + cells, dtype=np.float32)
    depth = np.zeros(cells, dtype=np.float32)
    for (row, col), uv, z in zip(peaks, offsets, depths):
        offset[:, row, col] = uv
        depth[row, col] = z
    return heat, offset, depth


def test_targets_decode_back_to_the_hand_centres():
    centers = np.array([[0.05, -0.02, 0.45], [-0.12, 0.08, 0.9]])
    joints = centers[:, None, :] + np.zeros((2, 21, 3))
    rows = finder_training.frame_centers(joints, np.ones((2, 21), bool), SR300, 4)
    assert rows.shape == (2, 5) and rows[:, 4].tolist() == [1.0, 1.0]
    assert rows[0, 3] > rows[1, 3]        # the nearer hand has the wider blob
    heat, offset, depth = encoded_maps(rows, (30, 40))
    found = decode_peaks(heat, offset, depth, 4, SR300, 0.5, 5)
    assert [score for score, _ in found] == [1.0, 1.0]
    decoded = sorted((c for _, c in found), key=lambda c: c[2])
    np.testing.assert_allclose(decoded, centers, atol=1e-5)


def test_peaks_that_no_crop_could_take_are_skipped():
    # The last cell's offset puts the centre in the image's last half pixel, where a crop
    # centre is refused (crop.check_center); so does a depth under its minimum.
    heat = np.zeros((30, 40), np.float32)
    offset = np.zeros((2, 30, 40), np.float32)
    depth = np.zeros((30, 40), np.float32)
    heat[10, 39], offset[:, 10, 39] = 0.9, (0.95, 0.5)       # u = 159.8 of 160 px
    heat[20, 5], offset[:, 20, 5] = 0.8, (0.5, 0.5)
    depth[[10, 20], [39, 5]] = 1.0                            # both far enough
    found = decode_peaks(heat, offset, depth, 1, SR300.scaled(0.25), 0.5, 5)
    assert [score for score, _ in found] == [pytest.approx(0.8)]
    for _, center in found:
        check_center(center, SR300.scaled(0.25))
    depth[20, 5] = -50.0                                     # z under MIN_CENTER_DEPTH_M
    assert decode_peaks(heat, offset, depth, 1, SR300.scaled(0.25), 0.5, 5) == []


def test_hands_hidden_behind_objects_are_neither_positive_nor_negative():
    joints = np.array([0.0, 0.0, 0.6]) + np.zeros((1, 21, 3))
    seen = np.zeros((1, 21), bool)
    seen[0, :2] = True                    # 2 of 21 joints seen: below MIN_VISIBLE_FRACTION
    rows = finder_training.frame_centers(joints, seen, SR300, 4)
    heat, weight, peaks, _, _ = finder_training.hand_targets(rows, (30, 40))
    assert heat.max() == 0.0 and len(peaks) == 0
    u, v, _ = uvd_from_xyz(joints[0, 0], SR300)
    assert weight[int(v / 16), int(u / 16)] == 0.0 and weight[0, 0] == 1.0


def test_hands_centred_outside_the_image_are_not_negatives_where_they_reach_in():
    # Centre 40 px left of the 640 px image's edge: its fingers can reach into the image.
    center = xyz_from_uvd([-40.0, 240.0, 0.5], SR300)
    rows = finder_training.frame_centers(center + np.zeros((1, 21, 3)), np.ones((1, 21), bool),
                                         SR300, 4)
    assert rows.shape == (1, 5) and rows[0, 4] == 0.0
    heat, weight, peaks, _, _ = finder_training.hand_targets(rows, (30, 40))
    assert heat.max() == 0.0 and len(peaks) == 0
    assert weight[15, 0] == 0.0 and weight[15, 39] == 1.0


def test_focal_loss_prefers_the_true_heat_map():
    rows = np.array([[80.0, 60.0, 0.6, 1.5, 1.0]], dtype=np.float32)
    heat, weight, _, _, _ = finder_training.hand_targets(rows, (30, 40))
    target = torch.from_numpy(heat)[None, None]
    ones = torch.ones_like(target)
    right = torch.logit(target.clamp(1e-3, 1 - 1e-3))
    wrong = torch.roll(right, shifts=10, dims=3)
    assert finder_training.focal_loss(right, target, ones) < \
        finder_training.focal_loss(wrong, target, ones)
    # Zero weight removes the negatives' share.
    assert finder_training.focal_loss(wrong, target, torch.zeros_like(ones)) < \
        finder_training.focal_loss(wrong, target, ones)


@pytest.fixture(scope='module')
def finder_run(tmp_path_factory):
    """Return the checkpoint of a finder trained for a few steps on a few frames."""
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp('finder')
    config = finder_training.FinderTrainConfig(output_dir=str(directory), frames=6, steps=4,
                                               batch_size=3, checkpoint_every=2)
    return finder_training.train_finder(config)


def test_training_resumes_from_its_checkpoint(finder_run):
    config = finder_training.FinderTrainConfig(output_dir=str(finder_run.parent), frames=6,
                                               steps=6, batch_size=3, checkpoint_every=2)
    state = torch.load(finder_run, weights_only=True)
    assert state['step'] == 4 and len(state['log']) == 4
    resumed = finder_training.train_finder(config, resume=True)
    state = torch.load(resumed, weights_only=True)
    assert state['step'] == 6 and [row['step'] for row in state['log']] == list(range(1, 7))
    assert (finder_run.parent / 'train.csv').read_text().count('\n') == 7
    assert (finder_run.parent / 'curves.png').is_file()
    # Rendered frames are reused, not rendered again.
    assert len(list((finder_run.parent / 'frames').glob('chunk_*.npz'))) == 1


def test_onnx_export_matches_torch(finder_run, tmp_path):
    path = finder_training.export_finder(finder_run, tmp_path / 'finder.onnx')
    net = finder_training.HandFinderNet()
    net.load_state_dict(torch.load(finder_run, weights_only=True)['model'])
    net.eval()
    depth = np.full((480, 848), 0.8, np.float32)     # another image size than in training
    depth[200:260, 400:470] = 0.5
    planes, _ = finder_input(depth, CameraIntrinsics.from_preset('d435_848x480'))
    with torch.no_grad():
        expected = [t.numpy() for t in net(torch.from_numpy(planes[None]))]
    finder = LearnedHandFinder(path, threads=1)
    got = finder.session.run(None, {'depth': planes[None]})
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.fixture
def card_with_finder(finder_run, bare_card):
    finder_training.attach_finder(finder_run, bare_card)
    return bare_card


def synthetic_frame(seed):
    from hand_pose_ros.core.evaluation import synthetic_frames

    return next(iter(synthetic_frames(1, seed)))


def test_attached_finder_is_listed_and_fused(card_with_finder):
    from hand_pose_ros.core import load_estimator, model_io

    card = model_io.read_card(card_with_finder)
    assert card['finder']['onnx'] == 'default_finder.onnx'
    assert 'default_finder.onnx' in card['files']
    assert card['finder']['fusion_weights'] == list(finder_training.INITIAL_FUSION_WEIGHTS)
    estimator = load_estimator(card_with_finder, backend='onnxruntime', threads=1)
    assert isinstance(estimator.localizer, FusedLocalizer)
    frame = synthetic_frame(1000)
    hands = estimator.estimate(frame.depth_m, frame.intrinsics)
    assert len(hands) <= 2
    assert all(np.isfinite(h.keypoints_xyz).all() for h in hands)
    geometric = load_estimator(card_with_finder, backend='onnxruntime', use_finder=False)
    assert isinstance(geometric.localizer, DepthHandLocalizer)


def test_broken_finder_entries_name_the_problem(card_with_finder):
    from hand_pose_ros.core import load_estimator, model_io
    from hand_pose_ros.core.model_io import ModelFileError

    card = model_io.read_card(card_with_finder)
    card['finder']['fusion_weights'] = [1.0, 2.0]
    model_io.write_card(card_with_finder, card)
    with pytest.raises(ModelFileError, match='fusion_weights'):
        load_estimator(card_with_finder, backend='onnxruntime')
    card['finder']['fusion_weights'] = [0.0, 0.0, 1.0, 1.0]
    # A finder elsewhere, even one named like a listed file, is not loaded unchecked.
    card['finder']['onnx'] = '../other/default_finder.onnx'
    model_io.write_card(card_with_finder, card)
    with pytest.raises(ModelFileError, match='onnx must name a file beside the card'):
        load_estimator(card_with_finder, backend='onnxruntime')
    card['finder']['onnx'] = 'default_finder.onnx'
    model_io.write_card(card_with_finder, card)
    onnx = card_with_finder.parent / 'default_finder.onnx'
    onnx.write_bytes(onnx.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match='default_finder.onnx: truncated'):
        load_estimator(card_with_finder, backend='onnxruntime')


def test_another_cards_finder_is_copied_with_its_fusion(bare_card, tmp_path):
    from hand_pose_ros.core import load_estimator, model_io
    from hand_pose_ros.core.estimator import PACKAGE_MODELS_DIR
    from hand_pose_ros.core.model_io import ModelFileError

    shipped_card = PACKAGE_MODELS_DIR / 'default.yaml'
    shipped = model_io.read_card(shipped_card)
    mine = bare_card.with_name('mine.yaml')
    model_io.write_card(mine, {**model_io.read_card(bare_card), 'name': 'mine'})
    assert finder_training.copy_finder(shipped_card, mine) == tmp_path / 'mine_finder.onnx'
    card = model_io.read_card(mine)
    assert card['finder'] == {**shipped['finder'], 'onnx': 'mine_finder.onnx'}
    assert (tmp_path / 'mine_finder.onnx').read_bytes() == \
        (PACKAGE_MODELS_DIR / shipped['finder']['onnx']).read_bytes()
    assert card['files']['mine_finder.onnx'] == shipped['files'][shipped['finder']['onnx']]
    assert isinstance(load_estimator(mine, backend='onnxruntime').localizer, FusedLocalizer)

    with pytest.raises(ValueError, match='has no learned hand finder'):
        finder_training.copy_finder(bare_card, mine)
    with pytest.raises(ValueError, match='cannot take the finder from itself'):
        finder_training.copy_finder(mine, mine)
    (tmp_path / 'mine_finder.onnx').write_bytes(b'not a network')
    with pytest.raises(ModelFileError, match='mine_finder.onnx'):
        finder_training.copy_finder(mine, bare_card)
    assert 'finder' not in model_io.read_card(bare_card)
    # Only a file the source card lists beside itself is copied (it was verified).
    (tmp_path / 'mine_finder.onnx').write_bytes(
        (PACKAGE_MODELS_DIR / shipped['finder']['onnx']).read_bytes())
    (tmp_path / 'unlisted.onnx').write_bytes(b'never checksummed')
    for name in ('unlisted.onnx', '../elsewhere.onnx'):
        model_io.write_card(mine, {**card, 'finder': {**card['finder'], 'onnx': name}})
        with pytest.raises(ModelFileError, match=f'onnx must name a file beside|{name}'):
            finder_training.copy_finder(mine, bare_card)
        assert 'finder' not in model_io.read_card(bare_card)


def test_attaching_again_repairs_a_damaged_finder_file(finder_run, bare_card):
    from hand_pose_ros.core import load_estimator, model_io

    card = model_io.read_card(bare_card)
    del card['name']                                 # a card without a name: its file stem
    model_io.write_card(bare_card, card)
    onnx = finder_training.attach_finder(finder_run, bare_card)
    assert onnx.name == f'{bare_card.stem}_finder.onnx'
    onnx.write_bytes(onnx.read_bytes()[:-10])        # an interrupted copy, say
    with pytest.raises(model_io.ModelFileError, match='truncated'):
        load_estimator(bare_card, backend='onnxruntime')
    assert finder_training.attach_finder(finder_run, bare_card) == onnx
    load_estimator(bare_card, backend='onnxruntime')
    assert not list(bare_card.parent.glob('*partial*'))


def test_a_finder_run_resumes_only_as_it_was_started(finder_run, tmp_path):
    import shutil

    run = shutil.copytree(finder_run.parent, tmp_path / 'run')
    config = finder_training.FinderTrainConfig(output_dir=str(run), frames=6, steps=8,
                                               batch_size=3, checkpoint_every=2)
    with pytest.raises(ValueError, match='holds a finder run'):
        finder_training.train_finder(config)            # not without resume
    with pytest.raises(ValueError, match=r'cannot resume .*: its seed'):
        finder_training.train_finder(dataclasses.replace(config, seed=5), resume=True)
    with pytest.raises(ValueError, match='resume with --steps above it'):
        finder_training.train_finder(dataclasses.replace(config, steps=2), resume=True)
    (run / 'checkpoint.pt').write_bytes(b'')
    with pytest.raises(ValueError, match='not a finder checkpoint'):
        finder_training.train_finder(config, resume=True)


def test_fused_proposals_merge_both_sources(card_with_finder):
    from hand_pose_ros.core import model_io

    path = card_with_finder.parent / model_io.read_card(card_with_finder)['finder']['onnx']
    fused = FusedLocalizer(DepthHandLocalizer(), LearnedHandFinder(path, threads=1),
                           [-1.0, 2.0, 1.0, 1.0])
    for seed in (1000, 1001, 1002):
        frame = synthetic_frame(seed)
        proposals = fused.proposals(frame.depth_m, frame.intrinsics)
        geometric = DepthHandLocalizer().locate(frame.depth_m, frame.intrinsics, 8)
        assert len(proposals) >= len(geometric)
        heat, _, _, stride = fused.finder.maps(frame.depth_m, frame.intrinsics)
        for (center, features), candidate in zip(proposals, geometric):
            np.testing.assert_array_equal(center, candidate.center_xyz)
            assert features[:2].tolist() == [1.0, 1.0]
            assert features[3] == logit(heat_at(heat, center, stride, frame.intrinsics))
        for center, features in proposals[len(geometric):]:
            assert features[1:3].tolist() == [0.0, 0.0]
            assert min(np.linalg.norm(center - c.center_xyz) for c in geometric) > 0.05 \
                if geometric else True
        found = fused.locate(frame.depth_m, frame.intrinsics, max_hands=2)
        assert len(found) <= 2 and all(0.0 <= f.score <= 1.0 for f in found)
        assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
    narrow = fused.with_config(LocalizerConfig(max_depth_m=0.5))
    assert narrow.finder is fused.finder and narrow.config.max_depth_m == 0.5
    frame = synthetic_frame(1000)
    assert all(c[2] <= 0.5 for c, f in narrow.proposals(frame.depth_m, frame.intrinsics)
               if f[1] == 0.0)


def test_fusion_fit_learns_from_both_sources(card_with_finder):
    from hand_pose_ros.core import model_io
    from hand_pose_ros.core.evaluation import fit_fusion, synthetic_frames

    path = card_with_finder.parent / model_io.read_card(card_with_finder)['finder']['onnx']
    fused = FusedLocalizer(DepthHandLocalizer(), LearnedHandFinder(path, threads=1),
                           finder_training.INITIAL_FUSION_WEIGHTS)
    weights, counts = fit_fusion(fused, synthetic_frames(8, 3000))
    assert weights.shape == (len(FUSION_FEATURES),) and np.all(np.isfinite(weights))
    assert counts['hands'] > 0 and counts['false_hands'] > 0


def test_fused_localizer_survives_odd_images(card_with_finder):
    from hand_pose_ros.core import load_estimator

    estimator = load_estimator(card_with_finder, backend='onnxruntime', threads=1)
    tiny = CameraIntrinsics(20.0, 20.0, 6.0, 5.0, 13, 9)   # not a multiple of the stride
    depth = np.full((9, 13), 0.5, np.float32)
    assert isinstance(estimator.localizer.locate(depth, tiny, 2), list)
    assert estimator.estimate(np.full((480, 640), np.nan, np.float32), SR300) == []
    far = np.full((480, 640), 3.0, np.float32)             # beyond every depth range
    assert estimator.localizer.locate(far, SR300, 2) == []
