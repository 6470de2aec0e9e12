"""hand_pose_export: ONNX files written, registered, checked; errors reported."""

import onnx
import pytest
import torch

from hand_pose_ros.cli.export import main
from hand_pose_ros.core import model_io
from hand_pose_ros.core.backends.tensorrt_backend import tensorrt_available
from hand_pose_ros.core.crop import CropSpec
from hand_pose_ros.core.models import build_model

torch.set_num_threads(1)
CFG = {'backbone': 'resnet18', 'width': 0.125, 'input_size': 64, 'head_channels': 16}


def save(directory, name):
    return model_io.save_model(build_model('a2j', **CFG), directory, name)


def test_exports_dynamic_and_static_beside_the_card(tmp_path, capsys):
    card = save(tmp_path, 'tiny')
    assert main(['--card', str(card), '--static-batch', '1', '3']) == 0
    printed = capsys.readouterr().out
    assert printed.count('max abs error ORT vs PyTorch') == 3 and 'OK' in printed
    for file_name, batch in (('tiny.onnx', 'batch'), ('tiny_b1.onnx', 1), ('tiny_b3.onnx', 3)):
        graph = onnx.load(str(tmp_path / file_name)).graph
        dim = graph.input[0].type.tensor_type.shape.dim[0]
        assert (dim.dim_param or dim.dim_value) == batch
    loaded = model_io.read_card(card)  # verifies every registered checksum
    assert loaded['onnx'] == 'tiny.onnx'
    assert set(loaded['files']) == {'tiny.safetensors', 'tiny.onnx', 'tiny_b1.onnx',
                                    'tiny_b3.onnx'}


def test_exporting_again_repairs_damaged_exports_of_a_card(tmp_path, capsys):
    card = save(tmp_path, 'tiny')
    assert main(['--card', str(card), '--static-batch', '2']) == 0
    (tmp_path / 'tiny_b2.onnx').unlink()
    damaged = tmp_path / 'tiny.onnx'
    damaged.write_bytes(damaged.read_bytes()[:500])
    with pytest.raises(model_io.ModelFileError, match='truncated|missing'):
        model_io.read_card(card)
    # The export reads only the weights, and writes the damaged files again.
    assert main(['--card', str(card), '--static-batch', '2']) == 0
    assert set(model_io.read_card(card)['files']) == {'tiny.safetensors', 'tiny.onnx',
                                                      'tiny_b2.onnx'}


def test_model_dir_and_separate_output_directory(tmp_path):
    models = tmp_path / 'models'
    cards = [save(models, 'one'), save(models, 'two')]
    before = [c.read_text() for c in cards]
    out = tmp_path / 'out'
    assert main(['--model-dir', str(models), '--out', str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ['one.onnx', 'two.onnx']
    assert [c.read_text() for c in cards] == before  # cards untouched for foreign outputs


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(['--card', str(tmp_path / 'absent.yaml')]) == 2
    assert 'absent.yaml: file not found' in capsys.readouterr().err
    assert main(['--model-dir', str(tmp_path)]) == 2
    assert 'no model cards' in capsys.readouterr().err
    card = save(tmp_path, 'tiny')
    weights = tmp_path / 'tiny.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(['--card', str(card)]) == 2
    assert 'tiny.safetensors: truncated' in capsys.readouterr().err


def test_engine_flag_needs_tensorrt(tmp_path, capsys):
    card = save(tmp_path, 'tiny')
    available, _ = tensorrt_available()
    status = main(['--card', str(card), '--engine', '--engine-cache', str(tmp_path / 'eng')])
    if available:
        assert status == 0 and 'TensorRT engine' in capsys.readouterr().out
    else:
        assert status == 2 and 'TensorRT backend unavailable' in capsys.readouterr().err


def test_no_engine_is_built_from_an_export_that_failed_its_check(tmp_path, capsys):
    card = save(tmp_path, 'tiny')
    status = main(['--card', str(card), '--engine', '--tolerance', '0',
                   '--engine-cache', str(tmp_path / 'eng')])
    assert status == 2
    assert 'needs a dynamic-batch export within tolerance' in capsys.readouterr().err
    assert not (tmp_path / 'eng').exists()


def test_an_int8_engine_is_calibrated_on_the_cards_crops_by_default(tmp_path, monkeypatch):
    # What the command hands the TensorRT backend (which needs a GPU): the card itself for
    # its own export, so that the engine is the one the node builds; for an export written
    # elsewhere, that file with crops rendered from the card.
    from hand_pose_ros.core import backends

    built = []

    class Recorder:

        def __init__(self, model, precision, max_batch, cache_dir, force_rebuild, batches):
            built.append((model, batches))
            self.cache_status, self.max_batch = 'built', max_batch

    monkeypatch.setattr(backends, 'TensorRTBackend', Recorder)
    spec = CropSpec(input_size=64, cube_size_m=(0.25, 0.25, 0.3))
    card = model_io.save_model(build_model('a2j', **CFG), tmp_path, 'tiny',
                               extra={'crop': spec.to_dict()})
    assert main(['--card', str(card), '--engine', '--precision', 'int8']) == 0
    assert built.pop() == (card, None)
    assert main(['--card', str(card), '--engine', '--precision', 'int8',
                 '--out', str(tmp_path / 'elsewhere')]) == 0
    model, batches = built.pop()
    assert model == tmp_path / 'elsewhere' / 'tiny.onnx'
    assert next(iter(batches))['depth'].shape[1:] == (1, 64, 64)


def test_missing_calibration_crops_give_one_line(tmp_path, capsys):
    card = save(tmp_path, 'tiny')
    missing = tmp_path / 'crops.npy'
    assert main(['--card', str(card), '--int8', '--calibration-crops', str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('hand_pose_export: error: ') and str(missing) in err
    assert err.count('\n') == 1
    assert not (tmp_path / 'tiny.onnx').exists()  # refused before exporting
