"""hand_pose_selftrain: a real run on a tiny bag and a PNG folder, resume rules, bad input."""

import json
import logging

import numpy as np
import pytest

from hand_pose_ros.cli.selftrain import (
    _sequences, build_parser, config_from_args, main, open_recording)
from hand_pose_ros.cli.train import main as train_main
from hand_pose_ros.core import model_io
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.estimator import load_estimator
from hand_pose_ros.core.recordings import DepthFrame, FolderRecording, write_folder_recording
from hand_pose_ros.core.synth import generate_motion, SyntheticGenerator
from hand_pose_ros.ros.bags import BagRecording, write_depth_bag

INTRINSICS = CameraIntrinsics(130.0, 130.0, 80.0, 60.0, 160, 120)
FAST = ['--steps', '2', '--batch-size', '2', '--threads', '1', '--iterations', '1',
        '--no-onnx', '--domain-fit-crops', '6']


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    """Return (bag path, folder path, tiny card path)."""
    import torch

    from hand_pose_ros.core.models import build_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('cli_selftrain')
    motion = generate_motion(12, seed=5, intrinsics=INTRINSICS)
    rendered = SyntheticGenerator(INTRINSICS, seed=5).render_motion(motion)
    frames = [DepthFrame(10 ** 18 + int(round(f.stamp_s * 1e9)), f.depth_mm, INTRINSICS)
              for f in rendered]
    write_depth_bag(root / 'bag', frames, storage='mcap')
    write_folder_recording(root / 'pngs', frames)
    torch.manual_seed(0)
    model = build_model('a2j', backbone='resnet18', width=0.125, input_size=32,
                        head_channels=16)
    card = model_io.save_model(model, root / 'model', 'tiny', extra={
        'crop': {'input_size': 32, 'cube_size_m': [0.25, 0.25, 0.3],
                 'interpolation': 'nearest'}})
    return root / 'bag', root / 'pngs', card


def test_run_on_a_bag_writes_reports_and_a_loadable_model(inputs, tmp_path, capsys):
    bag, _, card = inputs
    out = tmp_path / 'run'
    assert main([str(bag), '--model', str(card), '-o', str(out), *FAST]) == 0
    printed = capsys.readouterr()
    assert '[selftrain] round 0' in printed.err
    final = printed.out.strip().splitlines()[-1]
    assert final.endswith('adapted.yaml')
    report = json.loads((out / 'report.json').read_text())
    assert report['rounds'][0]['round'] == 0
    assert report['details'][0]['frames_seen'] == 12
    assert report['details'][0]['holdout_spans'] == [[10, 12]]  # 20 % of 12 frames
    assert (out / 'iter_00' / 'timeline.png').is_file()
    estimator = load_estimator(final, backend='torch', device='cpu')
    frame = next(iter(BagRecording(bag)))
    hands = estimator.estimate(frame.depth, frame.intrinsics)
    assert hands and all(np.all(np.isfinite(hand.keypoints_xyz)) for hand in hands)
    # An existing run is only continued when asked to.
    assert main([str(bag), '--model', str(card), '-o', str(out), *FAST]) == 2
    assert '--resume' in capsys.readouterr().err
    assert main([str(bag), '--model', str(card), '-o', str(out), '--resume', *FAST]) == 0


def test_png_folder_recordings_are_read_like_bags(inputs):
    bag, folder, _ = inputs
    from_folder = list(open_recording(folder))
    from_bag = list(open_recording(bag))
    assert isinstance(open_recording(folder), FolderRecording)
    assert [f.stamp_ns for f in from_folder] == [f.stamp_ns for f in from_bag]
    for a, b in zip(from_folder, from_bag):
        np.testing.assert_array_equal(a.depth, b.depth)
        assert a.intrinsics == b.intrinsics == INTRINSICS


