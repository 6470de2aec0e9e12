"""
Encode and parse the package's output messages (standard types only).

Hands passed in are objects with ``hand_id`` (int), ``keypoints_xyz`` (21, 3) metres in the
camera optical frame, ``scores`` (21,), ``valid`` (21,) bool and ``handedness``
('left' | 'right' | 'unknown'). Hands are published in ascending ``hand_id`` order.

Every builder returns its message serialised (CDR bytes, written by :mod:`~hand_pose_ros.ros.cdr`
without message objects): a publisher publishes the bytes as they are, and
``rclpy.serialization.deserialize_message(data, OUTPUT_TYPES[name])`` gives the message.
"""

import functools
import struct

from geometry_msgs.msg import PoseArray, PoseStamped
import numpy as np
from sensor_msgs.msg import JointState, PointCloud2
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from hand_pose_ros.core.kinematics import ANGLE_NAMES, defined_geometry, hand_from_angles
from hand_pose_ros.core.rotations import quaternion_from_matrix
from hand_pose_ros.core.skeleton import (BONES, FINGER_OF_JOINT, JOINT_NAMES, NUM_JOINTS,
                                         palm_center, WRIST)
from hand_pose_ros.ros import cdr
from hand_pose_ros.ros.params import TF_NAMES

# Message type of each output of frame_outputs.
OUTPUT_TYPES = {'keypoints': PointCloud2, 'joints': PoseArray, 'joint_states': JointState,
                'palm': PoseStamped, 'tf': TFMessage, 'markers': MarkerArray}

# One point per joint per hand: self-describing PointCloud2 layout. handedness: 0 unknown,
# 1 left, 2 right; predicted: the joint was carried through a gap by the motion model, not
# measured in this frame.
KEYPOINT_DTYPE = np.dtype({
    'names': ['x', 'y', 'z', 'confidence', 'joint_id', 'hand_id', 'valid', 'handedness',
              'predicted'],
    'formats': ['<f4', '<f4', '<f4', '<f4', '<u2', '<u2', 'u1', 'u1', 'u1'],
    'offsets': [0, 4, 8, 12, 16, 18, 20, 21, 22],
    'itemsize': 24,
})
# The fields a keypoint cloud must have (handedness and predicted were added later).
REQUIRED_KEYPOINT_FIELDS = ('x', 'y', 'z', 'confidence', 'joint_id', 'hand_id', 'valid')
HANDEDNESS_CODES = {'unknown': 0, 'left': 1, 'right': 2}
_HANDEDNESS_NAMES = {code: name for name, code in HANDEDNESS_CODES.items()}
# sensor_msgs/PointField datatypes
_POINT_FIELD_TYPES = {np.dtype('<f4'): 7, np.dtype('<u2'): 4, np.dtype('u1'): 2,
                      np.dtype('<f8'): 8, np.dtype('<i4'): 5, np.dtype('<u4'): 6,
                      np.dtype('<i2'): 3, np.dtype('i1'): 1}
_DTYPE_FROM_FIELD = {code: dtype for dtype, code in _POINT_FIELD_TYPES.items()}


def _fragment(*parts):
    """Return CDR parts (each starting with a 4-aligned primitive) written one after another."""
    writer = cdr.CdrWriter(encapsulation=False)
    for part in parts:
        writer.put(part, 4)
    return writer.getvalue()


# The keypoint cloud's field sequence: per field a name, offset, datatype and count of 1.
_KEYPOINT_FIELDS = _fragment(struct.pack('<I', len(KEYPOINT_DTYPE.names)), *(
    part for name in KEYPOINT_DTYPE.names
    for part in (cdr.string(name),
                 struct.pack('<IB3xI', KEYPOINT_DTYPE.fields[name][1],
                             _POINT_FIELD_TYPES[KEYPOINT_DTYPE.fields[name][0]], 1))))

# Per-finger RGBA colours (thumb, index, middle, ring, pinky) for markers and overlays.
FINGER_COLORS = np.array([
    [0.95, 0.35, 0.20, 1.0], [0.98, 0.80, 0.15, 1.0], [0.25, 0.80, 0.30, 1.0],
    [0.20, 0.55, 0.95, 1.0], [0.70, 0.35, 0.90, 1.0]])
