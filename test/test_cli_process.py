"""hand_pose_process: a recording through the estimator, tracker and filter into a pose bag."""

import sys

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import JointState, PointCloud2

from hand_pose_ros.cli import process
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.recordings import DepthFrame, write_folder_recording
from hand_pose_ros.core.selftrain import render_sequence
from hand_pose_ros.ros.bags import BagRecording, DepthBagWriter
from hand_pose_ros.ros.messages import hands_from_cloud

T0_NS = 1_700_000_000 * 10 ** 9


@pytest.fixture(scope='module')
def sequence():
    """Return a labelled 24-frame motion sequence of one hand (30 Hz)."""
    return render_sequence(24, seed=11)


def depth_frames(sequence, frame_id=''):
    return [DepthFrame(T0_NS + int(round(f.stamp_s * 1e9)), f.depth_mm, f.intrinsics, frame_id)
            for f in sequence]


def read_bag(path):
    """Return {topic: [(bag stamp ns, CDR bytes)]} of a rosbag2."""
    topics = {}
    with Reader(path) as reader:
        for connection, stamp_ns, raw in reader.messages():
            topics.setdefault(connection.topic, []).append((stamp_ns, bytes(raw)))
    return topics


def test_a_bag_becomes_a_bag_of_every_frame_s_poses(tmp_path, sequence, capsys):
    with DepthBagWriter(tmp_path / 'in', frame_id='wrist_cam_optical') as writer:
        for frame in depth_frames(sequence):
            writer.write(frame)
    assert process.main([str(tmp_path / 'in'), '-o', str(tmp_path / 'out')]) == 0
    assert 'hand_pose_process: 24 frames' in capsys.readouterr().out
    topics = read_bag(tmp_path / 'out')
    assert set(topics) == {'hand_pose/raw_keypoints', 'hand_pose/keypoints', 'hand_pose/joints',
                           'hand_pose/palm_pose', 'hand_pose/joint_states', '/tf'}
    stamps = [T0_NS + int(round(f.stamp_s * 1e9)) for f in sequence]
    # Every frame, none dropped, in order, each message stamped with its image's stamp.
    for topic in ('hand_pose/raw_keypoints', 'hand_pose/keypoints', 'hand_pose/joint_states'):
        assert [stamp for stamp, _ in topics[topic]] == stamps, topic
    clouds = [deserialize_message(data, PointCloud2) for _, data in topics['hand_pose/keypoints']]
    assert all(c.header.frame_id == 'wrist_cam_optical' for c in clouds)
    assert [c.header.stamp.sec * 10 ** 9 + c.header.stamp.nanosec for c in clouds] == stamps
    # The filtered hand is where the truth is (a real model on a clean synthetic hand).
    errors = []
    for cloud, frame in zip(clouds, sequence):
        shown = [h for h in hands_from_cloud(cloud) if h['valid'].all()]
        if shown:
            errors.append(np.linalg.norm(shown[0]['keypoints_xyz'] - frame.hands[0].joints_xyz,
                                         axis=1).mean())
    assert len(errors) >= 20 and np.mean(errors) < 0.03
    names = deserialize_message(topics['hand_pose/joint_states'][-1][1], JointState).name
    assert len(names) == 20


