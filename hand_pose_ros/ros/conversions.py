"""
Conversions between ROS messages and numpy; the only module that reads message fields.

Depth encodings follow REP 118: ``16UC1`` is millimetres with 0 invalid, ``32FC1`` is metres
with NaN invalid. Conversions honour ``step`` (row padding) and ``is_bigendian`` and return
views without copying when no conversion is needed.
"""

import sys

import numpy as np

from hand_pose_ros.core.camera import CameraIntrinsics, principal_point_inside

# encoding -> (dtype without byte order, channels)
DEPTH_ENCODINGS = {'16UC1': ('u2', 1), 'mono16': ('u2', 1), '32FC1': ('f4', 1)}
COLOR_ENCODINGS = {'rgb8': ('u1', 3), 'bgr8': ('u1', 3), 'mono8': ('u1', 1)}
IMAGE_ENCODINGS = {**DEPTH_ENCODINGS, **COLOR_ENCODINGS}
DEFAULT_MAX_PIXELS = 4096 * 4096


def _byte_order(msg):
    return '>' if msg.is_bigendian else '<'


def array_from_image(msg, encodings=IMAGE_ENCODINGS, max_pixels=DEFAULT_MAX_PIXELS):
    """
    Return the pixels of a ``sensor_msgs/Image`` as a numpy array.

    :param msg: the image message.
    :param encodings: accepted encodings, a dict like ``IMAGE_ENCODINGS``.
    :param max_pixels: largest accepted width * height.
    :return: (H, W) or (H, W, C) array in native byte order; a view of the message
        buffer (no copy) when no byte swap or realignment is needed.
    :raises ValueError: naming the problem for unsupported encodings, zero or oversized
        dimensions, a step smaller than a row, or a data buffer of the wrong length.
    """
    encoding = msg.encoding
    if encoding not in encodings:
        raise ValueError(f'unsupported image encoding {encoding!r}; '
                         f'expected one of {sorted(encodings)}')
    base, channels = encodings[encoding]
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    if width <= 0 or height <= 0:
        raise ValueError(f'image has zero size ({width}x{height})')
    if width * height > max_pixels:
        raise ValueError(f'image {width}x{height} exceeds the limit of {max_pixels} pixels')
    itemsize = np.dtype(base).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ValueError(f'image step {step} is smaller than a row of {row_bytes} bytes '
                         f'({width} px x {channels} ch x {itemsize} B, {encoding})')
    data = msg.data
    buffer = data if isinstance(data, (bytes, bytearray, memoryview)) else memoryview(data)
    size = len(buffer) if not isinstance(buffer, memoryview) else buffer.nbytes
    if size != step * height:
        raise ValueError(f'image data has {size} bytes, expected step x height = '
                         f'{step} x {height} = {step * height}')
    dtype = np.dtype(base).newbyteorder(_byte_order(msg))
    shape = (height, width) if channels == 1 else (height, width, channels)
    if step % itemsize == 0:
        rows = np.frombuffer(buffer, dtype=dtype).reshape(height, step // itemsize)
        pixels = rows[:, :width * channels].reshape(shape)
    else:
        rows = np.frombuffer(buffer, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
        pixels = np.ascontiguousarray(rows).view(dtype).reshape(shape)
    if not dtype.isnative:
        pixels = pixels.astype(dtype.newbyteorder('='))
    return pixels


def depth_from_image(msg, max_pixels=DEFAULT_MAX_PIXELS):
    """Return a depth image: (H, W) uint16 millimetres or float32 metres (REP 118)."""
    return array_from_image(msg, DEPTH_ENCODINGS, max_pixels)


def color_from_image(msg, max_pixels=DEFAULT_MAX_PIXELS):
    """Return an (H, W, 3) uint8 RGB image from rgb8, bgr8 or mono8."""
    pixels = array_from_image(msg, COLOR_ENCODINGS, max_pixels)
    if msg.encoding == 'bgr8':
        return pixels[..., ::-1]
    if msg.encoding == 'mono8':
        return np.repeat(pixels[..., None], 3, axis=2)
    return pixels


def image_from_array(array, encoding, header=None):
    """
    Return a ``sensor_msgs/Image`` holding ``array`` (native byte order, packed rows).

    :param array: (H, W) or (H, W, C) array whose dtype and channels match ``encoding``.
    :param encoding: one of ``IMAGE_ENCODINGS``.
    :param header: optional ``std_msgs/Header`` to copy into the message.
    """
    from sensor_msgs.msg import Image

    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f'unsupported image encoding {encoding!r}')
    base, channels = IMAGE_ENCODINGS[encoding]
    array = np.ascontiguousarray(array, dtype=np.dtype(base))
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise ValueError(f'array of shape {array.shape} does not fit encoding {encoding}')
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == 'big'
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()
    return msg


def intrinsics_from_camera_info(msg):
    """
    Return :class:`CameraIntrinsics` of the image a ``sensor_msgs/CameraInfo`` describes.

    As ``sensor_msgs/CameraInfo`` defines them: the focal lengths and principal point are
    those of P (the rectified image's camera matrix), or of K when P is not set (all zero);
    a region of interest and binning shrink the image and move and scale these with it.

    :raises ValueError: for an all-zero or non-finite matrix, non-positive focal lengths, a
        zero image size, a principal point or a region of interest outside the image.
    """
    k = np.asarray(msg.k, dtype=np.float64)
    p = np.asarray(msg.p, dtype=np.float64)
    if k.shape != (9,) or p.shape != (12,):
        raise ValueError(f'camera_info K and P must have 9 and 12 elements, got {k.size} '
                         f'and {p.size}')
    if not np.any(k) and not np.any(p):
        raise ValueError('camera_info K and P are all zeros (uncalibrated camera)')
    name = 'P' if np.any(p) else 'K'
    matrix = p.reshape(3, 4)[:, :3] if np.any(p) else k.reshape(3, 3)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f'camera_info {name} contains NaN or inf')
    # A camera matrix's last row is (0, 0, 1) and it has no (1, 0) entry: another layout
    # (column-major, say) would give plausible but wrong intrinsics.
    if matrix[1, 0] != 0 or not np.array_equal(matrix[2], [0.0, 0.0, 1.0]):
        raise ValueError(f'camera_info {name} is not a camera matrix (row-major, last row '
                         f'0 0 1): {matrix.ravel().tolist()}')
    if msg.width and msg.height and not principal_point_inside(matrix[0, 2], matrix[1, 2],
                                                               msg.width, msg.height):
        raise ValueError(f'camera_info {name} puts the principal point at ({matrix[0, 2]:g}, '
                         f'{matrix[1, 2]:g}), outside the {msg.width}x{msg.height} image: '
                         f'a calibration of another resolution?')
    roi = msg.roi
    x_offset, y_offset, width, height = 0, 0, int(msg.width), int(msg.height)
    if roi.width or roi.height:  # all zero: the full image
        x_offset, y_offset, width, height = (int(roi.x_offset), int(roi.y_offset),
                                             int(roi.width), int(roi.height))
        if x_offset + width > msg.width or y_offset + height > msg.height:
            raise ValueError(f'camera_info roi {width}x{height} at ({x_offset}, {y_offset}) '
                             f'is outside the {msg.width}x{msg.height} image')
    bin_x, bin_y = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    return CameraIntrinsics(fx=float(matrix[0, 0]) / bin_x, fy=float(matrix[1, 1]) / bin_y,
                            cx=(float(matrix[0, 2]) - x_offset) / bin_x,
                            cy=(float(matrix[1, 2]) - y_offset) / bin_y,
                            width=width // bin_x, height=height // bin_y)


def distortion_of(msg):
    """Return a ``CameraInfo``'s non-zero distortion coefficients as a list (empty: none)."""
    d = [float(v) for v in msg.d]
    return d if any(v != 0.0 for v in d) else []


def camera_info_from_intrinsics(intrinsics, header=None):
    """Return a ``sensor_msgs/CameraInfo`` (plumb_bob, no distortion) for intrinsics."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = intrinsics.width, intrinsics.height
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    msg.k = intrinsics.matrix.ravel().tolist()
    msg.r = np.eye(3).ravel().tolist()
    msg.p = np.hstack([intrinsics.matrix, np.zeros((3, 1))]).ravel().tolist()
    return msg