# Marker colour of each joint (its finger's; the wrist takes the thumb's) and of each bone's
# two end points (its child joint's finger), float32 as in std_msgs/ColorRGBA.
_JOINT_COLORS = FINGER_COLORS[np.maximum(FINGER_OF_JOINT, 0)].astype('<f4')
_BONE_COLORS = np.repeat(FINGER_COLORS[FINGER_OF_JOINT[BONES[:, 1]]], 2, axis=0).astype('<f4')
_WHITE = (1.0, 1.0, 1.0, 1.0)
# Label position relative to the wrist, metres.
_LABEL_OFFSET = np.array([0.0, -0.03, 0.0])
# visualization_msgs/Marker fields, all empty, between ``colors`` and ``text``
# (texture_resource, texture: header, format, data; uv_coordinates) and between ``text``
# and ``mesh_use_embedded_materials`` (mesh_resource, mesh_file: filename, data): the layout
# of Humble and later.
_EMPTY_STRING = cdr.string('')
_EMPTY_SEQUENCE = struct.pack('<I', 0)
_MARKER_BEFORE_TEXT = _fragment(_EMPTY_STRING, cdr.stamp(0, 0) + _EMPTY_STRING,
                                _EMPTY_STRING, _EMPTY_SEQUENCE, _EMPTY_SEQUENCE)
_MARKER_AFTER_TEXT = _fragment(_EMPTY_STRING, _EMPTY_STRING, _EMPTY_SEQUENCE)
_MARKER_IDS = struct.Struct('<iii')
_COLOR = struct.Struct('<4f')
_NO_POINTS = np.zeros((0, 3))
_NO_COLORS = np.zeros((0, 4), dtype='<f4')
# Pose (position, orientation) and scale of a marker without its own: identity, no size.
_IDENTITY_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def sorted_hands(hands):
    """Return hands in the documented publishing order (ascending ``hand_id``)."""
    return sorted(hands, key=lambda hand: hand.hand_id)


def keypoint_cloud(hands, header):
    """Return a ``sensor_msgs/PointCloud2`` (CDR bytes) with one point per joint per hand."""
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
        points['handedness'] = np.repeat([HANDEDNESS_CODES[hand.handedness] for hand in hands],
                                         NUM_JOINTS)
        points['predicted'] = np.concatenate([
            np.asarray(getattr(hand, 'predicted_joints', np.zeros(NUM_JOINTS, bool)), bool)
            for hand in hands])
    data = points.tobytes()
    writer = cdr.CdrWriter()
    writer.put(cdr.header(header), 4)
    writer.uint32(1, len(points))  # height, width
    writer.put(_KEYPOINT_FIELDS, 4)
    writer.put(b'\x00')  # is_bigendian
    # point_step, row_step, then the data as a uint8 sequence
    writer.uint32(KEYPOINT_DTYPE.itemsize, len(data), len(data))
    writer.put(data)
    # is_dense: no NaN point (a joint a track has not seen yet is NaN until it is).
    finite = all(np.isfinite(points[axis]).all() for axis in 'xyz')
    writer.put(b'\x01' if finite else b'\x00')
    return writer.getvalue()


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
    data = memoryview(msg.data).cast('B') if not isinstance(msg.data, bytes) else msg.data
    if msg.row_step < msg.width * msg.point_step:
        raise ValueError(f'PointCloud2 row_step {msg.row_step} is shorter than width x '
                         f'point_step ({msg.width * msg.point_step})')
    if len(data) < msg.row_step * msg.height:
        raise ValueError(f'PointCloud2 data holds {len(data)} bytes, fewer than row_step x '
                         f'height ({msg.row_step * msg.height})')
    rows = np.frombuffer(data, dtype=np.uint8)[:msg.row_step * msg.height]
    rows = rows.reshape(msg.height, msg.row_step)[:, :msg.width * msg.point_step]
    return np.ascontiguousarray(rows).view(dtype).reshape(-1)


def hands_from_cloud(msg):
    """
    Parse a keypoint cloud into per-hand arrays.

    :return: list of dicts with hand_id, keypoints_xyz (21, 3), scores (21,), valid (21,),
        and, when the cloud has those fields, handedness ('unknown', 'left' or 'right') and
        predicted (21,), in ascending hand_id order.
    :raises ValueError: when fields are missing or a hand does not have 21 joints.
    """
    points = points_from_cloud(msg)
    missing = set(REQUIRED_KEYPOINT_FIELDS) - set(points.dtype.names or ())
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
        if 'handedness' in points.dtype.names:
            hands[-1]['handedness'] = _HANDEDNESS_NAMES.get(int(block['handedness'][0]),
                                                            'unknown')
        if 'predicted' in points.dtype.names:
            hands[-1]['predicted'] = block['predicted'].astype(bool)
    return hands


