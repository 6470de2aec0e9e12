"""
Unlabelled depth recordings: the common frame type and a folder-of-PNGs reader/writer.

A recording is any object that can be iterated several times, yielding :class:`DepthFrame`
in time order, and that has a ``len()`` (frame count, for progress bars). Two exist:
:class:`FolderRecording` here (16-bit PNG depth in millimetres plus an intrinsics file)
and ``hand_pose_ros.ros.bags.BagRecording`` (rosbag2, MCAP or sqlite3, no ROS install).

Folder layout::

    recording/
      intrinsics.yaml        # fx, fy, cx, cy, width, height (also .yml or .json), or a
                             # ROS camera_info YAML (camera_matrix.data, image_width/height)
      000000.png ...         # 16-bit PNG, millimetres, 0 = invalid; sorted by name,
                             # numbers in names by value (frame_2 before frame_10)

Stamps: when every file stem is an integer of at least 18 digits it is read as nanoseconds
(the name ``rosbag``-to-PNG exporters write); otherwise frame ``i`` is stamped ``i / fps``.
"""

from dataclasses import dataclass
import json
import logging
from pathlib import Path
import re

import numpy as np

from hand_pose_ros.core.camera import CameraIntrinsics, depth_to_metres, depth_to_millimetres

LOGGER = logging.getLogger(__name__)
INTRINSICS_FILES = ('intrinsics.yaml', 'intrinsics.yml', 'intrinsics.json')
# Epoch nanoseconds have 19 digits (zero-padded stamps too); epoch microseconds have 16.
_NANOSECOND_STEM_DIGITS = 18
_MICROSECOND_STEM_DIGITS = 16


@dataclass(frozen=True)
class DepthFrame:
    """
    One unlabelled depth frame.

    :param stamp_ns: capture stamp, integer nanoseconds.
    :param depth: (H, W) uint16 millimetres (0 invalid) or float32 metres (NaN invalid).
    :param intrinsics: :class:`CameraIntrinsics` of the image.
    :param frame_id: the image's frame (a bag's header frame_id; empty for PNG folders).
    """

    stamp_ns: int
    depth: np.ndarray
    intrinsics: CameraIntrinsics
    frame_id: str = ''

    @property
    def stamp_s(self):
        """Return the stamp in seconds."""
        return self.stamp_ns * 1e-9


def intrinsics_from_dict(values, source='intrinsics'):
    """
    Return :class:`CameraIntrinsics` from a plain mapping.

    Accepts ``{fx, fy, cx, cy, width, height}`` or a ROS camera_info YAML
    (``camera_matrix: {data: [9 values]}``, ``image_width``, ``image_height``).

    :param source: name used in error messages (the file).
    :raises ValueError: naming the missing or bad field.
    """
    if not isinstance(values, dict):
        raise ValueError(f'{source}: expected a mapping, got {type(values).__name__}')
    if 'camera_matrix' in values:
        try:
            k = np.asarray(values['camera_matrix']['data'], dtype=np.float64).ravel()
            size = values['image_width'], values['image_height']
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f'{source}: bad camera_info YAML ({error!r})') from None
        if k.shape != (9,):
            raise ValueError(f'{source}: camera_matrix.data must hold 9 values, got {k.size}')
        values = {'fx': k[0].item(), 'fy': k[4].item(), 'cx': k[2].item(), 'cy': k[5].item(),
                  'width': size[0], 'height': size[1]}
    missing = [key for key in ('fx', 'fy', 'cx', 'cy', 'width', 'height') if key not in values]
    if missing:
        raise ValueError(f'{source}: missing intrinsics fields {missing}')
    # As written: CameraIntrinsics refuses a width of 4.7 or an fx of null with its reason.
    try:
        intrinsics = CameraIntrinsics(*(values[key] for key in ('fx', 'fy', 'cx', 'cy',
                                                                'width', 'height')))
        intrinsics.check_principal_point()
    except ValueError as error:
        raise ValueError(f'{source}: {error}') from None
    return intrinsics


def read_intrinsics_file(path):
    """Return :class:`CameraIntrinsics` from a YAML or JSON file (see the module docstring)."""
    path = Path(path)
    text = path.read_text(encoding='utf-8')
    if path.suffix == '.json':
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f'{path}: not valid JSON ({error})') from None
    else:
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f'{path}: not valid YAML ({error})') from None
    return intrinsics_from_dict(values, str(path))


