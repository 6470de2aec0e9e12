"""rosbag2 depth recordings: write and read back (MCAP and sqlite3, 16UC1 and 32FC1), pairing."""

import logging

import numpy as np
import pytest

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.recordings import DepthFrame
from hand_pose_ros.ros.bags import BAG_VERSION, BagRecording, DepthBagWriter, write_depth_bag

CAMERA_A = CameraIntrinsics(100.0, 101.0, 40.0, 30.0, 80, 60)
CAMERA_B = CameraIntrinsics(90.0, 90.0, 39.5, 29.5, 80, 60)
T0_NS = 1_700_000_000 * 10 ** 9


def depth_mm(i):
    depth = (np.arange(80 * 60, dtype=np.uint16).reshape(60, 80) % 900) + 300 + i
    depth[5, 7] = 0  # invalid pixel
    return depth.astype(np.uint16)


def frames(count=6, switch_at=None):
    return [DepthFrame(T0_NS + i * 33_333_333, depth_mm(i),
                       CAMERA_B if switch_at is not None and i >= switch_at else CAMERA_A)
            for i in range(count)]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_round_trip_keeps_depth_stamps_and_intrinsics(tmp_path, storage, encoding):
    written = frames(switch_at=3)
    assert write_depth_bag(tmp_path / 'bag', written, storage=storage, encoding=encoding) == 6
    recording = BagRecording(tmp_path / 'bag')
    assert len(recording) == 6
    assert recording.depth_topic == '/camera/depth/image_raw'
    assert recording.info_topic == '/camera/depth/camera_info'
    read = list(recording)
    assert [f.stamp_ns for f in read] == [f.stamp_ns for f in written]
    assert [f.intrinsics for f in read] == [f.intrinsics for f in written]
    for original, frame in zip(written, read):
        if encoding == '16UC1':
            assert frame.depth.dtype == np.uint16
            np.testing.assert_array_equal(frame.depth, original.depth)
        else:
            assert frame.depth.dtype == np.float32
            assert np.isnan(frame.depth[5, 7])
            valid = original.depth > 0
            np.testing.assert_allclose(frame.depth[valid], original.depth[valid] * 1e-3,
                                       rtol=1e-6)
    # The recording can be iterated again (the self-training loop reads it per round).
    assert len(list(recording)) == 6


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_infos_recorded_after_their_image_still_pair_by_stamp(tmp_path, storage):
    written = frames(switch_at=2)
    with DepthBagWriter(tmp_path / 'bag', storage=storage) as writer:
        for frame in written:
            writer.write(frame, info_first=False)
    read = list(BagRecording(tmp_path / 'bag'))
    assert [f.intrinsics for f in read] == [f.intrinsics for f in written]
    assert [f.stamp_ns for f in read] == [f.stamp_ns for f in written]


