"""
Build and parse the package's output messages (standard types only).

Hands passed in are objects with ``hand_id`` (int), ``keypoints_xyz`` (21, 3) metres in the
camera optical frame, ``scores`` (21,), ``valid`` (21,) bool and ``handedness``
('left' | 'right' | 'unknown'). Hands are published in ascending ``hand_id`` order.

The builders of per-joint messages take an optional :class:`MessagePool`: a publisher
that builds every frame keeps one and gets each hand's message objects refilled instead of
built again.
"""

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, TransformStamped
import numpy as np
from sensor_msgs.msg import JointState, PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from hand_pose_ros.core.kinematics import ANGLE_NAMES, bone_frames, joint_angles
from hand_pose_ros.core.rotations import quaternion_from_matrix
from hand_pose_ros.core.skeleton import (BONES, FINGER_OF_JOINT, JOINT_NAMES, NUM_JOINTS,
                                         palm_center, WRIST)

# One point per joint per hand: self-describing PointCloud2 layout.
KEYPOINT_DTYPE = np.dtype({
    'names': ['x', 'y', 'z', 'confidence', 'joint_id', 'hand_id', 'valid'],
    'formats': ['<f4', '<f4', '<f4', '<f4', '<u2', '<u2', 'u1'],
    'offsets': [0, 4, 8, 12, 16, 18, 20],
    'itemsize': 24,
})
# sensor_msgs/PointField datatypes
_POINT_FIELD_TYPES = {np.dtype('<f4'): 7, np.dtype('<u2'): 4, np.dtype('u1'): 2,
                      np.dtype('<f8'): 8, np.dtype('<i4'): 5, np.dtype('<u4'): 6,
                      np.dtype('<i2'): 3, np.dtype('i1'): 1}
_DTYPE_FROM_FIELD = {code: dtype for dtype, code in _POINT_FIELD_TYPES.items()}
# (name, offset, PointField datatype) of each keypoint field, in order.
_KEYPOINT_FIELDS = [(name, KEYPOINT_DTYPE.fields[name][1],
                     _POINT_FIELD_TYPES[KEYPOINT_DTYPE.fields[name][0]])
                    for name in KEYPOINT_DTYPE.names]

# Per-finger RGBA colours (thumb, index, middle, ring, pinky) for markers and overlays.
FINGER_COLORS = np.array([
    [0.95, 0.35, 0.20, 1.0], [0.98, 0.80, 0.15, 1.0], [0.25, 0.80, 0.30, 1.0],
    [0.20, 0.55, 0.95, 1.0], [0.70, 0.35, 0.90, 1.0]])
# Marker colour (finger) of each joint (the wrist takes the thumb's) and of each bone.
_JOINT_COLOR = np.maximum(FINGER_OF_JOINT, 0).tolist()
_BONE_COLOR = FINGER_OF_JOINT[BONES[:, 1]].tolist()
_BONE_LIST = BONES.tolist()


def _color(rgba):
    return ColorRGBA(r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3]))


# Read-only message objects that every message of their kind shares.
_KEYPOINT_FIELD_MSGS = tuple(PointField(name=name, offset=offset, datatype=datatype, count=1)
                             for name, offset, datatype in _KEYPOINT_FIELDS)
_FINGER_COLOR_MSGS = tuple(_color(rgba) for rgba in FINGER_COLORS)


class MessagePool:
    """
    Per-hand message objects reused from one frame's messages to the next.

    Building a Python message object costs far more than filling it: every constructor
    builds its default sub-messages (a ``TransformStamped`` builds a header, a time stamp, a
    transform, a vector and a quaternion), and one hand's poses, transforms and marker
    points are about a hundred objects. The builders take each hand's objects from the pool
    and refill them. A message built with a pool is therefore valid only until the next build
    with the same pool: publish it first (rclpy serialises a message when it is published).
    """

    def __init__(self):
        self._items = {}

    def take(self, kind, hand_id, factory, count):
        """Return ``count`` objects of one kind for one hand, made by ``factory`` once."""
        items = self._items.get((kind, hand_id))
        if items is None or len(items) < count:
            items = [factory() for _ in range(count)]
            self._items[(kind, hand_id)] = items
        return items if len(items) == count else items[:count]

    def keep_only(self, hand_ids):
        """Drop the objects of hands not in ``hand_ids`` (a lost hand's id never returns)."""
        self._items = {key: items for key, items in self._items.items() if key[1] in hand_ids}


def sorted_hands(hands):
    """Return hands in the documented publishing order (ascending ``hand_id``)."""
    return sorted(hands, key=lambda hand: hand.hand_id)


