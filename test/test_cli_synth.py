"""The hand_pose_synth console script writes a readable dataset folder."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from hand_pose_ros.cli.synth import main
from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz
from hand_pose_ros.core.synth.dataset import load_synthetic_dataset


def test_cli_writes_a_readable_dataset_with_preview(tmp_path, capsys):
    out = tmp_path / 'synth'
    sheet = tmp_path / 'sheet.png'
    assert main(['--out', str(out), '--frames', '3', '--seed', '4', '--camera', 'icvl',
                 '--preview', str(sheet), '--color']) == 0
    assert '3/3 frames' in capsys.readouterr().err
    assert sorted(os.listdir(out / 'depth')) == ['000000.png', '000001.png', '000002.png']
    with open(out / 'meta.json') as stream:
        meta = json.load(stream)
    assert meta['seed'] == 4 and meta['camera'] == 'icvl' and meta['num_frames'] == 3
    intrinsics = CameraIntrinsics.from_preset('icvl')
    dataset = load_synthetic_dataset(str(out))
    assert len(dataset) == 3 and dataset.intrinsics == intrinsics
    sample = dataset[1]
    assert sample['depth_mm'].dtype == np.uint16 and sample['depth_mm'].shape == (240, 320)
    assert sample['color'].shape == (240, 320, 3)
    assert sample['handedness'] in ('left', 'right')
    np.testing.assert_allclose(sample['joints_uvd'], uvd_from_xyz(sample['joints_xyz'],
                                                                  intrinsics))
    assert (sample['depth_mm'] > 0).sum() > 1000
    labels = dataset.labels
    assert labels['joints_xyz'].shape == (3, 21, 3) and labels['visible'].shape == (3, 21)
    assert labels['num_hands'].min() >= 1
    with Image.open(sheet) as image:
        assert image.size[0] > 0 and image.mode == 'RGB'


def test_cli_same_seed_same_depth_and_motion_mode(tmp_path):
    for name in ('a', 'b'):
        main(['--out', str(tmp_path / name), '--frames', '2', '--seed', '9', '--camera', 'msra',
              '--motion', '--scene', 'hand_only'])
    first = load_synthetic_dataset(str(tmp_path / 'a'))
    second = load_synthetic_dataset(str(tmp_path / 'b'))
    np.testing.assert_array_equal(first[1]['depth_mm'], second[1]['depth_mm'])
    np.testing.assert_allclose(np.diff(first.labels['stamps_s']), 1 / 30.0)


def test_cli_rejects_missing_output_and_bad_folders(tmp_path, capsys):
    assert main(['--frames', '2']) == 2
    assert 'hand_pose_synth: error: --out is required' in capsys.readouterr().err
    with pytest.raises(ValueError, match='meta.json'):
        load_synthetic_dataset(str(tmp_path))


def test_cli_refuses_bad_input_before_writing(tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    out = tmp_path / 'out'
    folder = tmp_path / 'sheet.png'
    folder.mkdir()
    cases = [
        (['--out', str(a_file)], f'--out: cannot create folder {a_file}'),
        (['--out', str(out), '--motion', '--fps', '0'], '--fps must be > 0'),
        (['--out', str(out), '--preview', str(tmp_path / 'p.png'), '--preview-frames', '0'],
         '--preview-frames must be >= 1'),
        (['--out', str(out), '--preview', str(folder)], 'is a folder'),
        (['--out', str(out), '--preview', str(tmp_path / 'sheet.txt')], 'not an image file'),
        (['--out', str(out), '--preview', str(a_file / 'p.png')], 'cannot create folder'),
        (['--out', str(out), '--frames', '0'], '--frames must be >= 1'),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith('hand_pose_synth: error: ') and message in err
        assert err.count('\n') == 1
    assert not (out / 'depth').exists()  # nothing rendered