def valid_keypoints(hand):
    """Return a hand's (21, 3) keypoints with NaN where its ``valid`` flags are False."""
    xyz = np.asarray(hand.keypoints_xyz, dtype=np.float64)
    return np.where(np.asarray(hand.valid, dtype=bool)[:, None], xyz, np.nan)


def hand_geometry(hands):
    """
    Return {hand_id: (palm origin, palm quaternion, joint quaternions, joint angles)}.

    Shapes (3,), (4,), (21, 4) and (len(ANGLE_NAMES),). Computed once per frame and shared
    by the pose, palm, joint state and TF messages, from the valid joints only: what they
    leave undefined (an invalid joint, a degenerate frame: see
    ``kinematics.defined_geometry``) is NaN, so a palm or an angle is never built on a joint
    the filter gave up (its last position, kept in the keypoint cloud with ``valid = 0``).
    A hand's ``joint_angles`` attribute (the filter's ``TrackedHand``), when every hand has
    one that is not None, is used instead of measuring the angles again.
    """
    if not hands:
        return {}
    keypoints = np.stack([valid_keypoints(hand) for hand in hands])
    given = [getattr(hand, 'joint_angles', None) for hand in hands]
    # One pass for every joint of every hand; the wrist's bone frame is the palm frame.
    frames, angles = defined_geometry(
        keypoints, [hand.handedness for hand in hands],
        None if any(value is None for value in given) else np.stack(given))
    with np.errstate(invalid='ignore'):
        quaternions = quaternion_from_matrix(frames)
    return {hand.hand_id: (origin, q[WRIST], q, a)
            for hand, origin, q, a in zip(hands, palm_center(keypoints), quaternions, angles)}


def joint_pose_array(hands, header, geometry=None):
    """
    Return a ``geometry_msgs/PoseArray`` (CDR bytes).

    21 poses per hand: position = joint, orientation = the bone frame (``hand_geometry``);
    NaN for an invalid joint and where the valid ones leave the frame undefined.
    """
    geometry = geometry or hand_geometry(hands)
    writer = cdr.CdrWriter()
    writer.put(cdr.header(header), 4)
    hands = sorted_hands(hands)
    writer.uint32(len(hands) * NUM_JOINTS)
    for hand in hands:
        writer.float64s(np.concatenate([valid_keypoints(hand), geometry[hand.hand_id][2]],
                                       axis=1))
    return writer.getvalue()


def palm_defined(geometry, hand_id):
    """Return whether ``hand_geometry`` defines a hand's palm frame (origin and rotation)."""
    return bool(np.isfinite(np.concatenate(geometry[hand_id][:2])).all())


def palm_pose(hand, header, geometry=None):
    """
    Return the palm frame of ``hand`` as ``geometry_msgs/PoseStamped`` (CDR bytes).

    None when the hand's keypoints leave it undefined (``hand_geometry``).
    """
    geometry = geometry or hand_geometry([hand])
    if not palm_defined(geometry, hand.hand_id):
        return None
    origin, quaternion = geometry[hand.hand_id][:2]
    writer = cdr.CdrWriter()
    writer.put(cdr.header(header), 4)
    writer.float64s(np.concatenate([origin, quaternion]))
    return writer.getvalue()


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


@functools.lru_cache(maxsize=64)
def _angle_names(prefix):
    """Return the CDR strings of a hand's joint state names (``prefix`` + ANGLE_NAMES)."""
    return _fragment(*(cdr.string(prefix + name) for name in ANGLE_NAMES))


def joint_state(hands, header, geometry=None):
    """
    Return a ``sensor_msgs/JointState`` (CDR bytes) of finger articulation angles (radians).

    The angles are those of ``hand_geometry``; an angle the keypoints leave undefined is left
    out (its name too).
    """
    geometry = geometry or hand_geometry(hands)
    hands = sorted_hands(hands)
    prefixes = joint_state_prefixes(hands)
    angles = [geometry[hand.hand_id][3] for hand in hands]
    defined = [np.isfinite(value) for value in angles]
    count = sum(int(mask.sum()) for mask in defined)
    writer = cdr.CdrWriter()
    writer.put(cdr.header(header), 4)
    writer.uint32(count)
    for hand, mask in zip(hands, defined):
        if mask.all():
            writer.put(_angle_names(prefixes[hand.hand_id]), 4)
        else:
            writer.put(_fragment(*(cdr.string(prefixes[hand.hand_id] + name)
                                   for name, sent in zip(ANGLE_NAMES, mask) if sent)), 4)
    writer.uint32(count)
    for value, mask in zip(angles, defined):
        writer.float64s(value[mask])
    writer.uint32(0, 0)  # no velocities, no efforts
    return writer.getvalue()


