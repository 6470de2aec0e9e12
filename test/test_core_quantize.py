"""INT8 copies for ONNX Runtime on the CPU: quantised, registered, chosen, kept in step."""

import logging

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch

from hand_pose_ros.cli.export import load_calibration_crops
from hand_pose_ros.cli.export import main as export_main
from hand_pose_ros.core import export, load_estimator, model_io
from hand_pose_ros.core.backends import base as backends_base
from hand_pose_ros.core.backends import create_backend, OnnxRuntimeBackend
from hand_pose_ros.core.backends.tensorrt_backend import calibration_source
from hand_pose_ros.core.crop import CropSpec
from hand_pose_ros.core.evaluation import synthetic_frames
from hand_pose_ros.core.models import build_model, MODEL_NAMES

torch.set_num_threads(1)
CFG = {'backbone': 'resnet18', 'width': 0.125, 'input_size': 64, 'head_channels': 16}
SPEC = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3))
# Few rendered crops keep the tests quick (the export command renders export.CALIBRATION_CROPS).
CALIBRATION, CHECK = 24, 8


def save(directory, name='tiny'):
    torch.manual_seed(0)
    model = build_model('a2j', **CFG).eval()
    card = model_io.save_model(model, directory, name, extra={'crop': SPEC.to_dict()})
    export.export_card(card)
    return card


@pytest.fixture(scope='module')
def int8_card(tmp_path_factory):
    card = save(tmp_path_factory.mktemp('int8'))
    result = export.quantize_card(card, calibration_crops=CALIBRATION, check_crops=CHECK)
    return card, result


