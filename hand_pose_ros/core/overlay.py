"""Skeleton overlays on depth images, for the debug topic, previews and the demo."""

import numpy as np

from hand_pose_ros.core.camera import depth_to_metres, uvd_from_xyz
from hand_pose_ros.core.skeleton import BONES, FINGER_OF_JOINT

FINGER_RGB = ((242, 89, 51), (250, 204, 38), (64, 204, 77), (51, 140, 242), (179, 89, 230))


def depth_to_gray(depth, near_m=None, far_m=None):
    """
    Return an (H, W, 3) uint8 rendering of a depth image (near = bright, invalid = black).

    :param depth: (H, W) uint16 mm or float32 m.
    """
    depth_m = depth_to_metres(depth)
    valid = np.isfinite(depth_m)
    if not valid.any():
        return np.zeros(depth_m.shape + (3,), np.uint8)
    near = np.nanpercentile(depth_m, 1) if near_m is None else near_m
    far = np.nanpercentile(depth_m, 99) if far_m is None else far_m
    scaled = 1.0 - (depth_m - near) / max(far - near, 1e-3)
    gray = np.where(valid, 50 + 150 * np.clip(scaled, 0.0, 1.0), 0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def draw_skeletons(rgb, intrinsics, skeletons, radius=3, width=2, color=None):
    """
    Draw hand skeletons over an image.

    :param rgb: (H, W, 3) uint8 image (not modified).
    :param intrinsics: camera of the image.
    :param skeletons: iterable of (21, 3) keypoints in metres, or (keypoints, valid) pairs.
    :param color: one RGB colour for everything; default: a colour per finger.
    :return: a new (H, W, 3) uint8 image.
    """
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for item in skeletons:
        keypoints, valid = item if isinstance(item, tuple) else (item, None)
        keypoints = np.asarray(keypoints, dtype=np.float64)
        valid = np.ones(len(keypoints), bool) if valid is None else np.asarray(valid, bool)
        valid = valid & np.isfinite(keypoints).all(axis=1) & (keypoints[:, 2] > 0)
        uv = uvd_from_xyz(keypoints, intrinsics)[:, :2]
        for parent, child in BONES:
            if valid[parent] and valid[child]:
                draw.line([tuple(uv[parent]), tuple(uv[child])],
                          fill=color or FINGER_RGB[FINGER_OF_JOINT[child]], width=width)
        for j in np.flatnonzero(valid):
            u, v = uv[j]
            fill = color or (FINGER_RGB[FINGER_OF_JOINT[j]] if j else (255, 255, 255))
            draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=fill)
    return np.asarray(image)
