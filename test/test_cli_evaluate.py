"""
Run hand_pose_evaluate on a few synthetic frames.

The model is a tiny untrained network: numbers are checked for consistency, not accuracy.
"""

import json

import numpy as np
from PIL import Image
import pytest

from hand_pose_ros.cli.evaluate import main
from hand_pose_ros.core.crop import CropSpec


def test_localizer_only_on_synthetic_frames(tmp_path, capsys):
    out = tmp_path / 'loc.json'
    assert main(['--dataset', 'synthetic', '--localizer-only', '--frames', '3',
                 '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['evaluated'] == 'localizer' and result['frames'] == 3
    assert result['seed'] == 1000 and result['hands'] >= 3
    assert result['detection_rate'] == 1.0   # the three hands of these frames
    assert 'detection rate' in capsys.readouterr().out


def tiny_card(directory):
    torch = pytest.importorskip('torch')
    from hand_pose_ros.core.model_io import save_model
    from hand_pose_ros.core.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model('a2j', backbone='resnet18', width=0.25, input_size=64, head_channels=16)
    spec = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3))
    return save_model(model, directory, 'tiny', extra={'crop': spec.to_dict()})


def test_model_evaluation_writes_json_and_curve(tmp_path):
    card = tiny_card(tmp_path)
    out, plot = tmp_path / 'eval.json', tmp_path / 'curve.png'
    assert main(['--dataset', 'synthetic', '--model', str(card), '--backend', 'torch',
                 '--center', 'oracle', '--frames', '2', '--json', str(out),
                 '--plot', str(plot)]) == 0
    result = json.loads(out.read_text())
    assert result['center_mode'] == 'oracle' and result['detection_rate'] == 1.0
    per_joint = [v for v in result['per_joint_mm'].values() if v is not None]
    assert len(per_joint) == 21
    # An untrained network still predicts inside the +-100 mm crop box around the centroid.
    assert 0.0 < result['mean_mm'] < 250.0
    assert result['mean_mm'] == pytest.approx(np.mean(per_joint), rel=0.2)
    assert set(result['timings_ms']) == {'localize', 'find', 'crop', 'infer', 'decode'}
    fractions = result['success_curve']['fraction']
    assert fractions == sorted(fractions) and len(fractions) == 81
    with Image.open(plot) as image:
        assert image.size == (640, 480)


def test_an_rgb_network_is_evaluated_on_rendered_colour(tmp_path, capsys):
    torch = pytest.importorskip('torch')
    from hand_pose_ros.core.model_io import save_model
    from hand_pose_ros.core.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model('joint_groups_rgb', width=0.125, input_size=64)
    spec = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3))
    card = save_model(model, tmp_path, 'rgb', extra={'crop': spec.to_dict()})
    out = tmp_path / 'eval.json'
    for center in ('oracle', 'detect'):
        assert main(['--dataset', 'synthetic', '--model', str(card), '--backend', 'torch',
                     '--center', center, '--frames', '2', '--json', str(out)]) == 0
        result = json.loads(out.read_text())
        assert result['frames'] == 2 and result['center_mode'] == center
        # Given (oracle) centres are used as they are; found hands get the card's passes.
        assert result['refine_passes'] == (1 if center == 'detect' else 0)
    assert 0.0 < result['mean_mm'] < 250.0 or result['detection_rate'] == 0.0
    assert main(['--dataset', 'icvl', '--root', str(tmp_path), '--model', str(card),
                 '--backend', 'torch']) != 0
    assert "the 'icvl' reader gives no colour" in capsys.readouterr().err


