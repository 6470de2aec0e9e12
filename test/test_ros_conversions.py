import sys

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.ros.conversions import (
    array_from_image, camera_info_from_intrinsics, color_from_image, depth_from_image,
    image_from_array, intrinsics_from_camera_info)

RNG = np.random.default_rng(7)
SAMPLES = {
    '16UC1': RNG.integers(0, 4000, size=(5, 7)).astype(np.uint16),
    'mono16': RNG.integers(0, 4000, size=(5, 7)).astype(np.uint16),
    '32FC1': RNG.uniform(0.2, 2.0, size=(5, 7)).astype(np.float32),
    'rgb8': RNG.integers(0, 255, size=(5, 7, 3)).astype(np.uint8),
    'bgr8': RNG.integers(0, 255, size=(5, 7, 3)).astype(np.uint8),
    'mono8': RNG.integers(0, 255, size=(5, 7)).astype(np.uint8),
}


def padded_message(array, encoding, pad_bytes, big_endian):
    """Build an Image by hand with row padding and the requested byte order."""
    order = '>' if big_endian else '<'
    typed = array.astype(array.dtype.newbyteorder(order))
    row = typed.reshape(array.shape[0], -1).view(np.uint8).reshape(array.shape[0], -1)
    rows = np.concatenate([row, np.full((row.shape[0], pad_bytes), 0xAB, np.uint8)], axis=1)
    msg = Image(height=array.shape[0], width=array.shape[1], encoding=encoding,
                is_bigendian=big_endian, step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


@pytest.mark.parametrize('encoding', sorted(SAMPLES))
def test_round_trip_every_encoding(encoding):
    array = SAMPLES[encoding]
    msg = image_from_array(array, encoding)
    assert msg.is_bigendian == (sys.byteorder == 'big')
    np.testing.assert_array_equal(array_from_image(msg), array)


@pytest.mark.parametrize('encoding', sorted(SAMPLES))
@pytest.mark.parametrize('pad_bytes', [0, 2, 3, 8])
@pytest.mark.parametrize('big_endian', [False, True])
def test_padded_rows_and_byte_order(encoding, pad_bytes, big_endian):
    array = SAMPLES[encoding]
    out = array_from_image(padded_message(array, encoding, pad_bytes, big_endian))
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_depth_view_shares_the_message_buffer():
    msg = padded_message(SAMPLES['16UC1'], '16UC1', 4, sys.byteorder == 'big')
    depth = depth_from_image(msg)
    assert depth.dtype == np.uint16
    assert np.shares_memory(depth, np.frombuffer(msg.data, np.uint8))


def test_color_encodings_become_rgb():
    rgb = SAMPLES['rgb8']
    np.testing.assert_array_equal(color_from_image(image_from_array(rgb[..., ::-1], 'bgr8')), rgb)
    gray = color_from_image(image_from_array(SAMPLES['mono8'], 'mono8'))
    assert gray.shape == (5, 7, 3) and (gray[..., 0] == SAMPLES['mono8']).all()


def make_depth_msg(**fields):
    msg = image_from_array(SAMPLES['16UC1'], '16UC1')
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize('fields, message', [
    ({'encoding': 'rgb8'}, "unsupported image encoding 'rgb8'"),
    ({'encoding': ''}, "unsupported image encoding ''"),
    ({'encoding': '8UC3'}, 'unsupported image encoding'),
    ({'width': 0}, 'zero size'),
    ({'height': 0, 'data': b''}, 'zero size'),
    ({'step': 13}, 'step 13 is smaller than a row of 14 bytes'),
    ({'data': b'\x00' * 10}, 'image data has 10 bytes, expected'),
    ({'data': b'\x00' * 100}, 'image data has 100 bytes, expected'),
])
def test_bad_depth_messages_raise_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        depth_from_image(make_depth_msg(**fields))


def test_size_limit_is_enforced_before_reading():
    msg = Image(height=100000, width=100000, encoding='16UC1', step=200000)
    with pytest.raises(ValueError, match='exceeds the limit'):
        depth_from_image(msg)
    with pytest.raises(ValueError, match='exceeds the limit of 20 pixels'):
        depth_from_image(make_depth_msg(), max_pixels=20)


def test_camera_info_round_trip_and_rejections():
    cam = CameraIntrinsics.from_preset('d435_848x480')
    info = camera_info_from_intrinsics(cam)
    assert intrinsics_from_camera_info(info) == cam
    with pytest.raises(ValueError, match='all zeros'):
        intrinsics_from_camera_info(CameraInfo(width=640, height=480))
    bad = camera_info_from_intrinsics(cam)
    bad.p[0] = float('nan')
    with pytest.raises(ValueError, match='P contains NaN or inf'):
        intrinsics_from_camera_info(bad)
    bad.p = [0.0] * 12  # P not set: K
    bad.k[0] = float('nan')
    with pytest.raises(ValueError, match='K contains NaN or inf'):
        intrinsics_from_camera_info(bad)
    # K copied column-major (an Eigen data() copy): cx and cy would read as 0.
    bad.k = np.array(camera_info_from_intrinsics(cam).k).reshape(3, 3).T.ravel().tolist()
    with pytest.raises(ValueError, match='K is not a camera matrix'):
        intrinsics_from_camera_info(bad)
    bad.k = camera_info_from_intrinsics(cam).k
    bad.k[0] = -400.0
    with pytest.raises(ValueError, match='focal lengths must be positive'):
        intrinsics_from_camera_info(bad)
    bad = camera_info_from_intrinsics(cam)
    bad.width = 0
    with pytest.raises(ValueError, match='width must be a positive integer'):
        intrinsics_from_camera_info(bad)
    # The calibration of the 1280x720 stream on the 424x240 one.
    bad = camera_info_from_intrinsics(CameraIntrinsics(640.0, 640.0, 641.0, 362.0, 1280, 720))
    bad.width, bad.height = 424, 240
    with pytest.raises(ValueError, match=r'principal point at \(641, 362\), outside the 424x240'):
        intrinsics_from_camera_info(bad)


def test_camera_info_is_read_as_its_message_defines_it():
    info = camera_info_from_intrinsics(CameraIntrinsics(580.0, 581.0, 321.0, 242.0, 640, 480))
    # A rectified image's camera is P; K is the raw (distorted) image's.
    info.p = [545.0, 0.0, 318.0, 0.0, 0.0, 547.0, 236.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert intrinsics_from_camera_info(info) == CameraIntrinsics(545.0, 547.0, 318.0, 236.0,
                                                                 640, 480)
    info.p = [0.0] * 12
    assert intrinsics_from_camera_info(info) == CameraIntrinsics(580.0, 581.0, 321.0, 242.0,
                                                                 640, 480)
    # Binning 2 halves the image and the matrix; a region of interest moves the centre.
    info.binning_x = info.binning_y = 2
    assert intrinsics_from_camera_info(info) == CameraIntrinsics(290.0, 290.5, 160.5, 121.0,
                                                                 320, 240)
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 100, 40, 400, 300
    assert intrinsics_from_camera_info(info) == CameraIntrinsics(290.0, 290.5, 110.5, 101.0,
                                                                 200, 150)
    info.roi.x_offset = 300
    with pytest.raises(ValueError, match=r'roi 400x300 at \(300, 40\) is outside'):
        intrinsics_from_camera_info(info)
