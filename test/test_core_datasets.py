"""Dataset readers on tiny fixture files written in each dataset's own format."""

import os

import numpy as np
from PIL import Image
import pytest
from scipy.io import savemat

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz
from hand_pose_ros.core.datasets import open_dataset
from hand_pose_ros.core.datasets.msra import write_msra_bin
from hand_pose_ros.core.datasets.nyu import write_nyu_depth


def canonical_hand(rng, center=(0.03, -0.02, 0.55)):
    """Return (21, 3) camera-frame joints (metres) spread like a hand around a centre."""
    return np.asarray(center) + rng.uniform(-0.08, 0.08, (21, 3)) * [1.0, 1.0, 0.3]


def layout_from_canonical(joints, layout, num_joints=None, rng=None):
    """Write canonical joints into a dataset's own order (unused dataset joints random)."""
    layout = skeleton.LAYOUTS[layout]
    out = np.full((num_joints or layout.num_joints, 3), 0.5)
    if rng is not None:
        out = rng.uniform(0.4, 0.6, out.shape)
    for canonical, index in enumerate(layout.to_canonical):
        if index >= 0:
            out[index] = joints[canonical]
    return out


def depth_with_marks(intrinsics, joints, value_mm=555):
    """Return a uint16 mm image, background 2000 mm, a 3x3 mark at each joint's pixel."""
    depth = np.full((intrinsics.height, intrinsics.width), 2000, dtype=np.uint16)
    for u, v, _ in uvd_from_xyz(joints, intrinsics):
        ui, vi = int(round(u)), int(round(v))
        depth[vi - 1:vi + 2, ui - 1:ui + 2] = value_mm
    return depth


def check_sample(sample, joints, layout, intrinsics, value_mm=555):
    mask = skeleton.LAYOUTS[layout].canonical_mask
    assert sample.intrinsics == intrinsics
    assert sample.depth_m.dtype == np.float32
    assert sample.depth_m.shape == (intrinsics.height, intrinsics.width)
    np.testing.assert_array_equal(sample.joint_mask, mask)
    np.testing.assert_allclose(sample.joints_xyz[mask], joints[mask], atol=1e-6)
    assert np.all(np.isnan(sample.joints_xyz[~mask]))
    # Every labelled joint lands on the depth mark drawn at its pixel: axes and units agree.
    for u, v, _ in uvd_from_xyz(sample.joints_xyz[mask], intrinsics):
        assert sample.depth_m[int(round(v)), int(round(u))] == pytest.approx(value_mm / 1000)
    np.testing.assert_allclose(sample.center_xyz, joints[mask].mean(axis=0), atol=1e-6)


def write_png16(path, depth_mm):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(depth_mm).save(path)
    assert np.asarray(Image.open(path)).dtype == np.uint16


def test_nyu_reader(tmp_path):
    rng = np.random.default_rng(0)
    cam = CameraIntrinsics.from_preset('nyu')
    hands = [canonical_hand(rng), canonical_hand(rng, (-0.05, 0.03, 0.7))]
    joint_xyz = np.zeros((3, 2, 36, 3))
    for frame, joints in enumerate(hands):
        nyu14 = layout_from_canonical(joints, 'nyu14')
        joint_xyz[0, frame] = rng.uniform(-100, 100, (36, 3))
        joint_xyz[0, frame, list(skeleton.NYU14_FROM_NYU36)] = nyu14 * [1000, -1000, 1000]
        write_nyu_depth(tmp_path / f'depth_1_{frame + 1:07d}.png', depth_with_marks(cam, joints))
    savemat(tmp_path / 'joint_data.mat', {'joint_xyz': joint_xyz})
    dataset = open_dataset('nyu', str(tmp_path))
    assert len(dataset) == 2
    for frame, joints in enumerate(hands):
        check_sample(dataset[frame], joints, 'nyu14', cam)
    assert dataset[-1].name == 'depth_1_0000002.png'
    with pytest.raises(IndexError):
        dataset[2]
    # The dataset's own folder is read as its test split.
    os.makedirs(tmp_path / 'nyu' / 'test')
    for name in os.listdir(tmp_path):
        if name != 'nyu':
            os.rename(tmp_path / name, tmp_path / 'nyu' / 'test' / name)
    assert len(open_dataset('nyu', str(tmp_path / 'nyu'))) == 2


