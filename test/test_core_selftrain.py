"""
Self-training loop: pseudo-label filter, one round end to end on a tiny bag, resumption.

The recording is a short rendered synthetic motion written to a real bag. The estimator of
the loop is replaced by a replay of the true joints (plus 2 mm noise) with corruptions
injected into known frames, so the test knows which frames must become pseudo-labels and
which must not; the fine-tuning runs the real trainer on a tiny untrained A2J card.
"""

from dataclasses import replace
import json
import os
import shutil
import time

import numpy as np
from PIL import Image
import pytest
import torch

from hand_pose_ros.core import domain_fit, export, model_io
from hand_pose_ros.core.backends import OnnxRuntimeBackend
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.crop import CropSpec
from hand_pose_ros.core.estimator import (
    HandPose, load_estimator, resolve_card)
from hand_pose_ros.core.hand_finder import FusedLocalizer
from hand_pose_ros.core.recordings import DepthFrame, FolderRecording, write_folder_recording
from hand_pose_ros.core.selftrain import (
    ANATOMY, confident_joints, consistency_metrics, HAND_COUNT, holdout_mask, HOLDOUT_SHADE,
    holdout_spans, in_start_domain, KEPT, LOW_CONFIDENCE, NO_DETECTION, select_pseudo_labels,
    SelfTrainConfig, SelfTrainer, spatial_problem, STATE_FILE, TEMPORAL, write_pseudo_chunks)
from hand_pose_ros.core.synth import generate_motion, SensorConfig, SyntheticGenerator
from hand_pose_ros.core.training import CropPool

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


def test_held_out_blocks_spread_over_the_recording():
    # The experiment's 400 frames (four 100-frame hands): the last 20 frames of each.
    assert holdout_spans(holdout_mask(400, 0.2, 4)) == [[80, 100], [180, 200], [280, 300],
                                                        [380, 400]]
    # One block is the last part, as before blocks existed.
    assert holdout_spans(holdout_mask(400, 0.2, 1)) == [[320, 400]]
    mask = holdout_mask(1000, 0.2, 4)
    assert mask.sum() == 200 and holdout_spans(mask)[0] == [200, 250]
    # Too few held-out frames for blocks of MIN_HOLDOUT_BLOCK_FRAMES (10): fewer blocks.
    assert holdout_spans(holdout_mask(45, 0.5, 3)) == [[11, 22], [34, 45]]
    assert holdout_spans(holdout_mask(40, 0.25, 4)) == [[30, 40]]
    assert holdout_spans(holdout_mask(12, 0.2, 4)) == [[10, 12]]
    assert holdout_spans(holdout_mask(1, 0.2, 4)) == []


def still_hand(frames, offset_m, noise_m, seed, scale=1.0):
    """Return (T, 21, 3) joints of one hand held still at offset_m (T, 3), with noise."""
    hand = generate_motion(1, seed=1).joints_xyz[0]
    rng = np.random.default_rng(seed)
    return (hand.mean(axis=0) + scale * (hand - hand.mean(axis=0)))[None] \
        + np.asarray(offset_m)[:, None] + rng.normal(0.0, noise_m, (frames, 21, 3))


def test_the_temporal_filter_runs_on_each_stretch_of_a_part_apart():
    # The hand rests, moves 15 cm during a 4-frame held-out block (shorter than the
    # filter's max_gap_s), then rests: smoothed across the block, the frames next to it
    # would be pulled 2-4 cm towards each other and fail the residual bound.
    offset = np.zeros((28, 3))
    offset[12:16, 0] = np.linspace(0.0, 0.15, 6)[1:-1]
    offset[16:, 0] = 0.15
    parts = np.r_[np.zeros(12), np.ones(4), np.zeros(12)].astype(bool)
    keypoints = still_hand(28, offset, 0.002, seed=0)
    selection = select_pseudo_labels(np.arange(28) / 30.0, keypoints, np.full((28, 21), 0.9),
                                     SelfTrainConfig(score_quantile=0.0), parts=parts)
    assert np.all(selection.status == KEPT), selection.status
    assert np.nanmax(selection.residual_m[~parts]) < 0.005
    np.testing.assert_allclose(selection.labels[[11, 16]].mean(axis=1),
                               keypoints[[11, 16]].mean(axis=1), atol=0.003)


