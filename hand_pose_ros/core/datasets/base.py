"""Common sample type and helpers shared by the dataset readers."""

from dataclasses import dataclass
import logging
import os
import warnings

import numpy as np

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CameraIntrinsics, depth_to_metres

LOGGER = logging.getLogger(__name__)


@dataclass
class DepthSample:
    """
    One labelled depth frame in the canonical joint order.

    :param depth_m: (H, W) float32 depth in metres, NaN where invalid.
    :param intrinsics: :class:`CameraIntrinsics` of ``depth_m``.
    :param joints_xyz: (21, 3) float64 joints in the camera optical frame (x right, y down,
        z forward), metres, canonical MediaPipe order, NaN where the dataset has no joint.
    :param joint_mask: (21,) bool, True where ``joints_xyz`` holds a labelled joint.
    :param name: identifier of the frame inside its dataset (usually a relative path).
    """

    depth_m: np.ndarray
    intrinsics: CameraIntrinsics
    joints_xyz: np.ndarray
    joint_mask: np.ndarray
    name: str = ''

    @property
    def center_xyz(self):
        """Return the (3,) oracle hand centre: centroid of the labelled joints, metres."""
        return self.joints_xyz[self.joint_mask].mean(axis=0)


def sample_from_layout(depth, intrinsics, joints_xyz_m, layout, name):
    """
    Build a :class:`DepthSample` from dataset-order joints in metres.

    :param depth: (H, W) uint16 millimetres or float metres.
    :param intrinsics: :class:`CameraIntrinsics` of the image.
    :param joints_xyz_m: (N, 3) joints in the dataset's own order, metres, y down.
    :param layout: key of ``skeleton.LAYOUTS``.
    :param name: frame identifier.
    :return: :class:`DepthSample`.
    """
    depth_m = depth_to_metres(depth)
    intrinsics.check_image(depth_m)
    joints = skeleton.LAYOUTS[layout].canonical_from_layout(joints_xyz_m)
    mask = np.all(np.isfinite(joints), axis=-1)
    return DepthSample(depth_m, intrinsics, joints, mask, name)


def parse_label_rows(path, num_values, name_column):
    """
    Parse a whitespace-separated label file into names and float rows.

    :param path: text file, one frame per line.
    :param num_values: number of numbers expected after the name column.
    :param name_column: True when the first column is a frame name or index.
    :return: (names list of str, (N, num_values) float64 array).
    """
    try:   # NumPy's C parser: seconds and one array for a million-frame file (BigHand)
        return _parse_label_rows_fast(path, num_values, name_column)
    except ValueError:
        pass   # irregular: parsed line by line below, for an error naming the line
    names, rows = [], []
    with open(path, 'r') as stream:
        for line_number, line in enumerate(stream, 1):
            fields = line.split()
            if not fields:
                continue
            name = fields[0] if name_column else str(line_number - 1)
            values = fields[1:] if name_column else fields
            if len(values) < num_values:
                raise ValueError(f'{path}:{line_number}: expected {num_values} numbers, '
                                 f'got {len(values)}')
            try:
                rows.append([float(v) for v in values[:num_values]])
            except ValueError:
                raise ValueError(f'{path}:{line_number}: label values must be numbers') \
                    from None
            names.append(name)
    if not rows:
        raise ValueError(f'{path}: no labelled frames')
    return names, np.asarray(rows, dtype=np.float64)


def _parse_label_rows_fast(path, num_values, name_column):
    """Return :func:`parse_label_rows` of a regular file; ValueError for anything else."""
    first = 1 if name_column else 0
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # an empty file is an error, not a warning
        try:
            values = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None,
                                usecols=range(first, first + num_values))
        except UserWarning as warning:
            raise ValueError(str(warning)) from None
    if name_column:
        with open(path, 'r') as stream:
            names = [line.split(None, 1)[0] for line in stream if line.strip()]
    else:
        names = [str(index) for index in range(len(values))]
    if not len(values) or len(names) != len(values):
        raise ValueError(f'{path}: irregular label file')
    return names, values


def require_dir(root):
    """Raise ValueError unless ``root`` is an existing directory."""
    if not os.path.isdir(root):
        raise ValueError(f'dataset root {root!r} is not a directory')
    return root


def name_list(names):
    """
    Return a reader option naming one or several things as a list of names.

    One name given alone (``--option subjects=P0`` gives a string) is a list of one; None
    (the reader's default) stays None.
    """
    if names is None:
        return None
    return [names] if isinstance(names, str) else [str(name) for name in names]


class LabelledFrames:
    """
    Base of the readers: a list of frames, each read on demand.

    Subclasses fill ``self._names`` (frame identifiers) and implement ``_read(index)``.
    """

    intrinsics = None

    def __len__(self):
        return len(self._names)

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f'frame index {index} out of range for {len(self)} frames')
        return self._read(index % len(self))

    def __iter__(self):
        return self.readable(range(len(self)))

    def readable(self, indices):
        """
        Yield the frames at ``indices``, skipping those whose files cannot be read.

        A frame missing from a release or a damaged file is skipped; skips are counted in
        ``skipped`` and logged (the first, then the count). When none of the frames can be
        read (a wrong folder), ValueError names the first failure.
        """
        indices = list(indices)
        self.skipped, first = 0, None
        for index in indices:
            try:
                sample = self[index]
            except OSError as error:   # a frame missing from the release, a damaged file
                self.skipped += 1
                first = first or error
                if self.skipped == 1:
                    LOGGER.warning('%s: frames that cannot be read are skipped (the first: '
                                   '%s)', type(self).__name__, error)
                continue
            yield sample
        if self.skipped and self.skipped == len(indices):
            raise ValueError(f'{type(self).__name__}: none of its {len(indices)} frames could '
                             f'be read (the first: {first})')
        if self.skipped:
            LOGGER.warning('%s: %d of %d frames skipped (unreadable)', type(self).__name__,
                           self.skipped, len(indices))
