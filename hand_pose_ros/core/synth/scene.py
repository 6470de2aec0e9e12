"""Scenes: hands plus held objects, table, torso, wall and clutter, sampled at random."""

from dataclasses import dataclass, field, replace

import numpy as np

from hand_pose_ros.core import skeleton
from hand_pose_ros.core.config_io import dataclass_from_dict
from hand_pose_ros.core.synth.hand_model import (
    Articulation, ArticulationConfig, HandShapeConfig, POSTURES, sample_articulation,
    sample_hand_shape)
from hand_pose_ros.core.synth.pose import (
    random_rotation, rotation_about_axis, sample_hand_pose, WristPoseConfig)
from hand_pose_ros.core.synth.render import Box, Cylinder, Plane, RoundCone, Sphere

# Part codes of everything in a scene (the hand mask covers PART_HAND only).
PART_HAND = 0
PART_FOREARM = 1
PART_OBJECT = 2
PART_TABLE = 3
PART_BODY = 4
PART_CLUTTER = 5
PART_WALL = 6
PART_NAMES = ('hand', 'forearm', 'object', 'table', 'body', 'clutter', 'wall')

# Skin albedo (linear RGB) from light to dark; hands draw a point between neighbours.
SKIN_TONES = np.array([
    [0.94, 0.78, 0.68], [0.87, 0.67, 0.55], [0.78, 0.57, 0.44], [0.66, 0.46, 0.33],
    [0.52, 0.34, 0.23], [0.38, 0.24, 0.16], [0.27, 0.17, 0.11]])
_GRASPS = ('power_grasp', 'pinch', 'tripod', 'relaxed')


@dataclass(frozen=True)
class SceneItem:
    """One non-hand primitive with its part code and albedo (RGB in [0, 1])."""

    primitive: object
    part: int
    albedo: tuple = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SceneConfig:
    """
    What a random scene contains. Set a probability to 0 to switch that element off.

    :param distance_range_m: palm-centre depth range of the primary hand.
    :param margin: image fraction kept free for the palm centre at each border.
    :param out_of_frame_prob: probability of a hand partially out of frame.
    :param facing_prob: probability of a palm facing the camera or facing away.
    :param object_prob: probability of a held object (cylinder, box or sphere).
    :param object_size_m: range of the held object's radius / half size.
    :param grasp_blend: range of how far a hand holding an object closes its fingers from
        its own random posture towards a grasp: 0 leaves the fingers free (a tool strapped
        to the palm, a controller), 1 is the grasp itself.
    :param table_prob: probability of a table under the hand.
    :param body_prob: probability of a torso, head and upper arm behind the hand.
    :param wall_prob: probability of a background wall.
    :param clutter_prob: probability of background clutter.
    :param max_clutter: largest number of clutter objects.
    :param second_hand_prob: probability of a second hand.
    :param forearm_skin_prob: probability of a bare forearm (else a sleeve colour).
    :param hand_shape: :class:`HandShapeConfig` (or a mapping of its fields, as in YAML
        data configs).
    :param articulation: :class:`ArticulationConfig`.
    """

    distance_range_m: tuple = (0.2, 1.5)
    margin: float = 0.12
    out_of_frame_prob: float = 0.1
    facing_prob: float = 0.5
    object_prob: float = 0.25
    object_size_m: tuple = (0.02, 0.06)
    grasp_blend: tuple = (0.5, 0.9)
    table_prob: float = 0.25
    body_prob: float = 0.4
    wall_prob: float = 0.5
    clutter_prob: float = 0.5
    max_clutter: int = 6
    second_hand_prob: float = 0.15
    forearm_skin_prob: float = 0.6
    hand_shape: HandShapeConfig = field(default_factory=HandShapeConfig)
    articulation: ArticulationConfig = field(default_factory=ArticulationConfig)

    def __post_init__(self):
        for name, kind in (('hand_shape', HandShapeConfig),
                           ('articulation', ArticulationConfig)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, dataclass_from_dict(
                    kind, getattr(self, name), f'scene.{name}'))
        for name in ('out_of_frame_prob', 'facing_prob', 'object_prob', 'table_prob',
                     'body_prob', 'wall_prob', 'clutter_prob', 'second_hand_prob',
                     'forearm_skin_prob'):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f'scene.{name} must be a probability, got {value}')
        lo, hi = self.grasp_blend
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f'scene.grasp_blend must be an increasing range in [0, 1], got '
                             f'{self.grasp_blend}')
        lo, hi = self.distance_range_m
        if not 0.05 <= lo <= hi:
            raise ValueError(f'scene.distance_range_m must be increasing and >= 0.05 m, got '
                             f'{self.distance_range_m}')

    @classmethod
    def hand_only(cls, **changes):
        """Return a configuration with one hand (and its forearm) and nothing else."""
        base = cls(out_of_frame_prob=0.0, object_prob=0.0, table_prob=0.0, body_prob=0.0,
                   wall_prob=0.0, clutter_prob=0.0, second_hand_prob=0.0)
        return replace(base, **changes)

    def wrist_pose(self):
        """Return the :class:`WristPoseConfig` of these settings."""
        return WristPoseConfig(distance_range_m=self.distance_range_m, margin=self.margin,
                               out_of_frame_prob=self.out_of_frame_prob,
                               facing_prob=self.facing_prob)