def keypoint_cloud(hands, header):
    """Return a ``sensor_msgs/PointCloud2`` with one point per joint per hand."""
    hands = sorted_hands(hands)
    points = np.zeros(len(hands) * NUM_JOINTS, dtype=KEYPOINT_DTYPE)
    if hands:
        xyz = np.concatenate([np.asarray(hand.keypoints_xyz, dtype=np.float32)
                              for hand in hands])
        points['x'], points['y'], points['z'] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        points['confidence'] = np.concatenate([hand.scores for hand in hands])
        points['joint_id'] = np.tile(np.arange(NUM_JOINTS), len(hands))
        hand_ids = np.array([hand.hand_id for hand in hands], dtype=KEYPOINT_DTYPE['hand_id'])
        points['hand_id'] = np.repeat(hand_ids, NUM_JOINTS)
        points['valid'] = np.concatenate([np.asarray(hand.valid, dtype=bool) for hand in hands])
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, len(points)
    msg.fields = list(_KEYPOINT_FIELD_MSGS)
    msg.is_bigendian = False
    msg.point_step = KEYPOINT_DTYPE.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = True
    msg.data = points.tobytes()
    return msg


def points_from_cloud(msg):
    """
    Return the points of a ``PointCloud2`` as a structured array read through its fields.

    :raises ValueError: for big-endian data, unknown field types or a short buffer.
    """
    if msg.is_bigendian:
        raise ValueError('big-endian PointCloud2 is not supported')
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in _DTYPE_FROM_FIELD or field.count != 1:
            raise ValueError(f'unsupported PointCloud2 field {field.name!r}')
        names.append(field.name)
        formats.append(_DTYPE_FROM_FIELD[field.datatype])
        offsets.append(field.offset)
    dtype = np.dtype({'names': names, 'formats': formats, 'offsets': offsets,
                      'itemsize': msg.point_step})
    count = msg.width * msg.height
    data = memoryview(msg.data).cast('B') if not isinstance(msg.data, bytes) else msg.data
    if len(data) < count * msg.point_step or msg.row_step < msg.width * msg.point_step:
        raise ValueError('PointCloud2 data is shorter than width x height x point_step')
    rows = np.frombuffer(data, dtype=np.uint8)[:msg.row_step * msg.height]
    rows = rows.reshape(msg.height, msg.row_step)[:, :msg.width * msg.point_step]
    return np.ascontiguousarray(rows).view(dtype).reshape(-1)


def hands_from_cloud(msg):
    """
    Parse a keypoint cloud into per-hand arrays.

    :return: list of dicts with hand_id, keypoints_xyz (21, 3), scores (21,), valid (21,),
        in ascending hand_id order.
    :raises ValueError: when fields are missing or a hand does not have 21 joints.
    """
    points = points_from_cloud(msg)
    missing = set(KEYPOINT_DTYPE.names) - set(points.dtype.names or ())
    if missing:
        raise ValueError(f'keypoint cloud lacks fields {sorted(missing)}')
    hands = []
    for hand_id in np.unique(points['hand_id']):
        block = points[points['hand_id'] == hand_id]
        if len(block) != NUM_JOINTS or set(block['joint_id']) != set(range(NUM_JOINTS)):
            raise ValueError(f'hand {hand_id} has {len(block)} points, expected one per joint')
        block = block[np.argsort(block['joint_id'])]
        hands.append({
            'hand_id': int(hand_id),
            'keypoints_xyz': np.stack([block['x'], block['y'], block['z']], 1).astype(np.float64),
            'scores': block['confidence'].astype(np.float64),
            'valid': block['valid'].astype(bool),
        })
    return hands


def _set_pose(pose, position, quaternion):
    """Fill a ``geometry_msgs/Pose`` from Python floats (x, y, z) and (x, y, z, w)."""
    position_msg, orientation = pose.position, pose.orientation
    position_msg.x, position_msg.y, position_msg.z = position
    orientation.x, orientation.y, orientation.z, orientation.w = quaternion
    return pose


def hand_geometry(hands):
    """
    Return {hand_id: (palm origin (3,), palm quaternion (4,), joint quaternions (21, 4))}.

    Computed once per frame and shared by the pose, palm and TF messages.
    """
    if not hands:
        return {}
    keypoints = np.stack([np.asarray(hand.keypoints_xyz, dtype=np.float64) for hand in hands])
    # One pass for every joint of every hand; the wrist's bone frame is the palm frame.
    quaternions = quaternion_from_matrix(bone_frames(keypoints))
    return {hand.hand_id: (origin, q[WRIST], q)
            for hand, origin, q in zip(hands, palm_center(keypoints), quaternions)}