def test_pose_checks_accept_a_plausible_left_hand():
    # Flexion angles change sign between hands and a recording does not say which it shows.
    from hand_pose_ros.core.filters import anatomy, FilterConfig
    from hand_pose_ros.core.kinematics import ANGLE_NAMES, hand_from_angles, REST_ANGLES_DEG

    angles = np.radians([REST_ANGLES_DEG[name] + (45.0 if name.endswith('pip_flexion')
                                                  else 0.0) for name in ANGLE_NAMES])
    left = hand_from_angles(angles, handedness='left') + np.array([0.0, 0.0, 0.5])
    checks = FilterConfig().anatomy
    blamed = anatomy.check_pose(checks, left, 'right')
    assert any(mask.any() for mask in blamed.values())    # as a right hand it is not
    keypoints = np.repeat(left[None], 20, axis=0)
    selection = select_pseudo_labels(np.arange(20) / 30.0, keypoints, np.full((20, 21), 0.9),
                                     SelfTrainConfig(score_quantile=0.0, pose_checks=True))
    assert np.all(selection.status == KEPT), selection.status


def test_held_out_metrics_count_the_frames_of_all_blocks():
    # Two held-out blocks, 10 and 20 frames, of two people 30 cm apart; half the second
    # block has no hand. The frames between them are not measured.
    count = 60
    part = np.zeros(count, bool)
    part[10:20] = part[40:60] = True
    offset = np.zeros((count, 3))
    offset[20:, 0] = 0.3
    keypoints = np.where(np.arange(count)[:, None, None] < 20,
                         still_hand(count, offset, 0.0005, seed=1),
                         still_hand(count, offset, 0.0005, seed=2, scale=1.2))
    keypoints[40:50] = np.nan
    keypoints[20:40] += np.random.default_rng(3).normal(0.0, 0.05, (20, 21, 3))
    selection = select_pseudo_labels(np.arange(count) / 30.0, keypoints,
                                     np.full((count, 21), 0.9),
                                     SelfTrainConfig(score_quantile=0.0), parts=part)
    metrics = consistency_metrics(selection, part)
    assert metrics['frames'] == 30 and metrics['detections'] == 20
    assert metrics['kept'] == 20 and metrics['pass_rate'] == pytest.approx(20 / 30)
    assert metrics['rejected']['no_detection'] == 10
    # Second differences and bone lengths within each block: the 0.5 mm noise, not the
    # 30 cm between the blocks (accel_mm about 2) nor the 20 % between the two hands' bones
    # (bone_cv about 0.02; over both blocks at once 0.09).
    assert metrics['accel_mm'] < 3.0
    assert metrics['bone_cv'] < 0.03
    assert metrics['residual_mm'] < 1.0