def read_depth_png(path):
    """Return a 16-bit depth PNG as (H, W) uint16 millimetres."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ('I;16', 'I;16B', 'I;16L', 'I'):
            raise ValueError(f'{path}: depth PNGs must be 16-bit single channel, '
                             f'got mode {image.mode!r}')
        pixels = np.array(image)
    if pixels.dtype != np.uint16:
        if pixels.min() < 0 or pixels.max() > np.iinfo(np.uint16).max:
            raise ValueError(f'{path}: depth values outside the 16-bit range')
        pixels = pixels.astype(np.uint16)
    return pixels


def write_depth_png(path, depth):
    """Write depth (uint16 mm or float metres) as a 16-bit PNG in millimetres."""
    from PIL import Image

    Image.fromarray(depth_to_millimetres(depth_to_metres(depth))).save(path)


def _natural_key(path):
    return [(0, int(part), '') if part.isdigit() else (1, 0, part)
            for part in re.split(r'(\d+)', path.name)]


class FolderRecording:
    """
    A folder of 16-bit depth PNGs with an intrinsics file (layout in the module docstring).

    :param path: the folder.
    :param intrinsics: :class:`CameraIntrinsics` overriding (or replacing) the file.
    :param fps: frame rate used for stamps when the file names are not nanosecond stamps.
    :raises ValueError: no PNG, no intrinsics, or a non-positive fps.

    A file that is not a 16-bit depth image of the camera's size is skipped with a warning
    (naming the first) and counted in ``rejected`` for the last pass, as the bag reader skips
    an unusable message.
    """

    def __init__(self, path, intrinsics=None, fps=30.0):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f'recording folder {self.path} does not exist')
        if not fps > 0:
            raise ValueError(f'fps must be positive, got {fps!r}')
        # Numbers in names by value: frame_2 before frame_10 (unpadded counters).
        self.files = sorted(self.path.glob('*.png'), key=_natural_key)
        if not self.files:
            raise ValueError(f'recording folder {self.path} holds no .png depth image')
        if intrinsics is None:
            found = [self.path / name for name in INTRINSICS_FILES
                     if (self.path / name).is_file()]
            if not found:
                raise ValueError(f'recording folder {self.path}: no intrinsics file '
                                 f'(one of {", ".join(INTRINSICS_FILES)}) and none given')
            intrinsics = read_intrinsics_file(found[0])
        self.intrinsics = intrinsics
        stems = [f.stem for f in self.files]
        if all(s.isdigit() and len(s) >= _NANOSECOND_STEM_DIGITS for s in stems):
            self.stamps_ns = [int(s) for s in stems]
        else:
            if all(s.isdigit() and len(s) >= _MICROSECOND_STEM_DIGITS for s in stems):
                LOGGER.warning('%s: the file names look like stamps but have under %d digits '
                               '(epoch microseconds?): frames are stamped at %g fps instead',
                               self.path, _NANOSECOND_STEM_DIGITS, fps)
            self.stamps_ns = [int(round(i * 1e9 / fps)) for i in range(len(stems))]
        self.description = f'folder {self.path} ({len(self.files)} frames)'
        self.rejected = 0

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        self.rejected = 0
        first_error = None
        for stamp_ns, path in zip(self.stamps_ns, self.files):
            try:
                depth = read_depth_png(path)
                self.intrinsics.check_image(depth)
            except (ValueError, OSError) as error:   # OSError: not an image PIL can read
                self.rejected += 1
                if self.rejected == 1:
                    first_error = f'{path.name}: {error}'
                    LOGGER.warning('%s: unusable depth images are skipped (the first, %s)',
                                   self.path, first_error)
                continue
            yield DepthFrame(stamp_ns, depth, self.intrinsics)
        if self.rejected == len(self.files):
            # Not one frame (8-bit PNGs, intrinsics of another size): an error, not an
            # empty recording.
            raise ValueError(f'recording folder {self.path}: no usable depth image among '
                             f'{len(self.files)} (the first: {first_error})')


def write_folder_recording(path, frames):
    """
    Write frames as a folder recording (nanosecond-stamped PNG names + intrinsics.yaml).

    All frames must share one camera, and their stamps must increase (each file is named by
    its stamp). Returns the number of frames written.
    """
    import yaml

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    intrinsics = last_stamp = None
    count = 0
    for frame in frames:
        if intrinsics is None:
            intrinsics = frame.intrinsics
        elif frame.intrinsics != intrinsics:
            raise ValueError('a folder recording holds one camera; frame intrinsics differ')
        stamp = int(frame.stamp_ns)
        if stamp < 0 or (last_stamp is not None and stamp <= last_stamp):
            raise ValueError(f'a folder recording names each file by its stamp, so stamps must '
                             f'increase from 0: {stamp} ns after {last_stamp} ns')
        write_depth_png(path / f'{stamp:019d}.png', frame.depth)
        last_stamp = stamp
        count += 1
    if intrinsics is not None:
        values = {'fx': intrinsics.fx, 'fy': intrinsics.fy, 'cx': intrinsics.cx,
                  'cy': intrinsics.cy, 'width': intrinsics.width, 'height': intrinsics.height}
        (path / INTRINSICS_FILES[0]).write_text(yaml.safe_dump(values), encoding='utf-8')
    return count