def joint_pose_array(hands, header, geometry=None, pool=None):
    """Return a ``geometry_msgs/PoseArray``: 21 poses per hand, orientation = bone frame."""
    geometry = geometry or hand_geometry(hands)
    pool = MessagePool() if pool is None else pool
    msg = PoseArray()
    msg.header = header
    poses = []
    for hand in sorted_hands(hands):
        quaternions = geometry[hand.hand_id][2].tolist()
        poses += map(_set_pose, pool.take('pose', hand.hand_id, Pose, NUM_JOINTS),
                     np.asarray(hand.keypoints_xyz).tolist(), quaternions)
    msg.poses = poses
    return msg


def palm_pose(hand, header, geometry=None):
    """Return the palm frame of ``hand`` as ``geometry_msgs/PoseStamped``."""
    origin, quaternion, _ = (geometry or hand_geometry([hand]))[hand.hand_id]
    msg = PoseStamped()
    msg.header = header
    _set_pose(msg.pose, origin.tolist(), quaternion.tolist())
    return msg


def joint_state_prefixes(hands):
    """
    Return {hand_id: name prefix} for the joint states.

    The first hand (lowest id) of each known handedness is named ``left_`` / ``right_``;
    other hands are named ``hand_<id>_``.
    """
    prefixes, taken = {}, set()
    for hand in sorted_hands(hands):
        if hand.handedness in ('left', 'right') and hand.handedness not in taken:
            taken.add(hand.handedness)
            prefixes[hand.hand_id] = f'{hand.handedness}_'
        else:
            prefixes[hand.hand_id] = f'hand_{hand.hand_id}_'
    return prefixes


def joint_state(hands, header):
    """
    Return a ``sensor_msgs/JointState`` of finger articulation angles (radians).

    A hand's ``joint_angles`` attribute, when it has one that is not None (the filter's
    ``TrackedHand``), is used as is; the others' are computed from their keypoints.
    """
    msg = JointState()
    msg.header = header
    hands = sorted_hands(hands)
    if not hands:
        return msg
    prefixes = joint_state_prefixes(hands)
    for hand in hands:
        msg.name.extend(prefixes[hand.hand_id] + name for name in ANGLE_NAMES)
    angles = [getattr(hand, 'joint_angles', None) for hand in hands]
    missing = [i for i, value in enumerate(angles) if value is None]
    if missing:
        computed = joint_angles(
            np.stack([np.asarray(hands[i].keypoints_xyz) for i in missing]),
            [hands[i].handedness for i in missing])
        for i, value in zip(missing, computed):
            angles[i] = value
    msg.position.extend(np.concatenate(angles).tolist())
    return msg


def hand_frame_names(prefix, hand_id):
    """Return (palm frame, [21 joint frames]) TF names of a hand."""
    palm = f'{prefix}hand_{hand_id}'
    return palm, [f'{palm}_{name}' for name in JOINT_NAMES]


def tf_message(hands, header, prefix='', geometry=None, pool=None):
    """Return a ``tf2_msgs/TFMessage``: a palm frame and valid joint frames per hand."""
    geometry = geometry or hand_geometry(hands)
    pool = MessagePool() if pool is None else pool
    msg = TFMessage()
    transforms = []
    for hand in sorted_hands(hands):
        palm_name, joint_names = hand_frame_names(prefix, hand.hand_id)
        origin, palm_quaternion, quaternions = geometry[hand.hand_id]
        valid = np.flatnonzero(hand.valid)
        # Object 0 is the palm's, 1 + j joint j's: each frame keeps its own object.
        objects = pool.take('transform', hand.hand_id, TransformStamped, 1 + NUM_JOINTS)
        frames = [(objects[0], palm_name)] + [(objects[1 + j], joint_names[j]) for j in valid]
        positions = [origin.tolist()] + np.asarray(hand.keypoints_xyz)[valid].tolist()
        rotations = [palm_quaternion.tolist()] + quaternions[valid].tolist()
        for (transform, child), position, quaternion in zip(frames, positions, rotations):
            transform.header = header
            transform.child_frame_id = child
            t, r = transform.transform.translation, transform.transform.rotation
            t.x, t.y, t.z = position
            r.x, r.y, r.z, r.w = quaternion
            transforms.append(transform)
    msg.transforms = transforms
    return msg


def _set_point(point, xyz):
    """Fill a ``geometry_msgs/Point`` from Python floats (x, y, z)."""
    point.x, point.y, point.z = xyz
    return point