def test_round_zero_labels_only_the_frames_between_held_out_blocks(world, tmp_path,
                                                                   monkeypatch):
    recording, truth, card = world
    out = tmp_path / 'run'
    trainer = SelfTrainer(recording, card, out, small_config(holdout_fraction=0.5,
                                                             holdout_blocks=2),
                          estimator_factory=lambda path: ReplayEstimator(recording, truth))
    assert trainer.run(stop_after=0) is None
    round0 = json.loads((out / STATE_FILE).read_text())['rounds'][0]
    assert round0['holdout_spans'] == [[10, 20], [30, 40]]
    train, holdout = round0['train'], round0['holdout']
    assert train['frames'] == holdout['frames'] == 20
    # Frames 4 (stretched finger), 22 (two hands) and 27 (missing) are pseudo-label
    # frames; 10 (a jump, the first frame of a block) and 16 (low confidence) held out.
    assert (train['rejected']['anatomy'], train['rejected']['hand_count'],
            train['rejected']['no_detection']) == (1, 1, 1)
    assert (holdout['rejected']['temporal'], holdout['rejected']['low_confidence']) == (1, 1)
    assert holdout['kept'] == 18
    with np.load(out / 'iter_00' / 'pseudo_labels.npz') as labels:
        used = labels['frame_index'].tolist()
        error_m = np.linalg.norm(labels['keypoints_xyz'] - truth[used], axis=-1).mean()
    assert used == [0, 1, 2, 3, 5, 6, 7, 8, 9, 20, 21, 23, 24, 25, 26, 28, 29]
    assert error_m < 0.005  # each label with its frame (the hand moves centimetres apart)
    # The timeline shades the held-out blocks (x of frame t: 60 + 920 t / 40).
    with Image.open(out / 'iter_00' / 'timeline.png') as timeline:
        assert timeline.getpixel((405, 200)) == HOLDOUT_SHADE  # frame 15
        assert timeline.getpixel((175, 200)) == (255, 255, 255)  # frame 5
    # The synthetic domain is fitted to pseudo-label frames only.
    given = []

    class Given(Exception):
        pass

    def fit_domain(frames, centers, *args, **kwargs):
        given.append(([frame.stamp_ns for frame in frames], centers))
        raise Given

    monkeypatch.setattr(domain_fit, 'fit_domain', fit_domain)
    with pytest.raises(Given):
        trainer.domain()
    stamps, centers = given[0]
    frames = [*range(10), *range(20, 27), 28, 29]  # 27: no hand
    assert stamps == [frame.stamp_ns for i, frame in enumerate(recording) if i in frames]
    np.testing.assert_allclose(centers, truth[frames].mean(axis=1), atol=0.003)


def test_a_run_made_before_held_out_blocks_resumes_with_one_block(world, tmp_path):
    recording, truth, card = world
    out = tmp_path / 'run'

    def factory(path):
        return ReplayEstimator(recording, truth)

    SelfTrainer(recording, card, out, small_config(holdout_blocks=1),
                estimator_factory=factory).run(stop_after=0)
    state = json.loads((out / STATE_FILE).read_text())
    del state['config']['holdout_blocks']
    (out / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"\{'holdout_blocks': 1\} differs from "
                                         r"\{'holdout_blocks': 4\}"):
        SelfTrainer(recording, card, out, small_config(), estimator_factory=factory,
                    resume=True)
    resumed = SelfTrainer(recording, card, out, small_config(holdout_blocks=1),
                          estimator_factory=factory, resume=True)
    assert resumed.state['rounds'] == state['rounds']


def test_confident_joints_drops_the_least_confident_share_of_all_joints():
    scores = np.arange(2 * 21, dtype=float).reshape(2, 21) / 42.0
    assert confident_joints(scores, 0.0).all()
    mask = confident_joints(scores, 0.25)
    # The threshold is over every joint of every pose: the first 11 of 42 fall below it.
    assert mask.sum() == 31 and not mask[0, :11].any() and mask[0, 11:].all() and mask[1].all()
    with pytest.raises(ValueError, match='joint_score_quantile must be in'):
        SelfTrainConfig(joint_score_quantile=1.0)


def test_masked_pseudo_label_joints_are_unlabelled_in_the_same_crops(world, tmp_path):
    recording, truth, _ = world
    spec = CropSpec(32, (0.25, 0.25, 0.3))
    frames = np.array([3, 5, 8])
    mask = np.ones((3, 21), bool)
    mask[0, [4, 8]] = mask[2, 20] = False
    chunks = {}
    for name, joint_mask in (('all', np.ones((3, 21), bool)), ('masked', mask)):
        (tmp_path / name).mkdir()
        assert write_pseudo_chunks(recording, frames, truth[frames], joint_mask, spec,
                                   str(tmp_path / name), 8) == 3
        with np.load(tmp_path / name / 'chunk_a_pseudo_00000.npz') as chunk:
            chunks[name] = {key: chunk[key] for key in chunk.files}
    masked, full = chunks['masked'], chunks['all']
    np.testing.assert_array_equal(masked['mask'], mask)
    assert np.isnan(masked['joints'][~mask]).all()
    # Dropping joints moves neither the crop nor the joints that stay labels.
    np.testing.assert_array_equal(masked['patches'], full['patches'])
    np.testing.assert_array_equal(masked['joints'][mask], full['joints'][mask])
    assert np.isfinite(full['joints']).all()