@dataclass(frozen=True)
class Scene:
    """
    Everything to render one frame.

    :param hands: tuple of :class:`HandPose`, primary hand first.
    :param items: tuple of :class:`SceneItem` (objects, table, body, wall, clutter).
    :param skin_albedo: (num_hands, 3) hand colours; forearm colours follow.
    :param forearm_albedo: (num_hands, 3).
    :param seed: per-frame seed for sensor noise and colour backgrounds.
    :param stamp_s: timestamp, seconds.
    """

    hands: tuple
    items: tuple = ()
    skin_albedo: np.ndarray = field(default_factory=lambda: np.array([SKIN_TONES[2]]))
    forearm_albedo: np.ndarray = field(default_factory=lambda: np.array([SKIN_TONES[2]]))
    seed: int = 0
    stamp_s: float = 0.0

    def with_items(self, *items):
        """Return a copy with more items."""
        return replace(self, items=tuple(self.items) + tuple(items))


def sample_skin(rng):
    """Return a (3,) skin albedo between two neighbouring tones, slightly jittered."""
    position = rng.uniform(0, len(SKIN_TONES) - 1)
    low = int(position)
    high = min(low + 1, len(SKIN_TONES) - 1)
    colour = SKIN_TONES[low] + (position - low) * (SKIN_TONES[high] - SKIN_TONES[low])
    return np.clip(colour * rng.uniform(0.92, 1.08, 3), 0, 1)


def _random_colour(rng):
    return tuple(rng.uniform(0.05, 0.95, 3))


def _held_object(rng, pose, config):
    """Return a primitive held against the palm of ``pose``."""
    kp = pose.keypoints_xyz
    palm = skeleton.palm_center(kp)
    normal = pose.rotation[:, 2]
    across = pose.rotation[:, 0]
    size = rng.uniform(*config.object_size_m)
    center = palm + normal * (size + 0.6 * pose.shape.palm_thickness_m) \
        + pose.rotation[:, 1] * rng.uniform(-0.01, 0.03)
    kind = rng.integers(3)
    if kind == 0:
        axis = across + rng.normal(0, 0.2, 3)
        return Cylinder(tuple(center), tuple(axis / np.linalg.norm(axis)), size,
                        rng.uniform(0.03, 0.1))
    if kind == 1:
        return Box(tuple(center), random_rotation(rng),
                   tuple(rng.uniform(0.4, 1.2, 3) * size))
    return Sphere(tuple(center), size)


def _body(rng, pose, items):
    """Append torso, head and upper arm behind the hand's elbow."""
    elbow = pose.translation + pose.forearm_length_m * pose.forearm_direction
    up = np.array([0.0, -1.0, 0.0])
    side = rng.choice([-1.0, 1.0])
    shoulder = elbow + np.array([side * rng.uniform(0.0, 0.15), rng.uniform(-0.35, -0.1),
                                 rng.uniform(0.1, 0.3)])
    shoulder[2] = max(shoulder[2], pose.translation[2] + 0.1)
    radius = rng.uniform(0.13, 0.17)
    chest = shoulder + np.array([-side * rng.uniform(0.12, 0.2), 0.12, rng.uniform(0.05, 0.1)])
    shirt = _random_colour(rng)
    items.append(SceneItem(RoundCone(tuple(chest), tuple(chest - 0.45 * up), radius,
                                     radius * 0.95), PART_BODY, shirt))
    items.append(SceneItem(Sphere(tuple(chest + 0.33 * up), rng.uniform(0.085, 0.105)),
                           PART_BODY, tuple(sample_skin(rng))))
    items.append(SceneItem(RoundCone(tuple(elbow), tuple(shoulder), rng.uniform(0.035, 0.045),
                                     rng.uniform(0.045, 0.055)), PART_BODY, shirt))


def _table(rng, hands, items):
    """Append a table top below the hands (gravity roughly along +y, camera pitched)."""
    down = rotation_about_axis([1.0, 0.0, 0.0], np.radians(rng.uniform(-35, 35))) \
        @ np.array([0.0, 1.0, 0.0])
    points = np.concatenate([h.keypoints_xyz for h in hands])
    height = float(np.max(points @ down)) + rng.uniform(0.0, 0.12)
    if height < 0.1:
        return  # hands at or above the camera's height: a table would hide them
    forward = np.cross(down, [1.0, 0.0, 0.0])
    forward *= np.sign(forward[2]) or 1.0
    rotation = np.stack([np.array([1.0, 0.0, 0.0]), down, forward], axis=1)
    anchor = points.mean(axis=0)
    anchor = anchor + (height - anchor @ down) * down
    half = np.array([rng.uniform(0.4, 1.0), 0.02, rng.uniform(0.4, 0.8)])
    center = anchor + 0.02 * down + forward * rng.uniform(-0.1, 0.3)
    items.append(SceneItem(Box(tuple(center), rotation, tuple(half)), PART_TABLE,
                           _random_colour(rng)))


