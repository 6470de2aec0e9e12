"""Labelled synthetic depth (and colour) frames from random scenes and motion sequences."""

from dataclasses import dataclass, replace

import numpy as np

from hand_pose_ros.core.camera import (CameraIntrinsics, depth_to_metres, depth_to_millimetres,
                                       uvd_from_xyz)
from hand_pose_ros.core.synth.color import shade
from hand_pose_ros.core.synth.hand_model import joint_surface_radii
from hand_pose_ros.core.synth.render import ZBuffer
from hand_pose_ros.core.synth.scene import (
    PART_FOREARM, PART_HAND, sample_background, sample_scene, sample_skin, Scene, SceneConfig)
from hand_pose_ros.core.synth.sensor import apply_sensor, SensorConfig

# A joint counts as visible when the surface seen at its pixel is no more than its surface
# radius plus this margin in front of it.
VISIBILITY_MARGIN_M = 0.002


@dataclass(frozen=True)
class HandLabel:
    """
    Ground truth of one hand in a frame.

    :param joints_xyz: (21, 3) float64 keypoints, camera frame, metres.
    :param joints_uvd: (21, 3) float64 pixel u, pixel v, depth in metres.
    :param visible: (21,) bool; False when occluded (by the hand itself, another hand or an
        object) or outside the image.
    :param mask: (H, W) bool pixels showing this hand (palm and fingers, not the forearm).
    :param handedness: 'left' or 'right'.
    :param surface_radius_m: (21,) how far the hand surface may lie in front of each joint
        (a visible joint's pixel shows depth within this of the joint's depth).
    """

    joints_xyz: np.ndarray
    joints_uvd: np.ndarray
    visible: np.ndarray
    mask: np.ndarray
    handedness: str
    surface_radius_m: np.ndarray = None


@dataclass(frozen=True)
class Frame:
    """
    One rendered frame.

    :param depth_mm: (H, W) uint16 millimetres, 0 invalid.
    :param depth_m: (H, W) float32 metres, NaN invalid (the same values as ``depth_mm``).
    :param color: (H, W, 3) uint8 RGB or None.
    :param intrinsics: :class:`CameraIntrinsics` of this image.
    :param stamp_s: timestamp, seconds.
    :param hands: list of :class:`HandLabel`, primary hand first.
    :param parts: (H, W) int8 part code per pixel (see ``scene.PART_NAMES``), -1 empty.
    """

    depth_mm: np.ndarray
    depth_m: np.ndarray
    color: object
    intrinsics: CameraIntrinsics
    stamp_s: float
    hands: list
    parts: np.ndarray


def hand_crop_intrinsics(intrinsics, center_xyz, cube_m=0.2, size_px=176):
    """
    Return intrinsics that image a metric box around a point into a square crop.

    The camera centre is unchanged (same rays as the full camera, finer or coarser focal
    length), so rendering with these intrinsics gives the crop a model sees after cropping
    ``cube_m`` around ``center_xyz`` and resizing to ``size_px``.

    :param intrinsics: :class:`CameraIntrinsics` of the full camera.
    :param center_xyz: (3,) crop centre, camera frame, metres (z > 0).
    :param cube_m: edge of the metric box, metres.
    :param size_px: output crop size, pixels.
    :return: :class:`CameraIntrinsics` of the crop.
    """
    x, y, z = (float(c) for c in np.asarray(center_xyz, dtype=np.float64).reshape(3))
    if not z > 0:
        raise ValueError(f'crop centre must be in front of the camera, got z={z}')
    if not cube_m > 0:
        raise ValueError(f'cube_m must be positive, got {cube_m}')
    focal = size_px * z / cube_m
    ratio = intrinsics.fy / intrinsics.fx
    half = 0.5 * (size_px - 1)
    return CameraIntrinsics(focal, focal * ratio, half - focal * x / z,
                            half - focal * ratio * y / z, size_px, size_px)