def test_a_run_made_before_joint_masks_resumes_and_labels_every_joint(world, tmp_path):
    recording, truth, card = world
    out = tmp_path / 'run'

    def factory(path):
        return ReplayEstimator(recording, truth)

    config = small_config(min_improvement=-1.0)
    SelfTrainer(recording, card, out, config, estimator_factory=factory).run(stop_after=0)
    # What such a run left: no joint_score_quantile setting, pseudo-labels without masks.
    state = json.loads((out / STATE_FILE).read_text())
    del state['config']['joint_score_quantile']
    (out / STATE_FILE).write_text(json.dumps(state))
    labels_path = out / 'iter_00' / 'pseudo_labels.npz'
    with np.load(labels_path) as stored:
        old = {key: stored[key] for key in stored.files if key != 'joint_mask'}
    np.savez(labels_path, **old)
    with pytest.raises(ValueError, match='joint_score_quantile'):
        SelfTrainer(recording, card, out, replace(config, joint_score_quantile=0.2),
                    estimator_factory=factory, resume=True)
    SelfTrainer(recording, card, out, config, estimator_factory=factory, resume=True).run()
    training = json.loads((out / STATE_FILE).read_text())['rounds'][1]['training']
    assert training['pseudo_labels'] == len(old['frame_index'])
    assert training['masked_joints'] == 0


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
    round0 = state['rounds'][0]
    # 40 frames hold 10 held-out ones: one block of 10 (too few for four), at the end.
    assert round0['frames_seen'] == NUM_FRAMES and round0['holdout_spans'] == [[30, 40]]
    assert round0['train']['rejected']['anatomy'] == 1
    assert round0['train']['rejected']['hand_count'] == 1
    with np.load(out / 'iter_00' / 'pseudo_labels.npz') as labels:
        used = set(labels['frame_index'].tolist())
        assert labels['joint_mask'].shape == (len(used), 21) and labels['joint_mask'].all()
    assert used.isdisjoint(CORRUPT) and max(used) < 30 and len(used) >= 20
    training = state['rounds'][1]['training']
    assert training['masked_joints'] == 0
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
    assert hands and all(h.keypoints_xyz.shape == (21, 3) for h in hands)
    # The synthetic-only control trains the start model on a pool without pseudo-labels;
    # its round 1 renders the synthetic crops of adaptation round 1 (the same seeds).
    control = model_io.read_card(trainer.control_run(1, 16))
    assert control['selftrain']['pseudo_crops'] == 0
    assert control['selftrain']['synthetic_crops'] == 16
    name = 'chunk_b_synth_r01_00000.npz'
    with np.load(out / 'iter_01' / 'train' / 'pool' / name) as adapted_chunk, \
            np.load(out / 'control' / 'iter_01' / 'train' / 'pool' / name) as control_chunk:
        np.testing.assert_array_equal(adapted_chunk['patches'], control_chunk['patches'])
    assert not (out / 'control' / 'iter_01' / 'synthetic').exists()
    # A card left without its done marker (stopped between the card and its finder) is
    # made again; a finished round is not.
    marker = out / 'control' / 'iter_01' / 'done.json'
    assert json.loads(marker.read_text())['pseudo_crops'] == 0
    marker.unlink()
    card_file = out / 'control' / 'iter_01' / 'control_01.yaml'
    card_file.write_text('interrupted: true\n')
    assert model_io.read_card(trainer.control_run(1, 16))['selftrain']['pseudo_crops'] == 0
    written = card_file.stat().st_mtime_ns
    trainer.control_run(1, 16)
    assert card_file.stat().st_mtime_ns == written


