"""Property-based fuzzing of the message conversions: a result or a clear ValueError only."""

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.ros.conversions import (color_from_image, DEPTH_ENCODINGS, depth_from_image,
                                           IMAGE_ENCODINGS, intrinsics_from_camera_info)

FUZZ = settings(max_examples=5000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENCODINGS = st.one_of(st.sampled_from(sorted(IMAGE_ENCODINGS)),
                      st.sampled_from(['', '8UC3', '16SC1', 'bayer_rggb8', '32FC3', 'RGB8']),
                      st.text(max_size=12))
SIZES = st.one_of(st.integers(0, 40), st.sampled_from([2 ** 16, 2 ** 31 - 1, 2 ** 32 - 1]))


@st.composite
def image_messages(draw):
    msg = Image()
    msg.encoding = draw(ENCODINGS)
    msg.width, msg.height = draw(SIZES), draw(SIZES)
    msg.is_bigendian = draw(st.booleans())
    base, channels = IMAGE_ENCODINGS.get(msg.encoding, ('u1', 1))
    row = msg.width * channels * np.dtype(base).itemsize
    msg.step = min(draw(st.one_of(st.just(row), st.just(row + 3), st.integers(0, 4096))),
                   2 ** 32 - 1)
    expected = msg.step * msg.height
    length = draw(st.one_of(st.just(expected), st.integers(0, 4096)))
    if length <= 1 << 20:   # larger buffers only make the test slow; sizes are still checked
        pattern = draw(st.binary(min_size=1, max_size=16))
        msg.data = (pattern * (length // len(pattern) + 1))[:length]
    return msg


@FUZZ
@given(image_messages())
def test_image_conversions_return_arrays_or_raise_value_error(msg):
    converters = (depth_from_image, color_from_image)
    for convert in converters:
        try:
            out = convert(msg)
        except ValueError as error:
            assert str(error)
            continue
        assert out.shape[:2] == (msg.height, msg.width)
        assert out.dtype.isnative
        if convert is depth_from_image:
            assert msg.encoding in DEPTH_ENCODINGS


FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.sampled_from([0.0, -1.0, 1e-300, 1e300]))


@FUZZ
@given(st.lists(FLOATS, min_size=9, max_size=9), SIZES, SIZES)
def test_camera_info_gives_valid_intrinsics_or_value_error(k, width, height):
    msg = CameraInfo(width=width, height=height)
    msg.k = k
    try:
        intrinsics = intrinsics_from_camera_info(msg)
    except ValueError as error:
        assert str(error)
        return
    assert isinstance(intrinsics, CameraIntrinsics)
    assert intrinsics.fx > 0 and intrinsics.fy > 0 and intrinsics.width > 0
    assert np.isfinite([intrinsics.cx, intrinsics.cy]).all()
