"""
Self-training loop: pseudo-label filter, one round end to end on a tiny bag, resumption.

The recording is a short rendered synthetic motion written to a real bag. The estimator of
the loop is replaced by a replay of the true joints (plus 2 mm noise) with corruptions
injected into known frames, so the test knows which frames must become pseudo-labels and
which must not; the fine-tuning runs the real trainer on a tiny untrained A2J card.
"""

import json
import shutil

import numpy as np
import pytest

from hand_pose_ros.core import export, model_io
from hand_pose_ros.core.backends import OnnxRuntimeBackend
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.estimator import (
    HandPose, load_estimator, PACKAGE_MODELS_DIR, resolve_card)
from hand_pose_ros.core.hand_finder import FusedLocalizer
from hand_pose_ros.core.recordings import DepthFrame, FolderRecording, write_folder_recording
from hand_pose_ros.core.selftrain import (
    ANATOMY, HAND_COUNT, in_start_domain, KEPT, LOW_CONFIDENCE, NO_DETECTION,
    select_pseudo_labels, SelfTrainConfig, SelfTrainer, spatial_problem, split_index, TEMPORAL)
from hand_pose_ros.core.synth import generate_motion, SensorConfig, SyntheticGenerator

INTRINSICS = CameraIntrinsics(130.0, 130.0, 80.0, 60.0, 160, 120)
NUM_FRAMES = 40
# frame -> corruption injected into the replayed estimate
CORRUPT = {4: 'stretched_finger', 10: 'jump', 16: 'low_confidence', 22: 'two_hands',
           27: 'missing'}


def tiny_card(directory):
    import torch

    from hand_pose_ros.core.models import build_model

    torch.manual_seed(0)
    model = build_model('a2j', backbone='resnet18', width=0.125, input_size=32,
                        head_channels=16)
    return model_io.save_model(model, directory, 'tiny', extra={
        'crop': {'input_size': 32, 'cube_size_m': [0.25, 0.25, 0.3],
                 'interpolation': 'nearest'},
        'training': {'data': {'type': 'synthetic', 'camera': 'sr300'}, 'context': 1.5,
                     'augment': {}}})


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Return (recording, truth (T, 21, 3), card path) shared by the tests."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('selftrain')
    motion = generate_motion(NUM_FRAMES, seed=3, intrinsics=INTRINSICS, max_speed_m_s=1.0)
    generator = SyntheticGenerator(INTRINSICS, sensor=SensorConfig.clean(), seed=3)
    frames = list(generator.render_motion(motion))
    recording_frames = [DepthFrame(int(round(f.stamp_s * 1e9)) + 10 ** 18, f.depth_mm,
                                   INTRINSICS) for f in frames]
    write_folder_recording(root / 'recording', recording_frames)
    return FolderRecording(root / 'recording'), motion.joints_xyz, tiny_card(root / 'model')


class ReplayEstimator:
    """Replay the true joints of each recorded frame (2 mm noise), corrupted where asked."""

    def __init__(self, recording, truth):
        self.index_of = {frame.depth.tobytes(): i for i, frame in enumerate(recording)}
        self.truth = truth
        self.rng = np.random.default_rng(0)

    def estimate(self, depth, intrinsics, centers=None):
        index = self.index_of.get(np.asarray(depth).tobytes())
        if index is None:  # not a recorded frame (the domain fit's rendered crops)
            return []
        keypoints = self.truth[index] + self.rng.normal(0.0, 0.002, (21, 3))
        scores = np.full(21, 0.9)
        kind = CORRUPT.get(index)
        if kind == 'missing':
            return []
        if kind == 'stretched_finger':
            keypoints[8] += 0.06 * (keypoints[8] - keypoints[7]) / np.linalg.norm(
                keypoints[8] - keypoints[7])
        if kind == 'jump':
            keypoints = keypoints + np.array([0.15, 0.0, 0.0])
        if kind == 'low_confidence':
            scores[:] = 0.05
        hands = [HandPose(keypoints, scores, keypoints.mean(axis=0), 0.9, 0.9)]
        if kind == 'two_hands':
            hands.append(HandPose(keypoints + 0.2, scores, keypoints.mean(axis=0) + 0.2, 0.9,
                                  0.9))
        return hands


def small_config(**changes):
    values = {'iterations': 1, 'holdout_fraction': 0.25, 'steps': 3, 'batch_size': 4,
              'chunk_size': 8, 'checkpoint_every': 2, 'warmup_steps': 1, 'num_threads': 1,
              'min_pseudo_labels': 4, 'export_onnx': False, 'domain_fit_crops': 6}
    values.update(changes)
    return SelfTrainConfig(**values)