def test_an_interrupted_pool_build_loads_its_crops_in_the_same_order(world, tmp_path):
    recording, truth, card = world
    config, rings = small_config(fit_domain=False, synthetic_fraction=0.5), []
    for name in ('whole', 'cut'):
        trainer = SelfTrainer(recording, card, tmp_path / name, config,
                              estimator_factory=lambda path: ReplayEstimator(recording, truth))
        directory = tmp_path / name / 'iter_01'
        (directory / 'train' / 'pool').mkdir(parents=True)
        context = trainer._context_spec()
        if name == 'cut':
            # The build stopped after rendering a synthetic chunk, a minute before it was
            # resumed and wrote the pseudo-labelled chunks again.
            for path in trainer._synthetic_chunks(directory / 'synthetic', 1, 1, context):
                os.utime(path, (time.time() - 60.0,) * 2)
        trainer._build_pool(directory, 1, np.arange(16), truth[:16], np.ones((16, 21), bool))
        pool = CropPool(str(directory / 'train' / 'pool'), 1000, context.input_size)
        pool.refresh()
        rings.append({key: array[:len(pool)] for key, array in pool.arrays.items()})
    assert len(rings[0]['joints']) == 32
    for key in rings[0]:
        np.testing.assert_array_equal(rings[0][key], rings[1][key])


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
    # Where and how fast it computes may change on resumption (0: the thread count
    # already set, so that the weights stay comparable).
    assert config.num_threads == torch.get_num_threads()
    SelfTrainer(recording, card, tmp_path / 'cut', replace(config, num_threads=0),
                estimator_factory=factory, resume=True).run()
    assert json.loads((tmp_path / 'cut' / 'state.json').read_text())['config'][
        'num_threads'] == 0
    results = []
    for name in ('whole', 'cut'):
        state = json.loads((tmp_path / name / 'state.json').read_text())
        assert len(state['rounds']) == 3
        files = model_io.read_card(tmp_path / name / 'iter_02' / 'iter_02.yaml')['files']
        weights_sha = files['iter_02.safetensors']['sha256']
        results.append(([r['train'] for r in state['rounds']], state['best'], weights_sha))
    assert results[0] == results[1]
    # Each round trained on synthetic crops of its own, and kept them in its trainer pool
    # only (the rendering folder goes once the pool is built).
    pools = [tmp_path / 'whole' / f'iter_{r:02d}' / 'train' / 'pool' for r in (1, 2)]
    for r, pool in enumerate(pools, 1):
        names = [path.name for path in pool.glob('chunk_b_*')]
        assert names and all(name.startswith(f'chunk_b_synth_r{r:02d}_') for name in names)
    with np.load(pools[0] / 'chunk_b_synth_r01_00000.npz') as first, \
            np.load(pools[1] / 'chunk_b_synth_r02_00000.npz') as second:
        assert first['patches'].shape == second['patches'].shape
        assert np.abs(first['patches'].astype(np.float32) - second['patches']).mean() > 0.01
    for name in ('whole', 'cut'):
        assert not list((tmp_path / name).glob('**/synthetic'))
    # A finished run resumed with more iterations goes on from its last round.
    longer = SelfTrainer(recording, card, tmp_path / 'whole', small_config(
        iterations=3, min_improvement=-1.0), estimator_factory=factory, resume=True)
    assert longer.state['stopped'] is None
    longer.run()
    state = json.loads((tmp_path / 'whole' / 'state.json').read_text())
    assert [r['round'] for r in state['rounds']] == [0, 1, 2, 3]
    assert state['rounds'][2]['train'] == results[0][0][2]
    assert state['stopped'] == '3 iterations done'