class SyntheticGenerator:
    """
    Random labelled frames for one camera, deterministic for a seed.

    :param intrinsics: :class:`CameraIntrinsics` of the full image.
    :param scene: :class:`SceneConfig`.
    :param sensor: :class:`SensorConfig` (``SensorConfig.clean()`` for exact depth).
    :param seed: random seed.
    """

    def __init__(self, intrinsics, scene=SceneConfig(), sensor=SensorConfig(), seed=0):
        if not isinstance(intrinsics, CameraIntrinsics):
            raise ValueError('intrinsics must be a CameraIntrinsics')
        if not isinstance(scene, SceneConfig):
            raise ValueError('scene must be a SceneConfig')
        if not isinstance(sensor, SensorConfig):
            raise ValueError('sensor must be a SensorConfig')
        self.intrinsics = intrinsics
        self.scene_config = scene
        self.sensor_config = sensor
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def sample_scene(self):
        """Return a random :class:`Scene` (hands, arm, optional object, table, body, clutter)."""
        return sample_scene(self.rng, self.intrinsics, self.scene_config)

    def sample_frame(self, color=False):
        """Return a :class:`Frame` of a new random scene."""
        return self.render(self.sample_scene(), color=color)

    def _placement(self, intrinsics):
        """
        Return (offset_uv, full_size) of an image for pixel-seeded noise.

        A window of the generator's camera (same focal lengths) shares the full image's
        pixel grid, so its noise is that of the full image; any other camera (e.g. a metric
        hand crop) is an image of its own.
        """
        if (intrinsics.fx, intrinsics.fy) == (self.intrinsics.fx, self.intrinsics.fy):
            offset = (int(round(self.intrinsics.cx - intrinsics.cx)),
                      int(round(self.intrinsics.cy - intrinsics.cy)))
            return offset, (self.intrinsics.width, self.intrinsics.height)
        return (0, 0), (intrinsics.width, intrinsics.height)

    def render(self, scene, intrinsics=None, color=False):
        """
        Ray-cast a scene into a labelled frame.

        :param scene: :class:`Scene`.
        :param intrinsics: image to render; defaults to the generator's. A window of the full
            image (``CameraIntrinsics.window``) renders exactly that window of the full frame;
            its pixels outside the full image are empty (invalid depth, no hand mask), like a
            crop of a real frame. Other intrinsics (e.g. :func:`hand_crop_intrinsics`) render
            an image of their own.
        :param color: also render a colour image.
        :return: :class:`Frame`.
        """
        if intrinsics is None:
            intrinsics = self.intrinsics
        if not isinstance(intrinsics, CameraIntrinsics):
            raise ValueError('intrinsics must be a CameraIntrinsics or None')
        if not isinstance(scene, Scene):
            raise ValueError('scene must be a Scene')
        zbuffer = ZBuffer(intrinsics)
        owners, parts, albedo, radii, cones = [], [], [], [], []
        for h, pose in enumerate(scene.hands):
            capsules = pose.capsules
            radii.append(joint_surface_radii(capsules, pose.keypoints_xyz))
            cones.append(dict(capsules, index=len(owners) + np.arange(len(capsules['start']))))
            owners.extend([h] * len(capsules['start']))
            parts.extend(np.where(capsules['forearm'], PART_FOREARM, PART_HAND).tolist())
            if color:
                skin = np.asarray(scene.skin_albedo).reshape(-1, 3)
                sleeve = np.asarray(scene.forearm_albedo).reshape(-1, 3)
                albedo.extend(np.where(capsules['forearm'][:, None],
                                       sleeve[min(h, len(sleeve) - 1)],
                                       skin[min(h, len(skin) - 1)]))
        # All hands' round cones are intersected in one pass with the scene's.
        hand_cones = None
        if cones:
            hand_cones = {key: np.concatenate([c[key] for c in cones]) for key in
                          ('start', 'end', 'radius_start', 'radius_end', 'start_covered',
                           'index')}
        zbuffer.add_all([item.primitive for item in scene.items], len(owners), hand_cones)
        for item in scene.items:
            owners.append(-1)
            parts.append(item.part)
            if color:
                albedo.append(item.albedo)
        offset, full_size = self._placement(intrinsics)
        if offset != (0, 0) or full_size != (intrinsics.width, intrinsics.height):
            _blank_outside(zbuffer, offset, full_size)
        clean = zbuffer.depth_m()
        # Index -1 (empty pixel) picks the appended sentinel entry.
        part_map = np.take(np.array(parts + [-1], dtype=np.int8), zbuffer.index, mode='wrap')
        # Per primitive: does it show hand h's palm or fingers (last entry: empty pixel)?
        shows_hand = (np.array(parts + [-1]) == PART_HAND)[None, :] \
            & (np.array(owners + [-2])[None, :] == np.arange(len(scene.hands))[:, None])
        labels = [self._label(pose, radii[h], clean,
                              np.take(shows_hand[h], zbuffer.index, mode='wrap'), intrinsics)
                  for h, pose in enumerate(scene.hands)]
        noisy = apply_sensor(clean, self.sensor_config, intrinsics, scene.seed, offset,
                             full_size)
        depth_mm = depth_to_millimetres(noisy)
        depth_m = depth_to_metres(depth_mm)
        image = None
        if color:
            image = shade(clean, zbuffer.index, np.array(albedo).reshape(-1, 3), zbuffer.dx,
                          zbuffer.dy, scene.seed, offset, full_size)
        return Frame(depth_mm, depth_m, image, intrinsics, float(scene.stamp_s), labels,
                     part_map)

    @staticmethod
    def _label(pose, radii, clean, mask, intrinsics):
        xyz = pose.keypoints_xyz
        uvd = uvd_from_xyz(xyz, intrinsics)
        pixel = np.round(uvd[:, :2]).astype(np.int64)
        inside = (xyz[:, 2] > 0) & (pixel[:, 0] >= 0) & (pixel[:, 0] < intrinsics.width) \
            & (pixel[:, 1] >= 0) & (pixel[:, 1] < intrinsics.height)
        seen = np.full(len(xyz), np.nan)
        seen[inside] = clean[pixel[inside, 1], pixel[inside, 0]]
        limit = xyz[:, 2] - radii - VISIBILITY_MARGIN_M
        with np.errstate(invalid='ignore'):
            visible = inside & (seen >= limit)
        return HandLabel(xyz, uvd, visible, mask, pose.shape.handedness, radii)

    def motion_scene(self, motion):
        """
        Return the static part of a motion sequence's scene, with its first pose.

        Table, body, wall and clutter follow the scene configuration and are placed around
        every pose of the sequence (a table below the lowest, a wall behind the farthest;
        the body behind the first); held objects and second hands are left out.
        """
        items = sample_background(self.rng, self.intrinsics, self.scene_config, motion.poses)
        skin = np.array([sample_skin(self.rng)])
        return Scene((motion.poses[0],), tuple(items), skin, skin,
                     int(self.rng.integers(2 ** 31)))

    def render_motion(self, motion, color=False, intrinsics=None):
        """
        Yield one :class:`Frame` per frame of a :class:`MotionSequence` (camera fixed).

        :param motion: :class:`MotionSequence`.
        :param color: also render colour images.
        :param intrinsics: image to render; defaults to the generator's.
        """
        background = self.motion_scene(motion)
        for index in range(len(motion.poses)):
            yield self.render_motion_frame(background, motion, index, color, intrinsics)

    def render_motion_frame(self, background, motion, index, color=False, intrinsics=None):
        """
        Render frame ``index`` of a :class:`MotionSequence` in front of its background.

        :param background: the sequence's :meth:`motion_scene`.
        :param motion: :class:`MotionSequence`.
        :param index: frame index in the sequence.
        :param color: also render a colour image.
        :param intrinsics: image to render; defaults to the generator's.
        """
        scene = replace(background, hands=(motion.poses[index],), seed=background.seed + index,
                        stamp_s=float(motion.stamps_s[index]))
        return self.render(scene, intrinsics=intrinsics, color=color)


def _blank_outside(zbuffer, offset, full_size):
    """Empty the pixels of a window that lie outside the full sensor image, in place."""
    u0, v0 = offset
    width, height = full_size
    rows = np.arange(v0, v0 + zbuffer.depth.shape[0])
    columns = np.arange(u0, u0 + zbuffer.depth.shape[1])
    outside = ((rows < 0) | (rows >= height))[:, None] | ((columns < 0) | (columns >= width))
    zbuffer.depth[outside] = np.inf
    zbuffer.index[outside] = -1