def _hand_markers(hand_id):
    """Return the (joints, bones, label) markers of a hand, their fixed fields set."""
    ns = f'hand_{hand_id}'
    joints = Marker(ns=ns, id=0, type=Marker.SPHERE_LIST, action=Marker.ADD)
    joints.scale.x = joints.scale.y = joints.scale.z = 0.012
    bones = Marker(ns=ns, id=1, type=Marker.LINE_LIST, action=Marker.ADD)
    bones.scale.x = 0.006
    label = Marker(ns=ns, id=2, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
    label.scale.z = 0.025
    label.color = _color((1.0, 1.0, 1.0, 1.0))
    for marker in (joints, bones, label):
        marker.pose.orientation.w = 1.0
    return [joints, bones, label]


def marker_array(hands, header, lost_ids=(), lifetime_s=0.5, pool=None):
    """
    Return a ``visualization_msgs/MarkerArray`` of joints, bones and a label per hand.

    Markers of ``lost_ids`` (hands no longer tracked) are deleted (namespace ``hand_<id>``).
    Within the message, the markers share their header, lifetime, colour objects and the
    joint points of a hand (as the bones' end points).
    """
    pool = MessagePool() if pool is None else pool
    lifetime = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    msg = MarkerArray()
    markers = []
    for hand_id in sorted(lost_ids):
        markers += [Marker(header=header, ns=f'hand_{hand_id}', id=marker_id,
                           action=Marker.DELETE) for marker_id in range(3)]
    colors = _FINGER_COLOR_MSGS
    for hand in sorted_hands(hands):
        xyz, valid = np.asarray(hand.keypoints_xyz), np.asarray(hand.valid, bool).tolist()
        # Point NUM_JOINTS is the label's position.
        points = list(map(_set_point, pool.take('point', hand.hand_id, Point, NUM_JOINTS + 1),
                          xyz.tolist() + [(xyz[0] + (0.0, -0.03, 0.0)).tolist()]))
        joints, bones, label = pool.take('markers', hand.hand_id,
                                         lambda hand_id=hand.hand_id: _hand_markers(hand_id),
                                         1)[0]
        joints.points = [points[j] for j in range(NUM_JOINTS) if valid[j]]
        joints.colors = [colors[_JOINT_COLOR[j]] for j in range(NUM_JOINTS) if valid[j]]
        drawn = [b for b, (parent, child) in enumerate(_BONE_LIST)
                 if valid[parent] and valid[child]]
        bones.points = [points[j] for b in drawn for j in _BONE_LIST[b]]
        bones.colors = [colors[_BONE_COLOR[b]] for b in drawn for _ in range(2)]
        label.text = f'hand {hand.hand_id} ({hand.handedness})'
        label.pose.position = points[NUM_JOINTS]
        for marker in (joints, bones, label):
            marker.header = header
            marker.lifetime = lifetime
        markers += [joints, bones, label]
    msg.markers = markers
    return msg


def visible_hands(tracks):
    """Return the tracks shown as hands: at least one valid joint and finite keypoints."""
    return sorted_hands(t for t in tracks
                        if np.asarray(t.valid).any() and np.isfinite(t.keypoints_xyz).all())


def frame_outputs(tracks, header, tf_prefix='', lost_ids=(), marker_lifetime_s=0.5,
                  publish_tf=True, markers=True, pool=None):
    """
    Build every output message of one frame.

    The keypoint cloud carries every track (joints past the gap limit have ``valid = 0``);
    the other outputs only :func:`visible_hands`: a hand whose joints are all invalid counts
    as lost, so its TF frames stop and its markers are deleted.

    :param markers: build the markers (False: None, e.g. while nobody displays them).
    :param pool: :class:`MessagePool` kept from frame to frame (the messages are then valid
        until the next call with it); None builds new messages.
    :return: {output name: message or None}: keypoints, joints, joint_states, palm, tf,
        markers.
    """
    hands = visible_hands(tracks)
    geometry = hand_geometry(hands)
    pool = MessagePool() if pool is None else pool
    pool.keep_only({hand.hand_id for hand in hands})
    return {
        'keypoints': keypoint_cloud(tracks, header),
        'joints': joint_pose_array(hands, header, geometry, pool),
        'joint_states': joint_state(hands, header),
        'palm': palm_pose(hands[0], header, geometry) if hands else None,
        'tf': tf_message(hands, header, tf_prefix, geometry, pool)
        if hands and publish_tf else None,
        'markers': marker_array(hands, header, lost_ids, marker_lifetime_s, pool)
        if markers else None,
    }