def test_a_png_folder_with_the_file_s_filter_settings(tmp_path, sequence, capsys):
    write_folder_recording(tmp_path / 'pngs', depth_frames(sequence[:6]))
    params = tmp_path / 'params.yaml'
    params.write_text('/**/hand_filter_node:\n  ros__parameters:\n    output:\n'
                      '      tf_prefix: cam9/\n    filter:\n      tracking:\n'
                      '        min_detections: 1\n')
    assert process.main([str(tmp_path / 'pngs'), '-o', str(tmp_path / 'out'), '--storage',
                         'sqlite3', '--params-file', str(params), '--markers', '--frame-id',
                         'my_depth_frame', '--with-input']) == 0
    topics = read_bag(tmp_path / 'out')
    assert len(topics['hand_pose/markers']) == 6
    # The input in the same bag, readable as a recording again, each frame with its poses.
    copied = list(BagRecording(tmp_path / 'out'))
    assert [f.stamp_ns for f in copied] == [s for s, _ in topics['hand_pose/keypoints']]
    assert all(f.frame_id == 'my_depth_frame' for f in copied)
    np.testing.assert_array_equal(copied[3].depth, sequence[3].depth_mm)
    # min_detections 1: the hand is shown from the first frame.
    assert len(topics['/tf']) == 6
    from tf2_msgs.msg import TFMessage
    tf = deserialize_message(topics['/tf'][0][1], TFMessage)
    assert tf.transforms[0].header.frame_id == 'my_depth_frame'
    assert all(t.child_frame_id.startswith('cam9/hand_') for t in tf.transforms)


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, sequence, capsys):
    write_folder_recording(tmp_path / 'pngs', depth_frames(sequence[:2]))
    (tmp_path / 'taken').mkdir()
    typo = tmp_path / 'typo.yaml'
    typo.write_text('/**/hand_pose_node:\n  ros__parameters:\n    localizer:\n'
                    '      max_hand: 3\n')
    cases = [
        ([str(tmp_path / 'pngs'), '-o', str(tmp_path / 'taken')], 'exists: name a new folder'),
        ([str(tmp_path / 'pngs'), '-o', str(tmp_path / 'out'), '--params-file', str(typo)],
         "unknown parameter 'localizer.max_hand'"),
        ([str(tmp_path / 'none'), '-o', str(tmp_path / 'out')], 'none'),
        ([str(tmp_path / 'pngs'), '-o', str(tmp_path / 'out'), '--model', 'no_such_model'],
         'no_such_model'),
    ]
    # A model with a colour input: recordings are depth only.
    import torch

    from hand_pose_ros.core import export, model_io
    from hand_pose_ros.core.crop import CropSpec
    from hand_pose_ros.core.models import build_model

    torch.manual_seed(0)
    rgb = model_io.save_model(build_model('joint_groups_rgb', width=0.125, input_size=64),
                              tmp_path / 'rgb', 'rgb', extra={'crop': CropSpec(
                                  input_size=64, cube_size_m=(0.2, 0.2, 0.3)).to_dict()})
    export.export_card(rgb)
    cases.append(([str(tmp_path / 'pngs'), '-o', str(tmp_path / 'out'), '--model', str(rgb)],
                  'takes a colour image; recordings here are depth only'))
    for argv, message in cases:
        assert process.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith('hand_pose_process: error: ') and message in err, err
        assert err.count('\n') == 1
    assert not (tmp_path / 'out').exists()


def test_repeated_stamps_are_skipped_and_an_unusable_recording_leaves_no_bag(
        tmp_path, sequence, monkeypatch, capsys):
    frames = depth_frames(sequence[:5])
    with DepthBagWriter(tmp_path / 'in') as writer:
        for frame in frames[:3] + [frames[2]] + frames[3:]:   # frame 2 sent twice
            writer.write(frame)
    assert process.main([str(tmp_path / 'in'), '-o', str(tmp_path / 'out')]) == 0
    assert 'and 1 repeated stamps skipped' in capsys.readouterr().out
    topics = read_bag(tmp_path / 'out')
    for topic in ('hand_pose/raw_keypoints', '/tf'):
        stamps = [stamp for stamp, _ in topics[topic]]
        assert len(stamps) == len(set(stamps)), topic
    assert len(topics['hand_pose/keypoints']) == 5
    # Every frame unusable (camera_info of another image size): an error, and no bag left.
    wrong = CameraIntrinsics(600.0, 600.0, 900.0, 500.0, 1280, 960)
    with DepthBagWriter(tmp_path / 'bad') as writer:
        for frame in frames[:3]:
            writer.write(DepthFrame(frame.stamp_ns, frame.depth, wrong))
    assert process.main([str(tmp_path / 'bad'), '-o', str(tmp_path / 'out2')]) == 1
    assert 'no usable frame' in capsys.readouterr().err
    assert not (tmp_path / 'out2').exists()
    # Without rosbags, the error comes before the model loads.
    monkeypatch.setitem(sys.modules, 'rosbags.rosbag2', None)
    monkeypatch.setattr('hand_pose_ros.ros.hand_pose_node.load_node_estimator',
                        lambda values: pytest.fail('model loaded before the rosbags check'))
    assert process.main([str(tmp_path / 'in'), '-o', str(tmp_path / 'out3')]) == 2
    assert 'pip install rosbags' in capsys.readouterr().err


def test_an_interrupted_run_keeps_the_frames_it_wrote(tmp_path, sequence, monkeypatch, capsys):
    write_folder_recording(tmp_path / 'pngs', depth_frames(sequence[:6]))
    calls = {'n': 0}
    write = process.PoseBagWriter.write

    def interrupted(self, *args):
        calls['n'] += 1
        if calls['n'] == 20:
            raise KeyboardInterrupt
        write(self, *args)

    monkeypatch.setattr(process.PoseBagWriter, 'write', interrupted)
    assert process.main([str(tmp_path / 'pngs'), '-o', str(tmp_path / 'out')]) == 130
    err = capsys.readouterr().err
    assert 'interrupted after' in err and 'holds them' in err
    topics = read_bag(tmp_path / 'out')
    assert 1 <= len(topics['hand_pose/raw_keypoints']) < 6
