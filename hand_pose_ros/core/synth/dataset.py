"""
Synthetic dataset folders: writer, reader and a preview contact sheet.

Layout of a dataset folder::

    depth/000000.png   16-bit PNG, millimetres (0 invalid)
    color/000000.png   8-bit RGB PNG (optional)
    labels.npz         joints_xyz (N, 21, 3) m, joints_uvd (N, 21, 3) (px, px, m),
                       visible (N, 21) bool, handedness (N,) str, num_hands (N,) int,
                       stamps_s (N,) of the primary hand
    meta.json          intrinsics, seed, scene and sensor configuration, frame count
"""

from dataclasses import asdict
import json
import os

import numpy as np

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CameraIntrinsics

DEPTH_DIR = 'depth'
COLOR_DIR = 'color'
LABELS_FILE = 'labels.npz'
META_FILE = 'meta.json'
FINGER_COLOURS = ((255, 60, 60), (255, 200, 0), (60, 220, 60), (0, 180, 255), (200, 90, 255))


def frame_name(index):
    """Return the file name of frame ``index``."""
    return f'{index:06d}.png'


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_dataset(root, frames, intrinsics, meta=None, num_frames=None, progress=None):
    """
    Write frames to a dataset folder.

    :param root: output folder (created).
    :param frames: iterable of :class:`Frame` (full images of one camera).
    :param intrinsics: :class:`CameraIntrinsics` of the frames.
    :param meta: extra JSON-able metadata (seed, configurations).
    :param num_frames: stop after this many frames (None: exhaust ``frames``).
    :param progress: a :class:`~hand_pose_ros.core.progress.ProgressBar` or None.
    :return: number of frames written.
    """
    from PIL import Image

    os.makedirs(os.path.join(root, DEPTH_DIR), exist_ok=True)
    xyz, uvd, visible, handedness, num_hands, stamps = [], [], [], [], [], []
    has_color = None
    for index, frame in enumerate(frames):
        if num_frames is not None and index >= num_frames:
            break
        intrinsics.check_image(frame.depth_mm)
        Image.fromarray(frame.depth_mm).save(os.path.join(root, DEPTH_DIR, frame_name(index)))
        if has_color is None:
            has_color = frame.color is not None
            if has_color:
                os.makedirs(os.path.join(root, COLOR_DIR), exist_ok=True)
        if has_color:
            Image.fromarray(frame.color).save(os.path.join(root, COLOR_DIR, frame_name(index)))
        primary = frame.hands[0]
        xyz.append(primary.joints_xyz)
        uvd.append(primary.joints_uvd)
        visible.append(primary.visible)
        handedness.append(primary.handedness)
        num_hands.append(len(frame.hands))
        stamps.append(frame.stamp_s)
        if progress is not None:
            progress.update(index + 1, 'frames')
    count = len(xyz)
    if count == 0:
        raise ValueError('no frames to write')
    np.savez_compressed(
        os.path.join(root, LABELS_FILE), joints_xyz=np.array(xyz), joints_uvd=np.array(uvd),
        visible=np.array(visible), handedness=np.array(handedness),
        num_hands=np.array(num_hands), stamps_s=np.array(stamps))
    info = {'num_frames': count, 'intrinsics': asdict(intrinsics), 'color': bool(has_color),
            'joint_names': list(skeleton.JOINT_NAMES)}
    info.update(_jsonable(meta or {}))
    with open(os.path.join(root, META_FILE), 'w') as stream:
        json.dump(info, stream, indent=2)
    return count


