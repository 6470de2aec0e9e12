"""
ICVL hand posture dataset reader (Tang et al. 2014).

A label file (``labels.txt`` for training, ``test_seq_1.txt`` / ``test_seq_2.txt`` for
testing) holds one frame per line: the image path relative to the ``Depth`` folder, then
16 joints as ``u v d`` (pixels, pixels, millimetres). Depth images are 16-bit PNGs in
millimetres, 320x240, with 32001 where the sensor saw nothing (read as invalid).
"""

import os

import numpy as np

from hand_pose_ros.core.camera import CameraIntrinsics, xyz_from_uvd
from hand_pose_ros.core.datasets.base import (
    LabelledFrames, name_list, parse_label_rows, require_dir, sample_from_layout)
from hand_pose_ros.core.recordings import read_depth_png


TEST_LABELS = ('test_seq_1.txt', 'test_seq_2.txt')
# What ICVL's depth images hold where the sensor saw nothing (32 m: no real depth).
NO_DEPTH_MM = 32001


class ICVLDataset(LabelledFrames):
    """
    Frames listed in ICVL label files.

    :param root: dataset folder holding ``Depth/`` and the label files.
    :param labels: label file name inside ``root``, or a list of them. Default: the test
        set (``test_seq_1.txt`` and ``test_seq_2.txt``, those the folder has), else
        ``labels.txt`` (the training set: the ``Training`` folder).
    """

    intrinsics = CameraIntrinsics.from_preset('icvl')

    def __init__(self, root, labels=None):
        require_dir(root)
        self.root = root
        self._names, uvd = [], []
        if labels is None:
            labels = [name for name in TEST_LABELS
                      if os.path.isfile(os.path.join(root, name))] or 'labels.txt'
        labels = name_list(labels)
        if not labels:
            raise ValueError('ICVL: name at least one label file')
        self.labels = labels
        for name in labels:
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                raise ValueError(f'ICVL root {root!r} has no label file {name!r}')
            names, rows = parse_label_rows(path, 16 * 3, name_column=True)
            self._names += list(names)
            uvd.append(rows.reshape(-1, 16, 3))
        self._uvd = np.concatenate(uvd) * np.array([1.0, 1.0, 1e-3])

    def _read(self, index):
        depth = read_depth_png(os.path.join(self.root, 'Depth', self._names[index]))
        depth[depth >= NO_DEPTH_MM] = 0
        joints = xyz_from_uvd(self._uvd[index], self.intrinsics)
        return sample_from_layout(depth, self.intrinsics, joints, 'icvl', self._names[index])
