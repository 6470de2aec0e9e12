"""
Reader of synthetic dataset folders written by ``hand_pose_synth``.

The folder layout and its parsing belong to :mod:`hand_pose_ros.core.synth.dataset`; this
module only turns its frames into :class:`DepthSample` (joints already in the canonical
order, metres, camera optical frame; the primary hand is the labelled one).
"""

import logging

import numpy as np

from hand_pose_ros.core.datasets.base import LabelledFrames, require_dir, sample_from_layout

LOGGER = logging.getLogger(__name__)


class SyntheticFolderDataset(LabelledFrames):
    """
    Frames of a synthetic dataset folder.

    :param root: folder with ``depth/``, ``labels.npz`` and ``meta.json``.
    """

    def __init__(self, root):
        from hand_pose_ros.core.synth.dataset import load_synthetic_dataset

        require_dir(root)
        self.root = root
        self._dataset = load_synthetic_dataset(root)
        self.intrinsics = self._dataset.intrinsics
        self._names = [f'depth/{i:06d}.png' for i in range(len(self._dataset))]
        more = int(np.count_nonzero(self._dataset.labels.get('num_hands', 0) > 1))
        if more:
            LOGGER.warning('%s: %d of %d frames show a second hand that the folder does not '
                           'label; found with --center detect it counts as a false hand '
                           '(hand_pose_synth --scene single_hand writes folders without one)',
                           root, more, len(self._names))

    def _read(self, index):
        joints = np.asarray(self._dataset.labels['joints_xyz'][index], dtype=np.float64)
        return sample_from_layout(self._dataset.depth_mm(index), self.intrinsics, joints,
                                  'canonical', self._names[index])