def test_images_without_any_camera_info_are_skipped(tmp_path):
    from rosbags.typesys import get_typestore, Stores

    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types
    # The first two images are recorded without camera_info (the camera started late).
    with DepthBagWriter(tmp_path / 'bag', storage='mcap') as writer:
        for i, frame in enumerate(frames(4)):
            if i >= 2:
                writer.write(frame)
                continue
            stamp = types['builtin_interfaces/msg/Time'](
                sec=frame.stamp_ns // 10 ** 9, nanosec=frame.stamp_ns % 10 ** 9)
            msg = types['sensor_msgs/msg/Image'](
                header=types['std_msgs/msg/Header'](stamp=stamp, frame_id='cam'), height=60,
                width=80, encoding='16UC1', is_bigendian=False, step=160,
                data=frame.depth.view(np.uint8).ravel())
            writer.writer.write(writer.image_connection, frame.stamp_ns,
                                store.serialize_cdr(msg, 'sensor_msgs/msg/Image'))
    recording = BagRecording(tmp_path / 'bag', lookahead=0)
    read = list(recording)
    assert [f.stamp_ns for f in read] == [f.stamp_ns for f in frames(4)[2:]]
    assert recording.unpaired == 2


def test_unusable_frames_are_skipped_and_counted(tmp_path):
    from rosbags.typesys import get_typestore, Stores

    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types
    written = frames(5)
    with DepthBagWriter(tmp_path / 'bag', storage='sqlite3') as writer:
        for i, frame in enumerate(written):
            if i not in (1, 2, 3):
                writer.write(frame)
                continue
            header = types['std_msgs/msg/Header'](stamp=types['builtin_interfaces/msg/Time'](
                sec=frame.stamp_ns // 10 ** 9, nanosec=frame.stamp_ns % 10 ** 9),
                frame_id='cam')
            image = types['sensor_msgs/msg/Image'](
                header=header, height=60, width=80, encoding='16UC1', is_bigendian=False,
                step=160, data=frame.depth.view(np.uint8).ravel())
            info = types['sensor_msgs/msg/CameraInfo'](
                header=header, height=60, width=80, distortion_model='plumb_bob',
                d=np.zeros(5), k=frame.intrinsics.matrix.ravel(), r=np.eye(3).ravel(),
                p=np.zeros(12), binning_x=0, binning_y=0,
                roi=types['sensor_msgs/msg/RegionOfInterest'](
                    x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            if i == 1:
                image.encoding = 'rgb8'            # not a depth encoding
            elif i == 2:
                info.height, info.width = 120, 160  # a camera_info of another image size
            else:
                info.k = np.zeros(9)               # no camera matrix
            for connection, msg in ((writer.info_connection, info),
                                    (writer.image_connection, image)):
                writer.writer.write(connection, frame.stamp_ns,
                                    store.serialize_cdr(msg, connection.msgtype))
    recording = BagRecording(tmp_path / 'bag')
    read = list(recording)
    assert [f.stamp_ns for f in read] == [written[i].stamp_ns for i in (0, 4)]
    np.testing.assert_array_equal(read[1].depth, written[4].depth)
    assert recording.rejected == 3 and recording.unpaired == 0


def test_topic_choice_and_bad_paths_raise_clear_errors(tmp_path, caplog):
    with DepthBagWriter(tmp_path / 'two', depth_topic='/left/image',
                        info_topic='/left/camera_info') as writer:
        writer.writer.add_connection('/right/image', 'sensor_msgs/msg/Image',
                                     typestore=writer.typestore)
        writer.write(frames(1)[0])
    with pytest.raises(ValueError, match='cannot choose'):
        BagRecording(tmp_path / 'two')
    recording = BagRecording(tmp_path / 'two', depth_topic='/left/image')
    assert recording.info_topic == '/left/camera_info'
    assert len(list(recording)) == 1
    with pytest.raises(ValueError, match='no sensor_msgs/msg/Image topic'):
        BagRecording(tmp_path / 'two', depth_topic='/missing')
    with pytest.raises(ValueError, match='metadata.yaml'):
        BagRecording(tmp_path)
    # The only camera_info topic, of another camera than the depth topic's: used, with a
    # warning naming both.
    with DepthBagWriter(tmp_path / 'other', depth_topic='/cam/depth/image_raw',
                        info_topic='/cam/color/camera_info') as writer:
        writer.write(frames(1)[0])
    with caplog.at_level(logging.WARNING):
        assert BagRecording(tmp_path / 'other').info_topic == '/cam/color/camera_info'
    assert '/cam/depth/camera_info' in caplog.text
    # No camera_info topic at all: said so, rather than 'cannot choose among []'.
    from rosbags.rosbag2 import StoragePlugin, Writer

    with Writer(tmp_path / 'images', version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP) \
            as bare:
        bare.add_connection('/cam/depth/image_raw', 'sensor_msgs/msg/Image',
                            typestore=writer.typestore)
    with pytest.raises(ValueError, match='bag has no sensor_msgs/msg/CameraInfo topic'):
        BagRecording(tmp_path / 'images')
    with pytest.raises(ValueError, match='storage'):
        DepthBagWriter(tmp_path / 'x', storage='rosbag1')
    with pytest.raises(ValueError, match='encoding'):
        DepthBagWriter(tmp_path / 'y', encoding='8UC1')


def test_a_damaged_bag_is_a_value_error_naming_it(tmp_path):
    write_depth_bag(tmp_path / 'bag', frames(), storage='mcap')
    (mcap,) = (tmp_path / 'bag').glob('*.mcap')
    mcap.write_bytes(mcap.read_bytes()[:2000])          # cut short: no summary, no end magic
    with pytest.raises(ValueError, match='bag: unreadable rosbag2'):
        list(BagRecording(tmp_path / 'bag'))
    write_depth_bag(tmp_path / 'db', frames(), storage='sqlite3')
    (db3,) = (tmp_path / 'db').glob('*.db3')
    data = bytearray(db3.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = b'\xff' * 4096
    db3.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='db: unreadable rosbag2'):
        list(BagRecording(tmp_path / 'db'))
    (tmp_path / 'bag' / 'metadata.yaml').write_text('rosbag2_bagfile_information: [\n')
    with pytest.raises(ValueError, match=r'bag: unreadable rosbag2 \([^\n]*\)$'):
        BagRecording(tmp_path / 'bag')