def test_icvl_folder_uses_the_joints_the_dataset_labels(tmp_path, capsys):
    from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz

    intrinsics = CameraIntrinsics.from_preset('icvl')
    (tmp_path / 'Depth').mkdir()
    v, u = np.mgrid[0:240, 0:320]
    depth = np.where((u - 160) ** 2 + (v - 120) ** 2 < 30 ** 2, 400, 0).astype(np.uint16)
    Image.fromarray(depth).save(tmp_path / 'Depth' / 'frame.png')
    rng = np.random.default_rng(0)
    joints = np.array([0.0, 0.0, 0.41]) + rng.uniform(-0.04, 0.04, (16, 3))
    uvd = uvd_from_xyz(joints, intrinsics) * [1, 1, 1000]
    values = ' '.join(f'{x:.3f}' for x in uvd.ravel())
    (tmp_path / 'test.txt').write_text(f'frame.png {values}\n')
    out = tmp_path / 'icvl.json'
    assert main(['--dataset', 'icvl', '--root', str(tmp_path), '--option', 'labels=test.txt',
                 '--model', str(tiny_card(tmp_path)), '--backend', 'torch',
                 '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['frames'] == 1 and result['seed'] is None
    per_joint = result['per_joint_mm']
    # ICVL has no wrist, thumb CMC or finger PIP joints in the canonical order.
    assert per_joint['wrist'] is None and per_joint['index_pip'] is None
    assert sum(v is not None for v in per_joint.values()) == 15
    assert ('over the 15 of its 16 evaluation joints that have a place in the 21-joint order'
            in capsys.readouterr().out)


def test_errors_exit_with_a_message(tmp_path, capsys):
    assert main(['--dataset', 'nyu', '--localizer-only']) == 2
    assert '--root' in capsys.readouterr().err
    assert main(['--dataset', 'synthetic', '--model', str(tmp_path / 'none.yaml')]) == 2
    assert 'none.yaml' in capsys.readouterr().err
    assert main(['--dataset', 'icvl', '--root', str(tmp_path / 'missing'),
                 '--localizer-only']) == 2
    assert main(['--dataset', 'icvl', '--root', str(tmp_path), '--option', 'labels',
                 '--localizer-only']) == 2
    assert 'KEY=VALUE' in capsys.readouterr().err


def test_dataset_reader_options_are_parsed():
    from hand_pose_ros.cli.evaluate import parse_options

    assert parse_options(['labels=test.txt', 'kinect=2', 'subjects=P0,P1']) == {
        'labels': 'test.txt', 'kinect': 2, 'subjects': ['P0', 'P1']}


def test_fit_hand_score_writes_the_model_card(tmp_path, capsys):
    import shutil

    from hand_pose_ros.core import model_io
    from hand_pose_ros.core.estimator import HandScore, PACKAGE_MODELS_DIR

    shutil.copy(PACKAGE_MODELS_DIR / 'default.yaml', tmp_path / 'default.yaml')
    card_path = tmp_path / 'default.yaml'
    card = model_io.read_card(card_path, verify=False)
    for name in card['files']:
        shutil.copy(PACKAGE_MODELS_DIR / name, tmp_path / name)
    del card['hand_score']
    model_io.write_card(card_path, card)
    assert main(['--dataset', 'synthetic', '--model', str(card_path), '--backend',
                 'onnxruntime', '--fit-hand-score', '--seed', '3000', '--frames', '12']) == 0
    assert 'hand score fitted on' in capsys.readouterr().out
    fitted = model_io.read_card(card_path)
    section = fitted['hand_score']['fitted_on']
    assert section['seed'] == 3000 and section['frames'] == 12
    assert section['hands'] > 0 and section['false_hands'] > 0
    assert section['precision'] == ('int8' if 'onnx_int8' in card else 'fp32')
    score = HandScore.from_card(fitted)
    assert score.joint_weight > 0   # confident joints make a hand more likely
    # Nothing else changes (the card's own digest is of what it now holds).
    assert {k: v for k, v in fitted.items() if k not in ('hand_score', 'finder',
                                                         'card_sha256')} == \
        {k: v for k, v in card.items() if k not in ('finder', 'card_sha256')}
    assert fitted['card_sha256'] == model_io.card_digest(fitted)
    if 'finder' in card:            # the localiser fusion is fitted first
        assert fitted['finder']['fusion_fitted_on']['seed'] == 3000
        assert fitted['finder']['fusion_fitted_on']['false_hands'] > 0
        assert fitted['finder']['onnx'] == card['finder']['onnx']


def test_motion_sequences_with_the_hand_tracker(tmp_path, capsys):
    from hand_pose_ros.core.evaluation import motion_frames, MOTION_SEQUENCE_FRAMES

    frames = list(motion_frames(MOTION_SEQUENCE_FRAMES + 2, seed=1000))
    # Two sequences: the second starts with a new hand, so its first hand jumps.
    names = [frame.name for frame in frames]
    assert names[0] == 'motion-1000-0' and names[-1] == 'motion-1001-1'
    steps = [np.linalg.norm(b.joints_xyz[0, 0] - a.joints_xyz[0, 0])
             for a, b in zip(frames, frames[1:])]
    assert max(steps[:MOTION_SEQUENCE_FRAMES - 1]) < 0.1   # continuous motion at 30 Hz
    out = tmp_path / 'motion.json'
    assert main(['--dataset', 'synthetic', '--scene', 'motion', '--center', 'detect',
                 '--frames', '6', '--redetect-interval', '3', '--views', '1',
                 '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['redetect_interval'] == 3 and result['frames'] == 6
    # The default model finds the hand on the first frame and follows it.
    assert result['localized_fraction'] == pytest.approx(2 / 6)
    assert 'searched for every 3 frames' in capsys.readouterr().out
    assert main(['--dataset', 'synthetic', '--frames', '2', '--redetect-interval', '3']) == 2
    assert '--center detect' in capsys.readouterr().err
    # What the filter publishes: the hand shows from its second frame.
    assert main(['--dataset', 'synthetic', '--scene', 'motion', '--center', 'detect',
                 '--frames', '4', '--redetect-interval', '3', '--views', '1', '--filter',
                 '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['evaluated'] == 'filtered hands' and result['filter_params'] == {}
    assert result['detection_rate'] == pytest.approx(3 / 4)
    assert 'hands published by the filter' in capsys.readouterr().out
    for bad in (['--filter'], ['--center', 'detect', '--filter-param', 'smoother=none'],
                ['--center', 'detect', '--filter', '--filter-param', 'bogus=1']):
        assert main(['--dataset', 'synthetic', '--frames', '2', *bad]) == 2
        assert 'filter' in capsys.readouterr().err


def test_bad_input_gives_one_line_before_the_run(tmp_path, capsys):
    from hand_pose_ros.core.backends.tensorrt_backend import tensorrt_available

    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    loc = ['--dataset', 'synthetic', '--localizer-only', '--frames', '1']
    cases = [
        (['--option', 'a=['], "--option 'a=['"),
        (['--option', 'foo=1'], 'the synthetic reader takes no options'),
        (['--match-radius-mm', '-5'], '--match-radius-mm must be > 0'),
        (['--json', str(a_file / 'eval.json')], f'cannot create folder {a_file}'),
        (['--plot', str(tmp_path)], 'is a folder'),
    ]
    for extra, message in cases:
        assert main([*loc, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith('hand_pose_evaluate: error: ') and message in err
        assert err.count('\n') == 1
    assert main(['--dataset', 'icvl', '--root', str(tmp_path), '--localizer-only',
                 '--option', 'lables=test.txt']) == 2
    assert 'lables: the icvl reader takes labels' in capsys.readouterr().err
    if not tensorrt_available()[0]:
        assert main(['--dataset', 'synthetic', '--frames', '1', '--backend', 'tensorrt']) == 2
        assert 'TensorRT backend unavailable' in capsys.readouterr().err
    json_path = tmp_path / 'new' / 'eval.json'
    assert main([*loc, '--json', str(json_path)]) == 0
    assert json.loads(json_path.read_text())['frames'] == 1
