"""
NYU hand pose dataset reader (Tompson et al. 2014).

Layout of a split folder (``train/`` or ``test/``): ``joint_data.mat`` with ``joint_xyz``
of shape (kinects, frames, 36, 3) in millimetres, and depth images
``depth_{kinect}_{frame:07d}.png`` (1-based) stored as RGB PNGs with
``depth_mm = G * 256 + B``. Labels use y up, so y is negated into the camera optical frame.
Only the 14 evaluated joints map onto the canonical skeleton (12 canonical joints).
"""

import os

import numpy as np

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.datasets.base import LabelledFrames, require_dir, sample_from_layout


def read_nyu_depth(path):
    """Read an NYU RGB-packed depth PNG as uint16 millimetres (G * 256 + B)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert('RGB'))
    return (rgb[..., 1].astype(np.uint16) << 8) | rgb[..., 2].astype(np.uint16)


def write_nyu_depth(path, depth_mm):
    """Write uint16 millimetres as an NYU RGB-packed PNG (R = 0, G = high, B = low byte)."""
    from PIL import Image

    depth_mm = np.asarray(depth_mm, dtype=np.uint16)
    rgb = np.zeros(depth_mm.shape + (3,), dtype=np.uint8)
    rgb[..., 1] = depth_mm >> 8
    rgb[..., 2] = depth_mm & 0xFF
    Image.fromarray(rgb).save(path)


class NYUDataset(LabelledFrames):
    """
    Frames of one NYU split seen by one Kinect.

    :param root: split folder holding ``joint_data.mat`` and the depth PNGs.
    :param kinect: camera index 1, 2 or 3 (1 is the frontal view used for evaluation).
    """

    intrinsics = CameraIntrinsics.from_preset('nyu')

    def __init__(self, root, kinect=1):
        from scipy.io import loadmat

        require_dir(root)
        if not os.path.isfile(os.path.join(root, 'joint_data.mat')) and \
                os.path.isfile(os.path.join(root, 'test', 'joint_data.mat')):
            root = os.path.join(root, 'test')   # the dataset's root: its test split
        path = os.path.join(root, 'joint_data.mat')
        if not os.path.isfile(path):
            raise ValueError(f'NYU root {root!r} has no joint_data.mat (give the split '
                             f'folder, test/ or train/)')
        joint_xyz = np.asarray(loadmat(path)['joint_xyz'], dtype=np.float64)
        if joint_xyz.ndim != 4 or joint_xyz.shape[2:] != (36, 3):
            raise ValueError(f'{path}: joint_xyz must be (kinects, frames, 36, 3), '
                             f'got {joint_xyz.shape}')
        if not 1 <= kinect <= joint_xyz.shape[0]:
            raise ValueError(f'kinect must be in 1..{joint_xyz.shape[0]}, got {kinect}')
        self.root = root
        self.kinect = kinect
        self._joints_mm = joint_xyz[kinect - 1][:, list(skeleton.NYU14_FROM_NYU36), :]
        self._names = [f'depth_{kinect}_{i + 1:07d}.png' for i in range(joint_xyz.shape[1])]

    def _read(self, index):
        depth = read_nyu_depth(os.path.join(self.root, self._names[index]))
        joints = self._joints_mm[index] * np.array([1e-3, -1e-3, 1e-3])
        return sample_from_layout(depth, self.intrinsics, joints, 'nyu14', self._names[index])