def test_a_run_stopped_by_its_gain_rule_goes_on_when_resumed_with_a_lower_one(world, tmp_path):
    recording, truth, card = world

    def factory(path):
        return ReplayEstimator(recording, truth)

    strict = small_config(iterations=3, min_improvement=1.0)   # no round gains 100 points
    SelfTrainer(recording, card, tmp_path / 'run', strict, estimator_factory=factory).run()
    state = json.loads((tmp_path / 'run' / 'state.json').read_text())
    assert len(state['rounds']) == 2
    assert state['stopped'].startswith('pass rate stopped improving in round 1')
    # The same rule (more iterations alone) leaves it stopped; a lower one lets it go on.
    again = SelfTrainer(recording, card, tmp_path / 'run', replace(strict, iterations=4),
                        estimator_factory=factory, resume=True)
    assert again.state['stopped'].startswith('pass rate stopped improving')
    longer = SelfTrainer(recording, card, tmp_path / 'run', replace(strict, iterations=3,
                                                                    min_improvement=-1.0),
                         estimator_factory=factory, resume=True)
    assert longer.state['stopped'] is None
    longer.run()
    state = json.loads((tmp_path / 'run' / 'state.json').read_text())
    assert [r['round'] for r in state['rounds']] == [0, 1, 2, 3]
    assert state['stopped'] == '3 iterations done'
    assert state['config']['min_improvement'] == -1.0
    # More iterations under a rule its last round fails: stays stopped.
    stays = SelfTrainer(recording, card, tmp_path / 'run', replace(strict, iterations=5),
                        estimator_factory=factory, resume=True)
    assert stays.state['stopped'] == '3 iterations done'


def test_a_run_resumes_only_with_the_model_it_started_from(world, tmp_path):
    # An update can put another model at the same path (the installed 'default').
    from hand_pose_ros.core.models import build_model

    recording, truth, card = world
    start = tmp_path / 'model' / card.name
    start.parent.mkdir()
    for name in model_io.read_card(card)['files']:
        shutil.copy(card.parent / name, start.parent / name)
    shutil.copy(card, start)

    def factory(path):
        return ReplayEstimator(recording, truth)

    SelfTrainer(recording, start, tmp_path / 'run', small_config(), estimator_factory=factory)
    SelfTrainer(recording, start, tmp_path / 'run', small_config(), estimator_factory=factory,
                resume=True)
    torch.manual_seed(1)
    other = build_model('a2j', backbone='resnet18', width=0.125, input_size=32,
                        head_channels=16)
    model_io.save_model(other, start.parent, start.stem, extra={
        k: v for k, v in model_io.read_card(start).items() if k in ('crop', 'training')})
    with pytest.raises(ValueError, match='its start_model_files'):
        SelfTrainer(recording, start, tmp_path / 'run', small_config(),
                    estimator_factory=factory, resume=True)


def test_synthetic_chunks_mix_the_start_domain_at_its_share():
    for share, every in ((0.5, 2), (0.25, 4), (1.0, 1)):
        picks = [in_start_domain(index, share) for index in range(40)]
        assert sum(picks) == 40 // every
        assert picks[every - 1::every] == [True] * (40 // every)
    assert not any(in_start_domain(index, 0.0) for index in range(40))


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match='holdout_fraction'):
        SelfTrainConfig(holdout_fraction=1.0)
    with pytest.raises(ValueError, match='holdout_blocks must be >= 1'):
        SelfTrainConfig(holdout_blocks=0)
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
    from hand_pose_ros.core.finder_training import copy_finder

    recording, truth, card = world
    start = tmp_path / 'start'
    start.mkdir()
    for name in [card.name, *model_io.read_card(card)['files']]:
        shutil.copy(card.parent / name, start / name)
    start_card = start / card.name
    shipped = model_io.read_card(resolve_card('default'))
    copy_finder(resolve_card('default'), start_card)
    values = model_io.read_card(start_card)
    values.update(hand_score=shipped['hand_score'], inference={'views': 2})
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