def test_pseudo_label_filter_keeps_good_frames_and_drops_corrupted_ones(world):
    recording, truth, _ = world
    estimator = ReplayEstimator(recording, truth)
    keypoints = np.full((NUM_FRAMES, 2, 21, 3), np.nan)
    scores = np.zeros((NUM_FRAMES, 2, 21))
    for t, frame in enumerate(recording):
        for k, hand in enumerate(estimator.estimate(frame.depth, frame.intrinsics)):
            keypoints[t, k], scores[t, k] = hand.keypoints_xyz, hand.scores
    stamps_s = np.array([f.stamp_ns for f in recording]) * 1e-9
    selection = select_pseudo_labels(stamps_s, keypoints, scores, small_config())
    assert selection.status[4] == ANATOMY
    assert selection.status[10] == TEMPORAL
    assert selection.status[16] == LOW_CONFIDENCE
    assert selection.status[22] == HAND_COUNT
    assert selection.status[27] == NO_DETECTION
    good = np.setdiff1d(np.arange(NUM_FRAMES), list(CORRUPT))
    kept = selection.status == KEPT
    assert kept[good].mean() >= 0.85, selection.status
    # Pseudo-labels are the smoothed poses: within a few mm of the truth.
    error_mm = np.linalg.norm(selection.labels[kept] - truth[kept], axis=-1).mean() * 1000
    assert error_mm < 4.0
    assert np.all(np.isnan(selection.labels[~kept]))


def test_spatial_problem_rejects_a_tiny_hand():
    truth = generate_motion(1, seed=1).joints_xyz[0]
    config = SelfTrainConfig()
    assert spatial_problem(truth, np.full(21, 0.9), config) == KEPT
    centre = truth.mean(axis=0)
    assert spatial_problem(centre + 0.4 * (truth - centre), np.full(21, 0.9),
                           config) == ANATOMY


def test_one_round_end_to_end_writes_a_loadable_adapted_model(world, tmp_path):
    recording, truth, card = world
    out = tmp_path / 'run'
    trainer = SelfTrainer(recording, card, out, small_config(min_improvement=-1.0),
                          estimator_factory=lambda path: ReplayEstimator(recording, truth))
    final = trainer.run()
    state = json.loads((out / 'state.json').read_text())
    assert [r['round'] for r in state['rounds']] == [0, 1]
    split = split_index(NUM_FRAMES, 0.25)
    round0 = state['rounds'][0]
    assert round0['frames_seen'] == NUM_FRAMES and round0['holdout_start_frame'] == split
    assert round0['train']['rejected']['anatomy'] == 1
    assert round0['train']['rejected']['hand_count'] == 1
    with np.load(out / 'iter_00' / 'pseudo_labels.npz') as labels:
        used = set(labels['frame_index'].tolist())
    assert used.isdisjoint(CORRUPT) and max(used) < split and len(used) >= 20
    training = state['rounds'][1]['training']
    assert training['pseudo_crops'] == len(used) and training['synthetic_crops'] >= len(used)
    # The synthetic crops were rendered in a domain fitted to the recording: its camera, its
    # hand distances, and the (clean) recording's depth noise.
    domain = json.loads((out / 'domain.json').read_text(), parse_constant=pytest.fail)
    camera = domain['data']['camera']
    assert CameraIntrinsics(**camera) == INTRINSICS
    low, high = domain['data']['scene']['distance_range_m']
    assert low <= truth[:, :, 2].mean(axis=1).min() and high >= truth[:, :, 2].mean(axis=1).max()
    assert domain['fitted']['sensor.noise_sigma_z2'] < 0.001
    assert domain['recording']['frames'] >= 20
    # The replayed estimator knows the recorded frames only: with no joints on the rendered
    # crops the held-object share cannot be fitted and keeps the start data's value.
    assert domain['fitted']['scene.object_prob'] is None
    for name in ('report.json', 'report.md', 'timeline.png'):
        assert (out / 'iter_01' / name).is_file()
    assert (out / 'progress.png').is_file() and (out / 'report.md').is_file()
    adapted = model_io.read_card(final)
    assert adapted['selftrain']['best_round'] in (0, 1)
    assert adapted['selftrain']['synthetic_domain'] == domain['fitted']
    assert adapted['crop']['input_size'] == 32
    estimator = load_estimator(str(final), backend='torch', device='cpu')
    hands = estimator.estimate(next(iter(recording)).depth, INTRINSICS)
    assert all(h.keypoints_xyz.shape == (21, 3) for h in hands)
    # The synthetic-only control trains the start model on a pool without pseudo-labels.
    control = model_io.read_card(trainer.control_run(1, 16))
    assert control['selftrain']['pseudo_crops'] == 0
    assert control['selftrain']['synthetic_crops'] == 16


