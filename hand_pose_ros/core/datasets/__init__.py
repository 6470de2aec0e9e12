"""
Readers of labelled depth datasets, all mapped to the canonical 21-joint order.

Every reader is a sequence of :class:`DepthSample` (depth in metres, the dataset camera's
intrinsics, (21, 3) joints in metres with NaN for joints the dataset does not label).
Users bring the data; :func:`open_dataset` picks a reader by name.
"""

from hand_pose_ros.core.datasets.base import DepthSample
from hand_pose_ros.core.datasets.hands2017 import FPHADataset, Hands2017Dataset
from hand_pose_ros.core.datasets.icvl import ICVLDataset
from hand_pose_ros.core.datasets.msra import MSRADataset
from hand_pose_ros.core.datasets.nyu import NYUDataset
from hand_pose_ros.core.datasets.synthetic import SyntheticFolderDataset

READERS = {
    'nyu': NYUDataset,
    'icvl': ICVLDataset,
    'msra': MSRADataset,
    'hands2017': Hands2017Dataset,
    'bighand': Hands2017Dataset,
    'fpha': FPHADataset,
    'synthetic': SyntheticFolderDataset,
}


def open_dataset(name, root, **options):
    """
    Open a dataset reader by name.

    :param name: one of ``READERS``.
    :param root: dataset folder.
    :param options: reader-specific keyword arguments (e.g. ``labels``, ``subjects``).
    :return: a sequence of :class:`DepthSample`.
    """
    try:
        reader = READERS[name]
    except KeyError:
        raise ValueError(f'unknown dataset {name!r}; choose from {sorted(READERS)}') from None
    return reader(root, **options)


__all__ = ['DepthSample', 'FPHADataset', 'Hands2017Dataset', 'ICVLDataset', 'MSRADataset',
           'NYUDataset', 'READERS', 'SyntheticFolderDataset', 'open_dataset']