def test_the_copy_is_quantised_registered_and_near_the_float_export(int8_card):
    card_path, result = int8_card
    card = model_io.read_card(card_path)  # verifies every checksum, the copy's included
    assert card['onnx_int8'] == 'tiny_int8.onnx' == result.path.name
    assert card['quantization']['source']['sha256'] == card['files']['tiny.onnx']['sha256']
    assert card['quantization']['calibration']['crops'] == CALIBRATION
    assert card['quantization']['calibration']['seed'] == export.CALIBRATION_SEED
    graph = onnx.load(str(result.path)).graph
    operators = {node.op_type for node in graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear', 'Softmax'} <= operators  # decode in float
    # The convolution of the depth crop reads the float input and float weights; every other
    # one reads dequantised activations and weights.
    convs = {node.name: node for node in graph.node if node.op_type == 'Conv'}
    assert card['quantization']['float_nodes'] == result.float_nodes == export.input_convs(
        onnx.load(str(card_path.parent / 'tiny.onnx')).graph)
    assert len(result.float_nodes) == 1
    producers = {output: node.op_type for node in graph.node for output in node.output}
    for name, node in convs.items():
        kinds = {producers.get(value) for value in node.input[:2]}
        assert kinds == ({None} if name in result.float_nodes else {'DequantizeLinear'}), name
    assert result.within_tolerance and 'OK' in result.summary()
    crops = export.calibration_inputs(card, 6, seed=123)['depth']
    float_out = OnnxRuntimeBackend(card_path, device='cpu', precision='fp32')(crops)
    int8_out = OnnxRuntimeBackend(card_path, device='cpu', precision='int8')(crops)
    difference = np.abs(int8_out['joints'] - float_out['joints'])
    assert 0.0 < difference.mean() < export.INT8_TOLERANCE


def test_precision_chooses_the_file(int8_card, tmp_path, caplog, monkeypatch):
    card, _ = int8_card
    monkeypatch.setattr(backends_base, '_LOGGED', set())  # log_once: as in a new process
    assert OnnxRuntimeBackend(card, device='cpu').precision == 'int8'  # auto on the CPU
    fp32 = OnnxRuntimeBackend(card, device='cpu', precision='fp32')
    assert (fp32.precision, fp32.onnx_path.name) == ('fp32', 'tiny.onnx')
    with caplog.at_level(logging.WARNING):
        assert create_backend('onnxruntime', card, precision='fp16').precision == 'int8'
    assert 'no fp16 export' in caplog.text
    plain = OnnxRuntimeBackend(card.parent / 'tiny.onnx', precision='int8')
    assert plain.precision == 'as exported'  # an ONNX file runs as given
    with pytest.raises(ValueError, match='precision must be one of'):
        OnnxRuntimeBackend(card, precision='int4')
    bare = save(tmp_path, 'bare')
    assert OnnxRuntimeBackend(bare).precision == 'fp32'
    with pytest.raises(model_io.ModelFileError,
                       match=r'no INT8 ONNX export recorded; run hand_pose_export .* --int8'):
        OnnxRuntimeBackend(bare, precision='int8')


def test_a_new_export_quantises_again_and_a_stale_copy_is_refused(tmp_path):
    card_path = save(tmp_path)
    export.quantize_card(card_path, calibration_crops=CALIBRATION, check_crops=CHECK)
    # New weights in the card, new export: the card's INT8 copy is made again from it.
    model, _ = model_io.load_model(card_path)
    weights = tmp_path / 'tiny.safetensors'
    safetensors.torch.save_file({key: value * 1.1 for key, value in model.state_dict().items()},
                                str(weights), metadata={'network': 'a2j'})
    model_io.register_file(card_path, weights)
    results = export.export_card(card_path)
    assert isinstance(results[-1], export.QuantizeResult)
    card = model_io.read_card(card_path)
    assert card['quantization']['source']['sha256'] == card['files']['tiny.onnx']['sha256']
    # A copy made from another float export is refused, naming the fix.
    card['quantization']['source']['sha256'] = '0' * 64
    model_io.write_card(card_path, card)
    with pytest.raises(model_io.ModelFileError, match='was not made from the current tiny.onnx'):
        OnnxRuntimeBackend(card_path)
    assert OnnxRuntimeBackend(card_path, precision='fp32').precision == 'fp32'


def test_exports_that_fail_their_check_are_not_used(tmp_path, monkeypatch):
    card_path = save(tmp_path)
    export.quantize_card(card_path, calibration_crops=CALIBRATION, check_crops=CHECK)
    before = model_io.read_card(card_path)
    kept = {name: (tmp_path / name).read_bytes() for name in ('tiny.onnx', 'tiny_int8.onnx')}
    # A float export that differs from PyTorch at all (tolerance 0) and an INT8 copy held to
    # the same: both are written aside, the card and the files it lists stay as they were.
    monkeypatch.setattr(export, 'INT8_TOLERANCE', 0.0)
    results = export.export_card(card_path, tolerance=0.0, int8=True)
    assert [r.within_tolerance for r in results] == [False, False]
    assert (tmp_path / 'tiny.unchecked.onnx').is_file()
    assert model_io.read_card(card_path) == before
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept
    export.quantize_card(card_path, calibration_crops=CALIBRATION, check_crops=CHECK)
    assert (tmp_path / 'tiny_int8.unchecked.onnx').is_file()
    assert model_io.read_card(card_path) == before
    load_estimator(str(card_path), backend='onnxruntime')     # checksums still hold


def test_export_command_writes_the_copy(tmp_path, capsys):
    card = save(tmp_path)
    assert export_main(['--card', str(card), '--int8']) == 0
    printed = capsys.readouterr().out
    assert (f'tiny_int8.onnx (INT8, {export.CALIBRATION_CROPS} calibration crops)' in printed
            and printed.endswith('OK\n'))
    assert model_io.read_card(card)['onnx_int8'] == 'tiny_int8.onnx'
    assert export_main(['--card', str(card), '--int8', '--out', str(tmp_path / 'o')]) == 2
    assert 'dynamic-batch export beside the card' in capsys.readouterr().err
    # The user's own crops: two thirds calibrate, the rest check.
    own = tmp_path / 'own.npy'
    np.save(own, export.calibration_inputs(model_io.read_card(card), 9, seed=5)['depth'])
    assert export_main(['--card', str(card), '--int8', '--calibration-crops', str(own)]) == 0
    assert 'tiny_int8.onnx (INT8, 6 calibration crops)' in capsys.readouterr().out
    assert model_io.read_card(card)['quantization']['calibration']['check_crops'] == 3
    np.save(own, np.zeros((9, 1, 32, 32), np.float32))
    assert export_main(['--card', str(card), '--int8', '--calibration-crops', str(own)]) == 2
    assert "input 'depth' must have shape (B, 1, 64, 64)" in capsys.readouterr().err
    np.save(own, np.zeros((2, 1, 64, 64), np.float32))
    assert export_main(['--card', str(card), '--int8', '--calibration-crops', str(own)]) == 2
    assert 'give at least 3 calibration crops, got 2' in capsys.readouterr().err


def test_the_default_models_int8_copy_keeps_its_poses():
    int8 = load_estimator('default', max_hands=1)
    fp32 = load_estimator('default', max_hands=1, precision='fp32')
    assert (int8.backend.precision, fp32.backend.precision) == ('int8', 'fp32')
    differences = []
    for frame in synthetic_frames(12, seed=77):
        centers = frame.joints_xyz.mean(axis=1)
        ours = int8.estimate(frame.depth_m, frame.intrinsics, centers=centers)
        theirs = fp32.estimate(frame.depth_m, frame.intrinsics, centers=centers)
        differences += [np.linalg.norm(a.keypoints_xyz - b.keypoints_xyz, axis=1).mean()
                        for a, b in zip(ours, theirs)]
    # Mean joint displacement of a few millimetres at most (measured over 2,000 frames: the
    # mean error against the truth moves by 0.04 mm).
    assert len(differences) >= 12 and 0.0 < np.mean(differences) < 0.004


def test_calibration_batches_split_arrays_and_input_dicts(tmp_path):
    crops = {'depth': np.arange(10 * 4, dtype=np.float32).reshape(10, 1, 2, 2)}
    batches = list(export.calibration_batches(crops, 4))
    assert [len(b['depth']) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b['depth'] for b in batches]),
                                  crops['depth'])
    saved = tmp_path / 'crops.npy'
    np.save(saved, crops['depth'][:5])
    loaded = load_calibration_crops(saved)
    assert [len(b) for b in export.calibration_batches(loaded, 2)] == [2, 2, 1]
    np.save(saved, crops['depth'][:5, 0])
    with pytest.raises(ValueError, match=r'must be \(N, C, S, S\)'):
        load_calibration_crops(saved)