def hand_frame_labels(hands, tf_names='id'):
    """
    Return {hand_id: TF name of its palm frame, before the prefix}.

    ``'id'``: ``hand_<id>``. ``'side'``: ``left_hand`` / ``right_hand`` for the hands the
    joint states name by side (:func:`joint_state_prefixes`), ``hand_<id>`` for the others.
    """
    if tf_names not in TF_NAMES:
        raise ValueError(f'tf_names must be one of {TF_NAMES}, got {tf_names!r}')
    if tf_names == 'id':
        return {hand.hand_id: f'hand_{hand.hand_id}' for hand in hands}
    return {hand_id: f'{prefix}hand' if prefix in ('left_', 'right_') else prefix.rstrip('_')
            for hand_id, prefix in joint_state_prefixes(hands).items()}


def hand_frame_names(prefix, label):
    """Return (palm frame, [21 joint frames]) TF names of a hand (``hand_frame_labels``)."""
    palm = f'{prefix}{label}'
    return palm, [f'{palm}_{name}' for name in JOINT_NAMES]


@functools.lru_cache(maxsize=64)
def _frame_names(prefix, label):
    """Return the CDR strings of a hand's palm frame and its 21 joint frames."""
    palm, joints = hand_frame_names(prefix, label)
    return [cdr.string(name) for name in [palm] + joints]


def tf_message(hands, header, prefix='', geometry=None, tf_names='id'):
    """
    Return a ``tf2_msgs/TFMessage`` (CDR bytes): palm and valid joint frames per hand.

    Frames the keypoints leave undefined (``hand_geometry``) are left out; None when no
    frame is left. ``tf_names`` names them by hand id or by side (:func:`hand_frame_labels`).
    """
    geometry = geometry or hand_geometry(hands)
    header_cdr = cdr.header(header)
    labels = hand_frame_labels(hands, tf_names)
    frames = []
    for hand in sorted_hands(hands):
        origin, palm_quaternion, quaternions = geometry[hand.hand_id][:3]
        names = _frame_names(prefix, labels[hand.hand_id])
        # Row 0 is the palm's transform, row 1 + j joint j's: translation, rotation.
        values = np.concatenate([
            np.concatenate([origin, palm_quaternion])[None],
            np.concatenate([np.asarray(hand.keypoints_xyz, dtype=np.float64),
                            quaternions], axis=1)])
        sent = np.isfinite(values).all(axis=1)
        sent[1:] &= np.asarray(hand.valid, dtype=bool)
        data = values.astype('<f8').tobytes()
        frames += [(names[row], data[56 * row:56 * (row + 1)])
                   for row in np.flatnonzero(sent).tolist()]
    if not frames:
        return None
    writer = cdr.CdrWriter()
    writer.uint32(len(frames))
    for child, transform in frames:
        writer.put(header_cdr, 4)
        writer.put(child, 4)
        writer.put(transform, 8)
    return writer.getvalue()


def _put_marker(writer, header, ns, marker_id, kind, action, pose=_IDENTITY_POSE,
                scale=(0.0, 0.0, 0.0), color=(0.0, 0.0, 0.0, 0.0), lifetime=(0, 0),
                points=_NO_POINTS, colors=_NO_COLORS, text=''):
    """Write one ``visualization_msgs/Marker`` (header and ``ns`` as CDR bytes)."""
    writer.put(header, 4)
    writer.put(ns, 4)
    writer.put(_MARKER_IDS.pack(marker_id, kind, action), 4)
    writer.float64s(pose + scale)
    writer.put(_COLOR.pack(*color) + cdr.stamp(*lifetime), 4)
    writer.put(b'\x00')  # frame_locked
    writer.uint32(len(points))
    writer.float64s(points)
    writer.uint32(len(colors))
    writer.put(colors.tobytes(), 4)
    writer.put(_MARKER_BEFORE_TEXT, 4)
    writer.put(cdr.string(text), 4)
    writer.put(_MARKER_AFTER_TEXT, 4)
    writer.put(b'\x00')  # mesh_use_embedded_materials