def test_nyu_depth_packing_round_trip(tmp_path):
    from hand_pose_ros.core.datasets.nyu import read_nyu_depth
    depth = np.array([[0, 1, 255, 256], [1000, 4095, 65535, 300]], dtype=np.uint16)
    write_nyu_depth(tmp_path / 'd.png', depth)
    rgb = np.asarray(Image.open(tmp_path / 'd.png'))
    assert rgb[1, 0].tolist() == [0, 1000 // 256, 1000 % 256]
    np.testing.assert_array_equal(read_nyu_depth(tmp_path / 'd.png'), depth)


def test_icvl_reader(tmp_path):
    rng = np.random.default_rng(1)
    cam = CameraIntrinsics.from_preset('icvl')
    joints = canonical_hand(rng, (0.0, 0.01, 0.4))
    uvd = uvd_from_xyz(layout_from_canonical(joints, 'icvl'), cam) * [1, 1, 1000]
    name = '201403121135/image_0000.png'
    write_png16(str(tmp_path / 'Depth' / name), depth_with_marks(cam, joints))
    with open(tmp_path / 'labels.txt', 'w') as stream:
        stream.write(name + ' ' + ' '.join(f'{v:.6f}' for v in uvd.ravel()) + '\n\n')
    dataset = open_dataset('icvl', str(tmp_path))
    assert len(dataset) == 1
    check_sample(dataset[0], joints, 'icvl', cam)
    # Several label files (the test set comes in two), read in the order given.
    (tmp_path / 'test_seq_2.txt').write_text((tmp_path / 'labels.txt').read_text())
    both = open_dataset('icvl', str(tmp_path), labels=['labels.txt', 'test_seq_2.txt'])
    assert len(both) == 2
    check_sample(both[1], joints, 'icvl', cam)
    with pytest.raises(ValueError, match="no label file 'test_seq_1.txt'"):
        open_dataset('icvl', str(tmp_path), labels=['test_seq_1.txt'])
    # By default the test set, where the folder has it (here only its second file).
    assert open_dataset('icvl', str(tmp_path)).labels == ['test_seq_2.txt']
    # 32001 is ICVL's "no depth", not a wall 32 m away.
    depth = depth_with_marks(cam, joints)
    depth[:5] = 32001
    write_png16(str(tmp_path / 'Depth' / name), depth)
    sample = open_dataset('icvl', str(tmp_path))[0]
    assert np.isnan(sample.depth_m[:5]).all() and np.isfinite(sample.depth_m[5:]).any()


def test_msra_reader(tmp_path):
    rng = np.random.default_rng(2)
    cam = CameraIntrinsics.from_preset('msra')
    gesture = tmp_path / 'P0' / '1'
    gesture.mkdir(parents=True)
    hands = [canonical_hand(rng, (0.0, 0.0, 0.35)), canonical_hand(rng, (0.02, 0.0, 0.4))]
    rows = []
    for frame, joints in enumerate(hands):
        depth = depth_with_marks(cam, joints).astype(np.float32)
        depth[depth == 2000] = 0.0
        write_msra_bin(gesture / f'{frame:06d}_depth.bin', depth, (60, 40, 260, 200))
        # The release's axes: y up and z negative (towards the viewer).
        rows.append(layout_from_canonical(joints, 'msra') * [1000, -1000, -1000])
    with open(gesture / 'joint.txt', 'w') as stream:
        stream.write(f'{len(rows)}\n')
        for row in rows:
            stream.write(' '.join(f'{v:.5f}' for v in row.ravel()) + '\n')
    dataset = open_dataset('msra', str(tmp_path))
    assert len(dataset) == 2
    # One subject named alone (--option subjects=P0 gives a string).
    assert len(open_dataset('msra', str(tmp_path), subjects='P0')) == 2
    for frame, joints in enumerate(hands):
        sample = dataset[frame]
        check_sample(sample, joints, 'msra', cam)
        # Outside the stored bounding box the image is invalid.
        assert np.isnan(sample.depth_m[0, 0]) and np.isnan(sample.depth_m[239, 319])


def test_msra_bad_file(tmp_path):
    from hand_pose_ros.core.datasets.msra import read_msra_bin
    header = np.array([320, 240, 10, 10, 20, 20], dtype='<i4').tobytes()
    (tmp_path / 'short.bin').write_bytes(header + b'\0' * 8)
    with pytest.raises(ValueError, match='expected 100 float32'):
        read_msra_bin(tmp_path / 'short.bin')
    (tmp_path / 'box.bin').write_bytes(np.array([320, 240, 10, 10, 400, 20], '<i4').tobytes())
    with pytest.raises(ValueError, match='does not fit'):
        read_msra_bin(tmp_path / 'box.bin')


def test_hands2017_reader(tmp_path):
    rng = np.random.default_rng(3)
    cam = CameraIntrinsics.from_preset('hands2017')
    joints = canonical_hand(rng, (-0.02, 0.03, 0.45))
    write_png16(str(tmp_path / 'images' / 'image_D00000001.png'), depth_with_marks(cam, joints))
    values = layout_from_canonical(joints, 'hands2017') * 1000
    with open(tmp_path / 'Training_Annotation.txt', 'w') as stream:
        stream.write('image_D00000001.png\t' + '\t'.join(f'{v:.4f}' for v in values.ravel()))
    dataset = open_dataset('bighand', str(tmp_path))
    check_sample(dataset[0], joints, 'hands2017', cam)
    # All 21 joints of this layout map onto the canonical skeleton.
    assert dataset[0].joint_mask.all()


def test_fpha_reader(tmp_path):
    rng = np.random.default_rng(4)
    cam = CameraIntrinsics.from_preset('sr300')
    sequence = os.path.join('Subject_1', 'open_juice_bottle', '2')
    label_dir = tmp_path / 'Hand_pose_annotation_v1' / sequence
    label_dir.mkdir(parents=True)
    hands = [canonical_hand(rng, (0.0, 0.05, 0.35)) for _ in range(2)]
    with open(label_dir / 'skeleton.txt', 'w') as stream:
        for frame, joints in enumerate(hands):
            write_png16(str(tmp_path / 'Video_files' / sequence / 'depth' /
                            f'depth_{frame:04d}.png'), depth_with_marks(cam, joints))
            values = layout_from_canonical(joints, 'fpha') * 1000
            stream.write(f'{frame} ' + ' '.join(f'{v:.4f}' for v in values.ravel()) + '\n')
    dataset = open_dataset('fpha', str(tmp_path))
    assert len(dataset) == 2
    # One subject named alone is that subject, not the letters of its name.
    assert len(open_dataset('fpha', str(tmp_path), subjects='Subject_1')) == 2
    with pytest.raises(ValueError, match=r"skeleton.txt of subjects \['Subject'\]"):
        open_dataset('fpha', str(tmp_path), subjects='Subject')
    for frame, joints in enumerate(hands):
        check_sample(dataset[frame], joints, 'fpha', cam)
    assert [s.name.endswith(f'depth_{i:04d}.png') for i, s in enumerate(dataset)] == [True] * 2
    # The benchmark's readme names the annotation folder Hand_pose_annotation_v1_1.
    os.rename(tmp_path / 'Hand_pose_annotation_v1', tmp_path / 'Hand_pose_annotation_v1_1')
    assert len(open_dataset('fpha', str(tmp_path))) == 2
    # A frame missing from the release is skipped and counted; none readable is an error.
    os.remove(tmp_path / 'Video_files' / sequence / 'depth' / 'depth_0000.png')
    dataset = open_dataset('fpha', str(tmp_path))
    assert [s.name for s in dataset] == [dataset._names[1]] and dataset.skipped == 1
    # Training reads frames by index: a missing one is skipped there too.
    from hand_pose_ros.core.crop import CropSpec
    from hand_pose_ros.core.training import DatasetCrops

    crops = DatasetCrops(CropSpec(input_size=32), 0, 'fpha', str(tmp_path))
    for _ in range(4):
        assert crops.next_crop()[0].patch.shape == (32, 32)
    assert crops.unreadable == {0}
    os.remove(tmp_path / 'Video_files' / sequence / 'depth' / 'depth_0001.png')
    with pytest.raises(ValueError, match='none of its 2 frames could be read'):
        list(open_dataset('fpha', str(tmp_path)))


@pytest.mark.parametrize('name, content, message', [
    ('icvl', 'a.png 1 2 3\n', 'expected 48 numbers'),
    ('hands2017', 'a.png ' + ' '.join(['x'] * 63) + '\n', 'must be numbers'),
    ('icvl', '\n', 'no labelled frames'),
])
def test_bad_label_files(tmp_path, name, content, message):
    label = {'icvl': 'labels.txt', 'hands2017': 'Training_Annotation.txt'}[name]
    (tmp_path / label).write_text(content)
    with pytest.raises(ValueError, match=message):
        open_dataset(name, str(tmp_path))


def test_label_files_parse_alike_on_the_fast_and_the_line_by_line_path(tmp_path, monkeypatch):
    from hand_pose_ros.core.datasets import base

    rng = np.random.default_rng(5)
    values = rng.uniform(-500, 900, (7, 6)).round(4)
    lines = [f'frame_{i}.png\t' + '\t'.join(map(str, row)) + ' 1 2\r\n'   # extra columns
             for i, row in enumerate(values)]
    (tmp_path / 'labels.txt').write_text(''.join(lines[:3]) + '\n' + ''.join(lines[3:]))
    fast = base._parse_label_rows_fast(tmp_path / 'labels.txt', 6, name_column=True)
    assert base.parse_label_rows(tmp_path / 'labels.txt', 6, name_column=True)[0] == fast[0]

    def irregular(*args):
        raise ValueError('take the line-by-line path')

    monkeypatch.setattr(base, '_parse_label_rows_fast', irregular)
    slow = base.parse_label_rows(tmp_path / 'labels.txt', 6, name_column=True)
    assert fast[0] == slow[0] == [f'frame_{i}.png' for i in range(7)]
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_array_equal(fast[1], values)


def test_bad_roots(tmp_path):
    with pytest.raises(ValueError, match='unknown dataset'):
        open_dataset('kinect-magic', str(tmp_path))
    with pytest.raises(ValueError, match='is not a directory'):
        open_dataset('nyu', str(tmp_path / 'missing'))
    with pytest.raises(ValueError, match='no joint_data.mat'):
        open_dataset('nyu', str(tmp_path))
    with pytest.raises(ValueError, match='holds no'):
        open_dataset('msra', str(tmp_path))


def test_wrong_image_size_is_reported(tmp_path):
    write_png16(str(tmp_path / 'images' / 'a.png'), np.zeros((10, 10), dtype=np.uint16))
    (tmp_path / 'Training_Annotation.txt').write_text('a.png ' + ' '.join(['500'] * 63))
    with pytest.raises(ValueError, match='image is 10x10 but camera intrinsics are 640x480'):
        open_dataset('hands2017', str(tmp_path))[0]
    # An 8-bit preview is not depth in millimetres.
    from PIL import Image

    Image.fromarray(np.full((480, 640), 90, np.uint8)).save(tmp_path / 'images' / 'a.png')
    with pytest.raises(ValueError, match='must be 16-bit single channel'):
        open_dataset('hands2017', str(tmp_path))[0]


def test_synthetic_folder_reader(tmp_path, caplog):
    from hand_pose_ros.core.synth import SceneConfig
    from hand_pose_ros.core.synth.dataset import write_dataset
    from hand_pose_ros.core.synth.generator import SyntheticGenerator
    cam = CameraIntrinsics.from_preset('sr300')
    generator = SyntheticGenerator(cam, seed=7)
    frames = [generator.sample_frame() for _ in range(2)]
    write_dataset(str(tmp_path), frames, cam)
    dataset = open_dataset('synthetic', str(tmp_path))
    assert 'second hand' not in caplog.text
    # A second hand the folder does not label is said, not silently counted as false.
    two = SyntheticGenerator(cam, scene=SceneConfig(second_hand_prob=1.0), seed=7)
    write_dataset(str(tmp_path / 'two'), [two.sample_frame() for _ in range(2)], cam)
    open_dataset('synthetic', str(tmp_path / 'two'))
    assert 'of 2 frames show a second hand that the folder does not label' in caplog.text
    assert len(dataset) == 2 and dataset.intrinsics == cam
    for frame, sample in zip(frames, dataset):
        assert sample.joint_mask.all()
        np.testing.assert_allclose(sample.joints_xyz, frame.hands[0].joints_xyz)
        np.testing.assert_array_equal(np.isnan(sample.depth_m), frame.depth_mm == 0)
        np.testing.assert_allclose(sample.depth_m[frame.depth_mm > 0],
                                   frame.depth_mm[frame.depth_mm > 0] / 1000.0, rtol=1e-6)
    with pytest.raises(ValueError, match='not a synthetic dataset folder'):
        open_dataset('synthetic', str(tmp_path / 'depth'))