def test_an_int8_engine_of_a_card_is_calibrated_on_its_crops(int8_card, tmp_path):
    card, _ = int8_card
    batches, fingerprint = calibration_source(card, 'int8', 4)
    first = next(batches)  # rendered when the engine build asks
    assert first['depth'].shape == (4, 1, 64, 64)
    rest = list(batches)
    # The crops the ONNX Runtime INT8 copy was calibrated on: the card's count and seed.
    assert sum(len(b['depth']) for b in rest) == CALIBRATION - 4
    rendered = export.calibration_inputs(model_io.read_card(card), CALIBRATION + CHECK)
    np.testing.assert_array_equal(np.concatenate([first['depth']] + [b['depth'] for b in rest]),
                                  rendered['depth'][:CALIBRATION])
    assert fingerprint.startswith('rendered ')
    assert calibration_source(card, 'fp16', 4) == (None, '')
    with pytest.raises(ValueError, match='needs calibration crops'):
        calibration_source(card.parent / 'tiny.onnx', 'int8', 4)
    # Given crops are kept and fingerprinted by value: other crops, another engine key.
    given = [np.zeros((2, 1, 64, 64), np.float32)]
    kept, zeros = calibration_source(card, 'int8', 4, iter(given))
    assert kept == given and zeros.startswith('crops ')
    assert calibration_source(card, 'int8', 4, given)[1] == zeros
    assert calibration_source(card, 'int8', 4, [{'depth': given[0] + 1}])[1] != zeros


def test_a_card_calibrated_on_given_crops_needs_them_again_for_an_engine(tmp_path):
    card = save(tmp_path)
    crops = export.calibration_inputs(model_io.read_card(card), 12)['depth']
    export.quantize_card(card, crops=crops)
    with pytest.raises(ValueError, match='calibration-crops'):
        calibration_source(card, 'int8', 4)
    assert calibration_source(card, 'int8', 4, export.calibration_batches(crops, 4))[1]


# A small network of every depth-only registry entry.
TINY_DEPTH_NETWORKS = {
    'a2j': {'backbone': 'resnet18', 'width': 0.125, 'input_size': 48, 'head_channels': 16},
    'crossinfonet': {'width': 0.125, 'input_size': 48, 'fc_dim': 32},
    'a2j_grouped': {'backbone': 'resnet18', 'width': 0.125, 'input_size': 48,
                    'head_channels': 16},
}


def test_the_int8_check_covers_every_depth_network():
    depth_only = {name for name in MODEL_NAMES if name != 'joint_groups_rgb'}
    assert set(TINY_DEPTH_NETWORKS) == depth_only
    assert all(build_model(name, **cfg).input_names == ('depth',)
               for name, cfg in TINY_DEPTH_NETWORKS.items())


@pytest.mark.parametrize('name', sorted(TINY_DEPTH_NETWORKS))
def test_every_depth_network_gets_an_int8_copy(tmp_path, monkeypatch, name):
    # CrossInfoNet's graph defeats ONNX Runtime's symbolic shape inference (which then
    # dumps the model into the working directory); ONNX's own prepares it, and leaves
    # nothing behind.
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build_model(name, **TINY_DEPTH_NETWORKS[name]).eval()
    spec = CropSpec(input_size=48, cube_size_m=(0.2, 0.2, 0.3))
    card = model_io.save_model(model, tmp_path, 'net', extra={'crop': spec.to_dict()})
    export.export_card(card, int8=True)
    backend = OnnxRuntimeBackend(card, device='cpu')
    assert backend.precision == 'int8'
    out = backend(export.example_inputs(model, 2)['depth'])
    assert out['joints'].shape == (2, 21, 3) and np.all(np.isfinite(out['joints']))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        'net.onnx', 'net.safetensors', 'net.yaml', 'net_int8.onnx']
