"""
HANDS2017 / BigHand2.2M and First-Person Hand Action (FPHA) readers (SR300 camera).

HANDS2017 / BigHand: an annotation file (``Training_Annotation.txt``) with one frame per
line, the image name then 21 joints ``x y z`` in millimetres (camera frame, y down), and
16-bit millimetre PNGs in ``images/``.

FPHA: ``Video_files/<subject>/<action>/<seq>/depth/depth_{frame:04d}.png`` (16-bit mm) and
``Hand_pose_annotation_v1/<subject>/<action>/<seq>/skeleton.txt`` with one line per frame:
the frame index then 21 joints ``x y z`` in millimetres in the depth camera frame.
Both use the wrist / MCPs / PIP-DIP-tip joint order (``skeleton.LAYOUTS['hands2017']``).
"""

import glob
import os

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.datasets.base import (
    LabelledFrames, name_list, parse_label_rows, require_dir, sample_from_layout)
from hand_pose_ros.core.recordings import read_depth_png


class Hands2017Dataset(LabelledFrames):
    """
    Frames of a HANDS2017 / BigHand annotation file.

    :param root: folder holding the annotation file and ``images/``.
    :param labels: annotation file name inside ``root``.
    :param image_dir: image folder name inside ``root``.
    """

    intrinsics = CameraIntrinsics.from_preset('hands2017')

    def __init__(self, root, labels='Training_Annotation.txt', image_dir='images'):
        require_dir(root)
        path = os.path.join(root, labels)
        if not os.path.isfile(path):
            raise ValueError(f'HANDS2017 root {root!r} has no annotation file {labels!r}')
        self.root = root
        self.image_dir = image_dir
        self._names, rows = parse_label_rows(path, 63, name_column=True)
        self._joints_m = rows.reshape(-1, 21, 3) * 1e-3

    def _read(self, index):
        depth = read_depth_png(os.path.join(self.root, self.image_dir, self._names[index]))
        return sample_from_layout(depth, self.intrinsics, self._joints_m[index], 'hands2017',
                                  self._names[index])


ANNOTATION_FOLDERS = ('Hand_pose_annotation_v1', 'Hand_pose_annotation_v1_1')


class FPHADataset(LabelledFrames):
    """
    Depth frames of the First-Person Hand Action benchmark.

    :param root: folder holding ``Video_files/`` and ``Hand_pose_annotation_v1/`` (or
        ``Hand_pose_annotation_v1_1/``, as the benchmark's own readme names it).
    :param subjects: subject folder names to include (default: all; the benchmark's hand
        pose test split is ``Subject_2,Subject_5,Subject_6``).
    """

    intrinsics = CameraIntrinsics.from_preset('sr300')

    def __init__(self, root, subjects=None):
        require_dir(root)
        subjects = name_list(subjects)
        label_root = next((os.path.join(root, name) for name in ANNOTATION_FOLDERS
                           if os.path.isdir(os.path.join(root, name))), None)
        if label_root is None:
            raise ValueError(f'FPHA root {root!r} has none of {list(ANNOTATION_FOLDERS)}')
        self.root = root
        self._names, joints = [], []
        for path in sorted(glob.glob(os.path.join(label_root, '*', '*', '*', 'skeleton.txt'))):
            sequence = os.path.relpath(os.path.dirname(path), label_root)
            if subjects is not None and sequence.split(os.sep)[0] not in subjects:
                continue
            frames, rows = parse_label_rows(path, 63, name_column=True)
            for frame, row in zip(frames, rows):
                self._names.append(os.path.join(
                    'Video_files', sequence, 'depth', f'depth_{int(float(frame)):04d}.png'))
                joints.append(row.reshape(21, 3) * 1e-3)
        if not self._names:
            which = '' if subjects is None else f' of subjects {subjects}'
            raise ValueError(f'FPHA root {root!r} holds no <subject>/<action>/<seq>/'
                             f'skeleton.txt{which} under {os.path.basename(label_root)}')
        self._joints_m = joints

    def _read(self, index):
        depth = read_depth_png(os.path.join(self.root, self._names[index]))
        return sample_from_layout(depth, self.intrinsics, self._joints_m[index], 'fpha',
                                  self._names[index])