def test_resumed_run_matches_an_uninterrupted_one(world, tmp_path):
    recording, truth, card = world
    config = small_config(iterations=2, min_improvement=-1.0)

    def factory(path):
        return ReplayEstimator(recording, truth)

    whole = SelfTrainer(recording, card, tmp_path / 'whole', config,
                        estimator_factory=factory)
    whole.run()
    first = SelfTrainer(recording, card, tmp_path / 'cut', config, estimator_factory=factory)
    assert first.run(stop_after=1) is None
    with pytest.raises(ValueError, match='resume'):
        SelfTrainer(recording, card, tmp_path / 'cut', config, estimator_factory=factory)
    with pytest.raises(ValueError, match='differs'):
        SelfTrainer(recording, card, tmp_path / 'cut', small_config(iterations=2, steps=4),
                    estimator_factory=factory, resume=True)
    SelfTrainer(recording, card, tmp_path / 'cut', config, estimator_factory=factory,
                resume=True).run()
    results = []
    for name in ('whole', 'cut'):
        state = json.loads((tmp_path / name / 'state.json').read_text())
        assert len(state['rounds']) == 3
        files = model_io.read_card(tmp_path / name / 'iter_02' / 'iter_02.yaml')['files']
        weights_sha = files['iter_02.safetensors']['sha256']
        results.append(([r['train'] for r in state['rounds']], state['best'], weights_sha))
    assert results[0] == results[1]
    # A finished run resumed with more iterations goes on from its last round.
    longer = SelfTrainer(recording, card, tmp_path / 'whole', small_config(
        iterations=3, min_improvement=-1.0), estimator_factory=factory, resume=True)
    assert longer.state['stopped'] is None
    longer.run()
    state = json.loads((tmp_path / 'whole' / 'state.json').read_text())
    assert [r['round'] for r in state['rounds']] == [0, 1, 2, 3]
    assert state['rounds'][2]['train'] == results[0][0][2]
    assert state['stopped'] == '3 iterations done'


def test_synthetic_chunks_mix_the_start_domain_at_its_share():
    for share, every in ((0.5, 2), (0.25, 4), (1.0, 1)):
        picks = [in_start_domain(index, share) for index in range(40)]
        assert sum(picks) == 40 // every
        assert picks[every - 1::every] == [True] * (40 // every)
    assert not any(in_start_domain(index, 0.0) for index in range(40))


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match='holdout_fraction'):
        SelfTrainConfig(holdout_fraction=1.0)
    with pytest.raises(ValueError, match='start_domain_fraction'):
        SelfTrainConfig(start_domain_fraction=1.5)
    with pytest.raises(ValueError, match='unknown'):
        SelfTrainConfig.from_dict({'iteration': 3})
    with pytest.raises(ValueError, match='gates'):
        SelfTrainConfig(filter_overrides={'gates.palm_max_speed_m_s': -1.0})
    with pytest.raises(ValueError, match=r'label_views must be one of \[1, 2, 4, 8\], got 3'):
        SelfTrainConfig(label_views=3)


def test_a_colour_network_is_refused_with_a_clear_error(world, tmp_path):
    import torch

    from hand_pose_ros.core.models import build_model

    torch.manual_seed(0)
    card = model_io.save_model(build_model('joint_groups_rgb', width=0.125, input_size=32),
                               tmp_path, 'rgb', extra={'crop': {
                                   'input_size': 32, 'cube_size_m': [0.25, 0.25, 0.3]}})
    with pytest.raises(ValueError, match=r"adapts depth-only networks .* \['color', 'depth'\]"):
        SelfTrainer(world[0], card, tmp_path / 'run')


def test_adapted_cards_keep_the_finder_hand_score_and_views(world, tmp_path):
    recording, truth, card = world
    start = tmp_path / 'start'
    start.mkdir()
    for name in [card.name, *model_io.read_card(card)['files']]:
        shutil.copy(card.parent / name, start / name)
    start_card = start / card.name
    shipped = model_io.read_card(resolve_card('default'))
    finder = start / 'tiny_finder.onnx'
    shutil.copy(PACKAGE_MODELS_DIR / shipped['finder']['onnx'], finder)
    model_io.register_file(start_card, finder)
    values = model_io.read_card(start_card)
    values.update(finder={**shipped['finder'], 'onnx': finder.name},
                  hand_score=shipped['hand_score'], inference={'views': 2})
    model_io.write_card(start_card, values)
    export.export_card(start_card, int8=True)
    out = tmp_path / 'run'
    trainer = SelfTrainer(recording, start_card, out,
                          small_config(min_improvement=-1.0, export_onnx=True),
                          estimator_factory=lambda path: ReplayEstimator(recording, truth))
    final = trainer.run()
    # The start card had an INT8 copy: so has the adapted one, made from its own export.
    adapted = model_io.read_card(final)
    float_export = adapted['files'][adapted['onnx']]
    assert adapted['quantization']['source']['sha256'] == float_export['sha256']
    assert OnnxRuntimeBackend(final, device='cpu').precision == 'int8'
    round_card = out / trainer.state['rounds'][1]['card']
    for path in (round_card, final):
        adapted = model_io.read_card(path, verify=True)  # the copied finder is listed
        assert adapted['finder']['onnx'] == f'{path.stem}_finder.onnx'
        assert adapted['finder']['fusion_weights'] == shipped['finder']['fusion_weights']
        assert adapted['hand_score'] == shipped['hand_score']
        estimator = load_estimator(str(path), backend='torch', device='cpu')
        assert isinstance(estimator.localizer, FusedLocalizer) and estimator.views == 2
        assert estimator.hand_score is not None