def marker_array(hands, header, lost_ids=(), lifetime_s=0.5):
    """
    Return a ``visualization_msgs/MarkerArray`` (CDR bytes): joints, bones and a label per hand.

    Markers of ``lost_ids`` (hands no longer tracked) are deleted (namespace ``hand_<id>``,
    ids 0 to 2).
    """
    header_cdr = cdr.header(header)
    lifetime = (int(lifetime_s), int((lifetime_s % 1) * 1e9))
    hands = sorted_hands(hands)
    writer = cdr.CdrWriter()
    writer.uint32(3 * (len(lost_ids) + len(hands)))
    for hand_id in sorted(lost_ids):
        ns = cdr.string(f'hand_{hand_id}')
        for marker_id in range(3):
            _put_marker(writer, header_cdr, ns, marker_id, Marker.ARROW, Marker.DELETE)
    for hand in hands:
        ns = cdr.string(f'hand_{hand.hand_id}')
        xyz = np.asarray(hand.keypoints_xyz, dtype=np.float64)
        valid = np.asarray(hand.valid, dtype=bool) & np.isfinite(xyz).all(axis=1)
        drawn = valid[BONES].all(axis=1)
        label_at = xyz[WRIST] if valid[WRIST] else xyz[valid].mean(axis=0)
        _put_marker(writer, header_cdr, ns, 0, Marker.SPHERE_LIST, Marker.ADD,
                    scale=(0.012, 0.012, 0.012), lifetime=lifetime, points=xyz[valid],
                    colors=_JOINT_COLORS[valid])
        _put_marker(writer, header_cdr, ns, 1, Marker.LINE_LIST, Marker.ADD,
                    scale=(0.006, 0.0, 0.0), lifetime=lifetime,
                    points=xyz[BONES[drawn]].reshape(-1, 3),
                    colors=_BONE_COLORS.reshape(-1, 2, 4)[drawn].reshape(-1, 4))
        _put_marker(writer, header_cdr, ns, 2, Marker.TEXT_VIEW_FACING, Marker.ADD,
                    pose=tuple((label_at + _LABEL_OFFSET).tolist()) + _IDENTITY_POSE[3:],
                    scale=(0.0, 0.0, 0.025), color=_WHITE, lifetime=lifetime,
                    text=f'hand {hand.hand_id} ({hand.handedness})')
    return writer.getvalue()


def visible_hands(tracks):
    """Return the tracks shown as hands: those with at least one valid joint."""
    return sorted_hands(t for t in tracks if np.asarray(t.valid).any())


class OutputContinuity:
    """
    What a stream's outputs carry from one frame to the next (see :func:`frame_outputs`).

    It keeps the hand the palm pose follows, the quaternion signs and the hands whose markers
    to delete.

    The palm pose follows one hand while its palm is defined (a second hand appearing with a
    lower id does not take it over; when the followed palm is lost or undefined, the first
    hand with a defined palm takes over), and every quaternion keeps the sign of the same
    frame's last one, for as long as its track lives (q and -q are one rotation; a sign flip
    reads as a jump to a consumer that filters or differentiates the components).
    """

    def __init__(self):
        self.palm_id = None
        self._quaternions = {}
        self._marker_ids = set()

    def outputs(self, tracks, header, values, markers=True):
        """
        Return :func:`frame_outputs` of a stream's next frame, as the filter node sends it.

        :param values: the ``output.*`` parameters (tf_prefix, marker_lifetime_s,
            publish_tf, tf_names).
        :param markers: build the markers; the markers of hands shown in the last frame
            that built them and not in this one are deleted.
        """
        ids = {track.hand_id for track in visible_hands(tracks)}
        outputs = frame_outputs(tracks, header, values['output.tf_prefix'],
                                self._marker_ids - ids, values['output.marker_lifetime_s'],
                                values['output.publish_tf'], markers, self,
                                values['output.tf_names'])
        self._marker_ids = ids if markers else set()
        return outputs

    def geometry(self, hands, live_ids=None):
        """
        Return :func:`hand_geometry` of ``hands`` with signs continued from the last call.

        :param live_ids: ids of every live track, shown or not (None: those of ``hands``);
            the signs of a track not shown in this frame are kept until it is dropped.
        """
        live = {hand.hand_id for hand in hands} if live_ids is None else set(live_ids)
        geometry = hand_geometry(hands)
        kept = {hand_id: q for hand_id, q in self._quaternions.items() if hand_id in live}
        for hand_id, (origin, _, quaternions, angles) in geometry.items():
            last = kept.get(hand_id)
            if last is not None:
                with np.errstate(invalid='ignore'):
                    flip = np.sum(quaternions * last, axis=1) < 0.0
                quaternions = np.where(flip[:, None], -quaternions, quaternions)
                kept[hand_id] = np.where(np.isfinite(quaternions), quaternions, last)
            else:
                kept[hand_id] = quaternions
            geometry[hand_id] = (origin, quaternions[WRIST], quaternions, angles)
        self._quaternions = kept
        return geometry

    def palm_hand(self, hands, geometry):
        """Return the hand the palm pose follows (see the class), or None."""
        by_id = {hand.hand_id: hand for hand in hands}
        if self.palm_id not in by_id or not palm_defined(geometry, self.palm_id):
            self.palm_id = next((hand.hand_id for hand in sorted_hands(hands)
                                 if palm_defined(geometry, hand.hand_id)), None)
        return by_id.get(self.palm_id)