class SyntheticDataset:
    """
    Reader of a dataset folder written by :func:`write_dataset`.

    ``dataset[i]`` returns a dict with 'depth_mm' (H, W) uint16, 'color' (H, W, 3) uint8 or
    None, 'joints_xyz', 'joints_uvd', 'visible', 'handedness'. Labels are loaded up front;
    images are read on access.
    """

    def __init__(self, root):
        meta_path = os.path.join(root, META_FILE)
        labels_path = os.path.join(root, LABELS_FILE)
        for path in (meta_path, labels_path):
            if not os.path.isfile(path):
                raise ValueError(f'not a synthetic dataset folder: {path} is missing')
        self.root = root
        with open(meta_path) as stream:
            self.meta = json.load(stream)
        self.intrinsics = CameraIntrinsics(**self.meta['intrinsics'])
        with np.load(labels_path) as labels:
            self.labels = {key: labels[key] for key in labels.files}
        if len(self.labels['joints_xyz']) != self.meta['num_frames']:
            raise ValueError(f'{root}: labels.npz has {len(self.labels["joints_xyz"])} '
                             f'frames but meta.json says {self.meta["num_frames"]}')

    def __len__(self):
        return int(self.meta['num_frames'])

    def depth_mm(self, index):
        """Return frame ``index``'s (H, W) uint16 depth in millimetres."""
        from hand_pose_ros.core.recordings import read_depth_png

        return read_depth_png(os.path.join(self.root, DEPTH_DIR, frame_name(index)))

    def color(self, index):
        """Return frame ``index``'s (H, W, 3) uint8 colour image, or None."""
        if not self.meta.get('color'):
            return None
        from PIL import Image

        with Image.open(os.path.join(self.root, COLOR_DIR, frame_name(index))) as image:
            return np.array(image.convert('RGB'))

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f'frame {index} out of range (dataset has {len(self)})')
        index %= len(self)
        return {'depth_mm': self.depth_mm(index), 'color': self.color(index),
                'joints_xyz': self.labels['joints_xyz'][index],
                'joints_uvd': self.labels['joints_uvd'][index],
                'visible': self.labels['visible'][index],
                'handedness': str(self.labels['handedness'][index])}


def load_synthetic_dataset(root):
    """Open a dataset folder written by :func:`write_dataset` (see :class:`SyntheticDataset`)."""
    return SyntheticDataset(root)


def depth_preview(depth_mm, near_mm=None, far_mm=None):
    """Return an (H, W, 3) uint8 grey image of a depth map (near bright, invalid black)."""
    depth = np.asarray(depth_mm, dtype=np.float32)
    valid = depth > 0
    if not valid.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    near = np.percentile(depth[valid], 1) if near_mm is None else near_mm
    far = np.percentile(depth[valid], 99) if far_mm is None else far_mm
    level = 255.0 - 215.0 * np.clip((depth - near) / max(far - near, 1.0), 0, 1)
    grey = np.where(valid, level, 0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def contact_sheet(images, joints_uvd, visible, columns=4, tile_width=320):
    """
    Return an RGB contact sheet of depth previews with skeletons drawn over them.

    :param images: list of (H, W, 3) uint8 images (e.g. :func:`depth_preview`).
    :param joints_uvd: list of (21, 3) joints in each image's pixels.
    :param visible: list of (21,) bool (visible joints green outline, occluded red).
    :param columns: tiles per row.
    :param tile_width: width of each tile in pixels.
    :return: PIL ``Image``.
    """
    from PIL import Image, ImageDraw

    if not images:
        raise ValueError('contact sheet needs at least one image')
    height, width = images[0].shape[:2]
    scale = tile_width / width
    tile_height = max(1, round(height * scale))
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new('RGB', (columns * tile_width, rows * tile_height))
    for index, (image, uvd, seen) in enumerate(zip(images, joints_uvd, visible)):
        tile = Image.fromarray(image).resize((tile_width, tile_height))
        draw = ImageDraw.Draw(tile)
        points = np.asarray(uvd)[:, :2] * scale
        for parent, child in skeleton.BONES:
            colour = FINGER_COLOURS[skeleton.FINGER_OF_JOINT[child]]
            draw.line([tuple(points[parent]), tuple(points[child])], fill=colour, width=2)
        for joint, (u, v) in enumerate(points):
            outline = (0, 255, 0) if seen[joint] else (255, 0, 0)
            draw.ellipse([u - 2.5, v - 2.5, u + 2.5, v + 2.5], outline=outline)
        sheet.paste(tile, ((index % columns) * tile_width, (index // columns) * tile_height))
    return sheet