def test_experiment_runs_end_to_end_at_a_tiny_size(inputs, tmp_path, capsys):
    _, _, card = inputs
    out = tmp_path / 'experiment'
    assert main(['--experiment', str(out), '--model', str(card), '--adapt-frames', '10',
                 '--test-frames', '4', '--sequence-frames', '5', '--test-sequence-frames', '2',
                 *FAST]) == 0
    results = json.loads((out / 'experiment.json').read_text())
    assert results['frames'] == {'adapt_unlabelled': 10, 'test_b': 4,
                                 'test_sequence_frames': 2, 'test_a': 2}
    assert len(BagRecording(out / 'domain_b_bag')) == 10
    before = results['before']['domain_b']
    assert before['frames'] == 4 and np.isfinite(before['mean_error_oracle_mm'])
    assert results['rounds'][0]['round'] == 0
    assert (out / 'experiment.md').read_text().startswith('# Domain-shift experiment')

    # --evaluate measures cards and checkpoints (of a fine-tune of --model) on the same
    # test frames.
    network = model_io.read_card(card)['config']

    def fine_tune(name, cube, start=card):
        assert train_main([
            '--output-dir', str(tmp_path / name), '--steps', '1', '--set', f'init_from={start}',
            '--set', f'model_cfg={json.dumps(network)}', '--set',
            f'crop={{input_size: 32, cube_size_m: {cube}, interpolation: nearest}}',
            '--set', 'batch_size=2', '--set', 'pool_size=4', '--set', 'min_pool=2', '--set',
            'chunk_size=2', '--set', 'render_workers=0', '--set', 'eval_frames=0', '--set',
            'num_threads=1', '--set', 'checkpoint_every=1']) == 0
        return tmp_path / name / 'checkpoint_last.pt'

    checkpoint = fine_tune('fine_tune', [0.25, 0.25, 0.3])
    capsys.readouterr()
    assert main(['--evaluate', str(card), str(checkpoint), '--model', str(card),
                 '--test-frames', '4', '--test-sequence-frames', '2', '--threads', '1']) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| /')]
    assert [row.split(' | ')[0][2:] for row in rows] == [str(card), str(checkpoint)]
    assert f"| {before['mean_error_mm']:.2f} | {before['mean_error_oracle_mm']:.2f} |" in rows[0]
    written = checkpoint.parent / 'evaluated' / 'checkpoint_last.yaml'
    assert model_io.read_card(written)['crop'] == model_io.read_card(card)['crop']
    assert main(['--evaluate', str(card), '--experiment', str(out)]) == 2
    # A checkpoint trained on other crops than --model's is refused, not mislabelled.
    other = fine_tune('other_crops', [0.3, 0.3, 0.3], start='null')
    assert main(['--evaluate', str(other), '--model', str(card), '--test-frames', '2']) == 2
    assert 'trained on crops' in capsys.readouterr().err


def test_an_interrupted_recording_is_recorded_again(inputs, tmp_path, capsys):
    _, _, card = inputs
    out = tmp_path / 'experiment'
    (out / 'domain_b_bag').mkdir(parents=True)    # a bag cut off before its metadata
    (out / 'domain_b_bag' / 'domain_b_bag.mcap').write_bytes(b'cut off')
    assert main(['--experiment', str(out), '--model', str(card), '--adapt-frames', '4',
                 '--test-frames', '2', '--sequence-frames', '2', '--test-sequence-frames', '2',
                 *FAST]) == 0
    assert len(BagRecording(out / 'domain_b_bag')) == 4
    assert not (out / 'domain_b_bag.partial').exists()


def test_adaptation_sequences_never_take_the_test_sequences_seeds(inputs, tmp_path, capsys):
    # 800 sequences from seed 100 would reach seed 900, the first labelled test sequence's:
    # its frames would be trained on.
    _, _, card = inputs
    out = tmp_path / 'experiment'
    assert main(['--experiment', str(out), '--model', str(card), '--adapt-frames', '801',
                 '--sequence-frames', '1', *FAST]) == 2
    assert 'keep their seeds apart from the test sequences' in capsys.readouterr().err
    assert not (out / 'domain_b_bag').exists()


def test_bad_input_exits_with_a_message(inputs, tmp_path, capsys):
    bag, folder, card = inputs
    assert main([str(folder), '-o', str(tmp_path / 'a'), '--model', str(card),
                 '--depth-topic', '/x']) == 2
    assert 'topics apply to bags only' in capsys.readouterr().err
    assert main([str(bag), '-o', str(tmp_path / 'b'), '--model', str(card),
                 '--filter', 'nonsense']) == 2
    assert 'KEY=VALUE' in capsys.readouterr().err
    assert main([str(tmp_path), '-o', str(tmp_path / 'c'), '--model', str(card)]) == 2
    assert 'no .png' in capsys.readouterr().err
    assert main([str(bag), '-o', str(tmp_path / 'd'), '--model', str(tmp_path / 'no.yaml')]) \
        == 2
    assert main([str(bag), '-o', str(tmp_path / 'e'), '--model', str(card),
                 '--holdout-blocks', '0']) == 2
    assert 'holdout_blocks must be >= 1' in capsys.readouterr().err
    assert config_from_args(build_parser().parse_args(['--holdout-blocks', '3'])) \
        .holdout_blocks == 3
    with pytest.raises(SystemExit):
        main(['--model', str(card)])
    assert _sequences(250, 100, 7) == [(7, 100), (8, 100), (9, 50)]


