"""Model files: safetensors + card round trip, checksum, truncation and mismatch errors."""

import numpy as np
import pytest
import torch
import yaml

from hand_pose_ros.core import model_io
from hand_pose_ros.core.models import build_model

torch.set_num_threads(1)
CFG = {'backbone': 'resnet18', 'width': 0.125, 'input_size': 64, 'head_channels': 16}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model('a2j', **CFG).eval()
    with torch.no_grad():  # non-trivial BN statistics so the round trip is meaningful
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    card = model_io.save_model(model, tmp_path, 'tiny', extra={'seed': 7, 'crop': {
        'cube_half_size_mm': np.float32(100.0)}, 'per_joint_mm': np.arange(3.0)})
    return model, card


def test_round_trip_gives_identical_outputs_and_card(saved):
    model, card_path = saved
    loaded, card = model_io.load_model(card_path)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x)['joints'], loaded(x)['joints'])
    assert card['network'] == 'a2j' and card['config'] == model.config
    assert card['seed'] == 7 and card['crop']['cube_half_size_mm'] == 100.0
    assert card['per_joint_mm'] == [0.0, 1.0, 2.0]
    assert card['inputs'] == {'depth': {'shape': ['B', 1, 64, 64], 'dtype': 'float32'}}
    record = card['files']['tiny.safetensors']
    assert record['sha256'] == model_io.sha256_file(card_path.parent / 'tiny.safetensors')
    assert not loaded.training


def test_grouped_model_card_records_grouping(tmp_path):
    model = build_model('a2j_grouped', **CFG)
    card = model_io.read_card(model_io.save_model(model, tmp_path, 'grouped'))
    assert sorted(j for group in card['grouping'] for j in group) == list(range(21))


def test_altered_weights_fail_checksum_naming_the_file(saved):
    _, card_path = saved
    weights = card_path.parent / 'tiny.safetensors'
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(model_io.ModelFileError, match=r'tiny\.safetensors: sha256 mismatch'):
        model_io.load_model(card_path)


def test_truncated_and_missing_files_are_reported(saved):
    _, card_path = saved
    weights = card_path.parent / 'tiny.safetensors'
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(model_io.ModelFileError, match=r'tiny\.safetensors: truncated'):
        model_io.load_model(card_path)
    weights.unlink()
    with pytest.raises(model_io.ModelFileError, match=r'tiny\.safetensors: missing'):
        model_io.load_model(card_path)
    with pytest.raises(model_io.ModelFileError, match='file not found'):
        model_io.load_model(card_path.parent / 'absent.yaml')


def test_malformed_card_and_wrong_network_weights(saved, tmp_path):
    _, card_path = saved
    bad = tmp_path / 'bad.yaml'
    bad.write_text('just: a dict\n')
    with pytest.raises(model_io.ModelFileError, match='not a model card'):
        model_io.read_card(bad)
    bad.write_text('{unclosed: [\n')
    with pytest.raises(model_io.ModelFileError, match='cannot be parsed'):
        model_io.read_card(bad)
    card = yaml.safe_load(card_path.read_text())
    card['config']['width'] = 0.25
    model_io.write_card(card_path, card)
    with pytest.raises(model_io.ModelFileError, match='do not match network'):
        model_io.load_model(card_path)


def test_a_card_cut_short_or_edited_by_hand_is_refused(saved):
    _, card_path = saved
    text = card_path.read_text()
    assert text.startswith('card_sha256: ')
    lines = text.splitlines(keepends=True)
    for end in range(1, len(lines)):   # every cut at a line: refused, whatever it keeps
        card_path.write_text(''.join(lines[:end]))
        with pytest.raises(model_io.ModelFileError):
            model_io.read_card(card_path, verify=False)
    card_path.write_text(text.replace('input_size: 64', 'input_size: 96'))
    with pytest.raises(model_io.ModelFileError, match='edited by hand'):
        model_io.read_card(card_path)
    # Without its digest line an edited card is read as it is, unchecked.
    card_path.write_text(''.join(line for line in text.replace('input_size: 64',
                                                               'input_size: 96')
                                 .splitlines(keepends=True)
                                 if not line.startswith('card_sha256')))
    assert model_io.read_card(card_path)['config']['input_size'] == 96
    # Written again, a card gets the digest of what it now holds, dates included.
    import datetime

    edited = model_io.read_card(card_path)
    model_io.write_card(card_path, {**edited, 'trained_on': datetime.date(2026, 11, 27)})
    assert model_io.read_card(card_path)['config']['input_size'] == 96


def test_a_card_loads_only_files_it_lists_beside_it(saved, tmp_path):
    _, card_path = saved
    original = yaml.safe_load(card_path.read_text())
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    (outside / 'tiny.safetensors').write_bytes((tmp_path / 'tiny.safetensors').read_bytes())
    changes = [
        ({'weights': '../elsewhere/tiny.safetensors'}, 'weights must name a file beside'),
        ({'weights': str(outside / 'tiny.safetensors')}, 'weights must name a file beside'),
        ({'weights': 'other.safetensors'}, 'weights file other.safetensors is not listed'),
        ({'files': None}, 'files must map names of files beside the card'),
        ({'files': {'tiny.safetensors': {'bytes': 10}}}, 'files must map names'),
        ({'files': {'../x': {'bytes': 1, 'sha256': 'a'}}}, 'files must map names'),
        # The name names the files an export writes beside the card.
        ({'name': '../outside'}, 'name must be a plain file stem'),
        ({'name': '.hidden'}, 'name must be a plain file stem'),
    ]
    for change, message in changes:
        model_io.write_card(card_path, {**original, **change})
        with pytest.raises(model_io.ModelFileError, match=message) as error:
            model_io.load_model(card_path)
        assert str(card_path) in str(error.value)
    model_io.write_card(card_path, original)
    model_io.load_model(card_path)


def test_save_rejects_reserved_fields_and_bad_names(tmp_path):
    model = build_model('a2j', **CFG)
    with pytest.raises(ValueError, match='written by save_model'):
        model_io.save_model(model, tmp_path, 'm', extra={'files': {}})
    assert not (tmp_path / 'm.safetensors').exists()
    with pytest.raises(ValueError, match='plain file stem'):
        model_io.save_model(model, tmp_path, '../escape')
