"""
MSRA hand gesture dataset reader (Sun et al. 2015, "MSRA15").

Layout: ``P{subject}/{gesture}/`` folders, each with ``joint.txt`` (first line the frame
count, then one line of 21 x 3 joint coordinates in millimetres per frame) and depth files
``{frame:06d}_depth.bin``: six int32 (image width, height, left, top, right, bottom) then
float32 depth in millimetres of the bounding box, row major. The labels use the release's
OpenGL-style axes (y up, z towards the viewer, so z is negative); both are negated into
the camera optical frame.
"""

import os

import numpy as np

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.datasets.base import (
    LabelledFrames, name_list, require_dir, sample_from_layout)

_HEADER = np.dtype([('width', '<i4'), ('height', '<i4'), ('left', '<i4'), ('top', '<i4'),
                    ('right', '<i4'), ('bottom', '<i4')])
_AXES_TO_CAMERA = np.array([1e-3, -1e-3, -1e-3])


def read_msra_bin(path):
    """Read an MSRA ``.bin`` depth file into a full (height, width) float32 mm image."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size < _HEADER.itemsize:
        raise ValueError(f'{path}: too short for the 24-byte MSRA header')
    header = raw[:_HEADER.itemsize].view(_HEADER)[0]
    width, height = int(header['width']), int(header['height'])
    left, top, right, bottom = (int(header[k]) for k in ('left', 'top', 'right', 'bottom'))
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f'{path}: bounding box ({left}, {top}, {right}, {bottom}) does not '
                         f'fit a {width}x{height} image')
    count = (right - left) * (bottom - top)
    body = raw[_HEADER.itemsize:]
    if body.size != 4 * count:
        raise ValueError(f'{path}: expected {count} float32 depth values after the header, '
                         f'got {body.size} bytes')
    depth = np.zeros((height, width), dtype=np.float32)
    depth[top:bottom, left:right] = body.view('<f4').reshape(bottom - top, right - left)
    return depth


def write_msra_bin(path, depth_mm, box):
    """Write a float mm image as an MSRA ``.bin`` keeping the (left, top, right, bottom) box."""
    depth_mm = np.asarray(depth_mm, dtype='<f4')
    left, top, right, bottom = box
    header = np.array([(depth_mm.shape[1], depth_mm.shape[0], left, top, right, bottom)],
                      dtype=_HEADER)
    with open(path, 'wb') as stream:
        stream.write(header.tobytes())
        stream.write(np.ascontiguousarray(depth_mm[top:bottom, left:right]).tobytes())


class MSRADataset(LabelledFrames):
    """
    Frames of MSRA subjects and gestures.

    :param root: dataset folder holding ``P0`` ... ``P8``.
    :param subjects: subject folder names to include (default: all ``P*`` folders).
    """

    intrinsics = CameraIntrinsics.from_preset('msra')

    def __init__(self, root, subjects=None):
        require_dir(root)
        subjects = name_list(subjects)
        if subjects is None:
            subjects = sorted(d for d in os.listdir(root)
                              if d.startswith('P') and os.path.isdir(os.path.join(root, d)))
        self.root = root
        self._names, joints = [], []
        for subject in subjects:
            subject_dir = os.path.join(root, subject)
            require_dir(subject_dir)
            for gesture in sorted(os.listdir(subject_dir)):
                label_path = os.path.join(subject_dir, gesture, 'joint.txt')
                if not os.path.isfile(label_path):
                    continue
                rows = self._read_joint_file(label_path)
                joints.append(rows)
                self._names += [os.path.join(subject, gesture, f'{i:06d}_depth.bin')
                                for i in range(len(rows))]
        if not self._names:
            raise ValueError(f'MSRA root {root!r} holds no P*/<gesture>/joint.txt')
        self._joints_m = np.concatenate(joints) * _AXES_TO_CAMERA

    @staticmethod
    def _read_joint_file(path):
        with open(path, 'r') as stream:
            lines = [line.split() for line in stream if line.strip()]
        try:
            count = int(lines[0][0])
            rows = np.array([[float(v) for v in line] for line in lines[1:]], dtype=np.float64)
        except (IndexError, ValueError):
            raise ValueError(f'{path}: expected a frame count then rows of 63 numbers') \
                from None
        if rows.shape != (count, 63):
            raise ValueError(f'{path}: header says {count} frames of 63 numbers, '
                             f'got {rows.shape}')
        return rows.reshape(count, 21, 3)

    def _read(self, index):
        depth_mm = read_msra_bin(os.path.join(self.root, self._names[index]))
        return sample_from_layout(depth_mm * np.float32(1e-3), self.intrinsics,
                                  self._joints_m[index], 'msra', self._names[index])