def test_folder_intrinsics_formats_and_bad_files(tmp_path, caplog):
    from PIL import Image

    folder = tmp_path / 'rec'
    write_folder_recording(folder, [DepthFrame(i, np.full((120, 160), 600 + i, np.uint16),
                                               INTRINSICS) for i in range(12)])
    (folder / 'intrinsics.yaml').unlink()
    for i, path in enumerate(sorted(folder.glob('*.png'))):
        path.rename(folder / f'frame_{i}.png')
    with pytest.raises(ValueError, match='no intrinsics file'):
        FolderRecording(folder)
    (folder / 'intrinsics.yml').write_text(
        'image_width: 160\nimage_height: 120\ncamera_matrix:\n  rows: 3\n  cols: 3\n'
        '  data: [130.0, 0.0, 80.0, 0.0, 130.0, 60.0, 0.0, 0.0, 1.0]\n')
    recording = FolderRecording(folder, fps=10.0)
    assert recording.intrinsics == INTRINSICS
    # Read from a camera_info YAML, the recording can be written again (plain numbers).
    assert write_folder_recording(tmp_path / 'copy', recording) == 12
    # Names that are not nanosecond stamps: frames are stamped by the frame rate, in the
    # order of the numbers in their names (frame_2 before frame_10).
    assert [f.stamp_ns for f in recording][:3] == [0, 100_000_000, 200_000_000]
    assert [int(f.depth[0, 0]) for f in recording] == list(range(600, 612))
    (folder / 'intrinsics.yml').unlink()
    (folder / 'intrinsics.json').write_text('{"fx": 130, "fy": 130, "cx": 80, "cy": 60}')
    with pytest.raises(ValueError, match='missing intrinsics fields'):
        FolderRecording(folder)
    # The intrinsics of the camera's 1280x960 mode on its 160x120 images.
    (folder / 'intrinsics.json').write_text(
        '{"fx": 1040, "fy": 1040, "cx": 640, "cy": 480, "width": 160, "height": 120}')
    with pytest.raises(ValueError, match=r'intrinsics.json: .*principal point \(640, 480\)'):
        FolderRecording(folder)
    # Unusable files (colour, another size, not an image) are skipped, counted and named.
    Image.fromarray(np.zeros((120, 160, 3), np.uint8)).save(folder / 'z0.png')
    Image.fromarray(np.zeros((60, 80), np.uint16)).save(folder / 'z1.png')
    (folder / 'z2.png').write_bytes(b'not a png')
    recording = FolderRecording(folder, intrinsics=INTRINSICS)
    with caplog.at_level(logging.WARNING):
        assert [int(f.depth[0, 0]) for f in recording] == list(range(600, 612))
    assert recording.rejected == 3
    assert 'z0.png' in caplog.text and '16-bit' in caplog.text
    # Not one usable frame (8-bit PNGs) is an error, not an empty recording.
    eight_bit = tmp_path / 'eight_bit'
    eight_bit.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((120, 160), np.uint8)).save(eight_bit / f'{i}.png')
    with pytest.raises(ValueError, match='no usable depth image among 3'):
        list(FolderRecording(eight_bit, intrinsics=INTRINSICS))
    # Intrinsics are checked as written, with the file named.
    (folder / 'intrinsics.json').write_text(
        '{"fx": 130, "fy": null, "cx": 80, "cy": 60, "width": 160.5, "height": 120}')
    with pytest.raises(ValueError, match='intrinsics.json: camera intrinsics: fy'):
        FolderRecording(folder)


def test_a_folder_recording_refuses_stamps_that_do_not_increase(tmp_path):
    frames = [DepthFrame(stamp, np.full((120, 160), 600, np.uint16), INTRINSICS)
              for stamp in (10, 20, 20)]
    with pytest.raises(ValueError, match='stamps must increase'):
        write_folder_recording(tmp_path / 'rec', frames)
    with pytest.raises(ValueError, match='stamps must increase'):
        write_folder_recording(tmp_path / 'neg', [DepthFrame(-5, frames[0].depth, INTRINSICS)])


def test_folder_names_are_nanoseconds_only_with_18_digits_or_more(tmp_path):
    frames = [DepthFrame(stamp, np.full((120, 160), 600, np.uint16), INTRINSICS)
              for stamp in (1_700_000_000_000_000_000, 1_700_000_000_050_000_000)]
    write_folder_recording(tmp_path / 'ns', frames)
    assert FolderRecording(tmp_path / 'ns').stamps_ns == [f.stamp_ns for f in frames]
    # Epoch microseconds (16 digits) are not nanoseconds: stamped by the frame rate.
    for path, micros in zip(sorted((tmp_path / 'ns').glob('*.png')),
                            (1_700_000_000_000_000, 1_700_000_000_050_000)):
        path.rename(path.with_name(f'{micros}.png'))
    assert FolderRecording(tmp_path / 'ns', fps=20.0).stamps_ns == [0, 50_000_000]