def _clutter(rng, intrinsics, near_z, items, count):
    for _ in range(count):
        z = rng.uniform(max(near_z, 0.4), 3.5)
        u, v = rng.uniform(0, intrinsics.width), rng.uniform(0, intrinsics.height)
        center = np.array([(u - intrinsics.cx) / intrinsics.fx * z,
                           (v - intrinsics.cy) / intrinsics.fy * z, z])
        size = rng.uniform(0.04, 0.3)
        kind = rng.integers(3)
        if kind == 0:
            primitive = Box(tuple(center), random_rotation(rng),
                            tuple(size * rng.uniform(0.3, 1.0, 3)))
        elif kind == 1:
            primitive = Sphere(tuple(center), size * 0.6)
        else:
            axis = rng.normal(size=3)
            primitive = Cylinder(tuple(center), tuple(axis / np.linalg.norm(axis)),
                                 size * rng.uniform(0.2, 0.6), size)
        items.append(SceneItem(primitive, PART_CLUTTER, _random_colour(rng)))


def _wall(rng, near_z, items):
    z = rng.uniform(max(near_z + 0.3, 1.0), 4.0)
    normal = rotation_about_axis(rng.normal(size=3), np.radians(rng.uniform(0, 35))) \
        @ np.array([0.0, 0.0, -1.0])
    items.append(SceneItem(Plane((0.0, 0.0, z), tuple(normal)), PART_WALL,
                           _random_colour(rng)))


def sample_background(rng, intrinsics, config, hands):
    """
    Draw the table, body, wall and clutter items around posed hands.

    :param rng: ``numpy.random.Generator``.
    :param intrinsics: :class:`CameraIntrinsics` of the full image.
    :param config: :class:`SceneConfig` (its table, body, wall and clutter settings).
    :param hands: sequence of :class:`HandPose`, primary first.
    :return: list of :class:`SceneItem`.
    """
    items = []
    if rng.random() < config.table_prob:
        _table(rng, hands, items)
    if rng.random() < config.body_prob:
        _body(rng, hands[0], items)
    hand_far = float(max(h.keypoints_xyz[:, 2].max() for h in hands))
    if rng.random() < config.wall_prob:
        _wall(rng, hand_far, items)
    if rng.random() < config.clutter_prob and config.max_clutter > 0:
        _clutter(rng, intrinsics, hand_far + 0.1, items,
                 int(rng.integers(1, config.max_clutter + 1)))
    return items


def sample_scene(rng, intrinsics, config=SceneConfig()):
    """
    Draw a random scene for ``intrinsics`` (the full image).

    :param rng: ``numpy.random.Generator``.
    :param intrinsics: :class:`CameraIntrinsics`.
    :param config: :class:`SceneConfig`.
    :return: :class:`Scene`.
    """
    shape = sample_hand_shape(rng, None, config.hand_shape)
    holds = rng.random() < config.object_prob
    articulation = sample_articulation(rng, config.articulation)
    if holds:
        grasp = POSTURES[_GRASPS[int(rng.integers(len(_GRASPS)))]]
        articulation = Articulation(articulation.lerp(grasp, rng.uniform(*config.grasp_blend))
                                    .angles_deg)
    pose = sample_hand_pose(rng, shape, articulation, intrinsics, config.wrist_pose())
    hands = [pose]
    if rng.random() < config.second_hand_prob:
        other = sample_hand_shape(rng, 'left' if shape.handedness == 'right' else 'right',
                                  config.hand_shape)
        distance = float(np.clip(pose.keypoints_xyz[:, 2].mean() + rng.uniform(-0.15, 0.25),
                                 *config.distance_range_m))
        hands.append(sample_hand_pose(rng, other, sample_articulation(rng, config.articulation),
                                      intrinsics, config.wrist_pose(), distance_m=distance))
    items = []
    if holds:
        items.append(SceneItem(_held_object(rng, pose, config), PART_OBJECT,
                               _random_colour(rng)))
    items.extend(sample_background(rng, intrinsics, config, hands))
    if any(item.part == PART_BODY for item in items):
        # The body's upper arm continues the primary hand's forearm.
        hands[0] = replace(hands[0], upper_arm_length_m=0.0)
    skin = np.array([sample_skin(rng) for _ in hands])
    forearm = np.array([s if rng.random() < config.forearm_skin_prob else _random_colour(rng)
                        for s in skin])
    return Scene(tuple(hands), tuple(items), skin, forearm, int(rng.integers(2 ** 31)))