def frame_outputs(tracks, header, tf_prefix='', lost_ids=(), marker_lifetime_s=0.5,
                  publish_tf=True, markers=True, continuity=None, tf_names='id'):
    """
    Build every output message of one frame, as CDR bytes.

    The keypoint cloud carries every track (joints past the gap limit have ``valid = 0``);
    the other outputs only :func:`visible_hands`: a hand whose joints are all invalid counts
    as lost, so its TF frames stop and its markers are deleted.

    :param markers: build the markers (False: None, e.g. while nobody displays them).
    :param continuity: the stream's :class:`OutputContinuity` (None: each frame on its own;
        the palm pose is then the lowest hand id's and quaternions have w >= 0).
    :param tf_names: TF frames named by hand id or by side (:func:`hand_frame_labels`).
    :return: {output name: CDR bytes or None}: keypoints, joints, joint_states, palm, tf,
        markers (message types in :data:`OUTPUT_TYPES`).
    """
    hands = visible_hands(tracks)
    if continuity is None:
        geometry, palm_hand = hand_geometry(hands), hands[0] if hands else None
    else:
        geometry = continuity.geometry(hands, [track.hand_id for track in tracks])
        palm_hand = continuity.palm_hand(hands, geometry)
    return {
        'keypoints': keypoint_cloud(tracks, header),
        'joints': joint_pose_array(hands, header, geometry),
        'joint_states': joint_state(hands, header, geometry),
        'palm': palm_pose(palm_hand, header, geometry) if palm_hand else None,
        'tf': (tf_message(hands, header, tf_prefix, geometry, tf_names)
               if hands and publish_tf else None),
        'markers': marker_array(hands, header, lost_ids, marker_lifetime_s) if markers else None,
    }


class _SampleHand:
    """A hand for :func:`encoding_matches_rclpy` (the attributes the builders read)."""

    def __init__(self, hand_id, keypoints_xyz, handedness):
        self.hand_id, self.keypoints_xyz, self.handedness = hand_id, keypoints_xyz, handedness
        self.scores = np.linspace(0.3, 0.9, NUM_JOINTS)
        # Invalid: the thumb tip, a middle and a little finger joint (the palm stays defined).
        self.valid = np.arange(NUM_JOINTS) % 7 != 4


@functools.lru_cache(maxsize=1)
def encoding_matches_rclpy():
    """
    Return whether this ROS installation writes every output as the builders encode it.

    Checked once per process on a frame of two hands with missing joints and a lost hand (see
    :func:`~hand_pose_ros.ros.cdr.matches_rclpy`). Where it is False, the nodes publish the
    messages rclpy reads from the bytes instead of the bytes (slower, same topics).
    """
    from std_msgs.msg import Header

    header = Header(frame_id='camera_optical_frame')
    header.stamp.sec, header.stamp.nanosec = 1234, 567890
    hands = [_SampleHand(2, hand_from_angles() + (0.01, -0.02, 0.45), 'right'),
             _SampleHand(7, hand_from_angles(handedness='left') + (-0.1, 0.0, 0.5), 'unknown')]
    outputs = frame_outputs(hands, header, 'sample_', lost_ids=(4,))
    return all(cdr.matches_rclpy(data, OUTPUT_TYPES[name]) for name, data in outputs.items())
