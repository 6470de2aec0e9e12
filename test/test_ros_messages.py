"""Output messages written as CDR: what rclpy reads from them, byte layout, publishing."""

from types import SimpleNamespace

from conftest import Recorder
import numpy as np
import pytest
import rclpy
from rclpy.serialization import deserialize_message
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import JointState, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from hand_pose_ros.core.kinematics import ANGLE_NAMES, joint_angles
from hand_pose_ros.core.skeleton import BONES, JOINT_NAMES, palm_center
from hand_pose_ros.core.synth import generate_motion
from hand_pose_ros.core.synth.pose import rotation_about_axis
from hand_pose_ros.ros import cdr
from hand_pose_ros.ros.messages import (encoding_matches_rclpy, frame_outputs, hand_geometry,
                                        hands_from_cloud, joint_state, keypoint_cloud,
                                        OUTPUT_TYPES, OutputContinuity, points_from_cloud)
from hand_pose_ros.ros.node_utils import OUTPUT_QOS, publish_encoded


def frames(count=12, seed=4):
    """Yield (hands, header, tf prefix, lost ids) of varied frames: ids, gaps, labels."""
    rng = np.random.default_rng(seed)
    motion = generate_motion(count, fps=30.0, seed=seed)
    for index, joints in enumerate(motion.joints_xyz):
        # Hand 3 stays (hand 12 too from frame 4); hand 5 joins at 2, goes at 6; none at 9.
        ids = [] if index == 9 else [3] + ([5] if 2 <= index < 6 else []) + (
            [12] if index >= 4 else [])
        hands = [SimpleNamespace(
            hand_id=i, keypoints_xyz=joints + 0.05 * i, scores=rng.uniform(0.2, 1.0, 21),
            valid=rng.random(21) > (0.0 if index % 4 == 0 else 0.2),
            handedness=('left', 'right', 'unknown')[(index + i) % 3]) for i in ids]
        header = Header(frame_id='cam_' * (index % 5))  # string lengths shift the padding
        header.stamp.sec, header.stamp.nanosec = 1000 + index, 123456789 * (index % 7)
        yield hands, header, ('', 'user_')[index % 2], {7, 5} if index == 6 else set()


def decoded(outputs):
    return {name: deserialize_message(data, OUTPUT_TYPES[name])
            for name, data in outputs.items() if data is not None}


def test_every_output_is_written_as_rclpy_writes_it():
    assert encoding_matches_rclpy()
    checked = 0
    for hands, header, prefix, lost in frames():
        for name, data in frame_outputs(hands, header, prefix, lost).items():
            if data is not None:
                assert cdr.matches_rclpy(data, OUTPUT_TYPES[name]), name
                checked += 1
    assert checked > 50


def same_message(ours, theirs):
    """Return whether an rclpy message and a rosbags message hold the same values."""
    if hasattr(ours, 'get_fields_and_field_types'):
        return all(same_message(getattr(ours, name), getattr(theirs, name))
                   for name in ours.get_fields_and_field_types())
    if isinstance(ours, (list, tuple, np.ndarray)) or hasattr(ours, 'typecode'):
        return len(ours) == len(theirs) and all(map(same_message, ours, theirs))
    return ours == theirs or (isinstance(ours, float) and np.isnan(ours) and np.isnan(theirs))


@pytest.mark.parametrize('distribution', ['ROS2_HUMBLE', 'ROS2_JAZZY', 'ROS2_KILTED'])
def test_each_distribution_reads_every_output_whole(distribution):
    # rosbags' own CDR reader with each distribution's message definitions: every output
    # must be read to its last byte, to the values rclpy reads.
    typestore = get_typestore(getattr(Stores, distribution))
    for hands, header, prefix, lost in frames(6):
        for name, data in frame_outputs(hands, header, prefix, lost).items():
            if data is None:
                continue
            msg_type = OUTPUT_TYPES[name]
            type_name = f'{msg_type.__module__.split(".")[0]}/msg/{msg_type.__name__}'
            theirs = typestore.deserialize_cdr(data, type_name)
            assert same_message(deserialize_message(data, msg_type), theirs), name


def test_angles_palm_and_frames_are_built_from_valid_joints_only():
    # The filter gave up the index finger (valid = 0) and kept its last position, which the
    # hand has since moved away from: read as a joint, it bends the finger far backwards.
    joints = generate_motion(1, seed=2).joints_xyz[0]
    stale = joints.copy()
    stale[6:9] += (0.0, 0.0, -0.06)
    valid = np.ones(21, bool)
    valid[6:9] = False
    hand = SimpleNamespace(hand_id=1, keypoints_xyz=stale, scores=np.ones(21), valid=valid,
                           handedness='right')
    messages = decoded(frame_outputs([hand], Header(frame_id='cam')))
    states = dict(zip(messages['joint_states'].name, messages['joint_states'].position))
    truth = dict(zip(ANGLE_NAMES, joint_angles(joints, 'right')))
    assert not any(name.startswith('right_index') for name in states)
    for name in ('thumb_mcp_flexion', 'middle_pip_flexion', 'pinky_mcp_abduction'):
        assert states[f'right_{name}'] == pytest.approx(truth[name], abs=1e-9)
    # The palm is built on the index MCP: invalid, no palm pose and no palm frame.
    valid[5] = False
    messages = decoded(frame_outputs([hand], Header(frame_id='cam')))
    assert 'palm' not in messages
    frames = {t.child_frame_id for t in getattr(messages.get('tf'), 'transforms', [])}
    assert 'hand_1' not in frames
    positions = [(p.position.x, p.position.y, p.position.z) for p in messages['joints'].poses]
    assert np.isnan(positions[5]).all() and np.isfinite(positions[0]).all()


def test_a_stream_keeps_its_palm_hand_and_quaternion_signs():
    joints = generate_motion(1, seed=2).joints_xyz[0]

    def hand(hand_id, xyz):
        return SimpleNamespace(hand_id=hand_id, keypoints_xyz=xyz, scores=np.ones(21),
                               valid=np.ones(21, bool), handedness='right')

    def palm_x(outputs):
        return decoded(outputs)['palm'].pose.position.x

    continuity = OutputContinuity()
    left, right = joints - (0.15, 0, 0), joints + (0.15, 0, 0)
    first = palm_x(frame_outputs([hand(4, left)], Header(), continuity=continuity))
    # Hand 2 appears: the lowest id, but the palm pose stays on hand 4 while it is shown.
    both = frame_outputs([hand(2, right), hand(4, left)], Header(), continuity=continuity)
    assert palm_x(both) == pytest.approx(first)
    assert palm_x(frame_outputs([hand(2, right), hand(4, left)], Header())) > first
    assert palm_x(frame_outputs([hand(2, right)], Header(), continuity=continuity)) > first
    # The hand turns a full turn about the camera axis: without continuity the palm
    # quaternion's sign flips somewhere (w >= 0), with it consecutive quaternions stay close.
    center = palm_center(joints)
    continuity = OutputContinuity()
    dots = {False: [], True: []}
    previous = {False: None, True: None}
    for degrees in range(0, 370, 10):
        turn = rotation_about_axis([0.0, 0.0, 1.0], np.radians(degrees))
        xyz = (joints - center) @ turn.T + center
        for kept in (False, True):
            o = decoded(frame_outputs([hand(1, xyz)], Header(),
                                      continuity=continuity if kept else None))['palm']
            q = np.array([o.pose.orientation.x, o.pose.orientation.y, o.pose.orientation.z,
                          o.pose.orientation.w])
            if previous[kept] is not None:
                dots[kept].append(q @ previous[kept])
            previous[kept] = q
    assert min(dots[True]) > 0.99 and min(dots[False]) < 0.0
    # A live track not shown for a frame (every joint invalid while it coasts) keeps its
    # signs for when it is shown again.
    continuity, last = OutputContinuity(), None
    for step, degrees in enumerate(range(0, 370, 10)):
        turn = rotation_about_axis([0.0, 0.0, 1.0], np.radians(degrees))
        track = hand(1, (joints - center) @ turn.T + center)
        track.valid = np.full(21, step % 6 != 5)
        outputs = decoded(frame_outputs([track], Header(), continuity=continuity))
        if 'palm' in outputs:
            o = outputs['palm'].pose.orientation
            q = np.array([o.x, o.y, o.z, o.w])
            assert last is None or q @ last > 0.95, degrees
            last = q
    # The followed palm undefined (its wrist invalid): another hand's palm takes over.
    continuity = OutputContinuity()
    first = palm_x(frame_outputs([hand(4, left)], Header(), continuity=continuity))
    broken = hand(4, left)
    broken.valid = np.arange(21) != 0
    taken = palm_x(frame_outputs([hand(2, right), broken], Header(), continuity=continuity))
    assert taken > first


def test_tf_frames_named_by_side_stay_with_the_side():
    joints = generate_motion(1, seed=2).joints_xyz[0]

    def frames_of(hands, tf_names):
        tf = decoded(frame_outputs(hands, Header(), 'cam1/', tf_names=tf_names))['tf']
        return {t.child_frame_id for t in tf.transforms}

    hands = [SimpleNamespace(hand_id=i, keypoints_xyz=joints + 0.1 * i, scores=np.ones(21),
                             valid=np.ones(21, bool), handedness=side)
             for i, side in ((7, 'right'), (9, 'right'), (12, 'unknown'))]
    by_id = frames_of(hands, 'id')
    assert {'cam1/hand_7', 'cam1/hand_7_wrist', 'cam1/hand_12_pinky_tip'} <= by_id
    by_side = frames_of(hands, 'side')
    # The first right hand is right_hand; a second right hand and an unknown one keep ids.
    assert {'cam1/right_hand', 'cam1/right_hand_index_tip', 'cam1/hand_9', 'cam1/hand_12',
            'cam1/hand_12_wrist'} <= by_side
    assert not any(name.startswith('cam1/hand_7') for name in by_side)
    # A new track of the same side (a new id) keeps the names.
    hands[0].hand_id = 30
    assert 'cam1/right_hand' in frames_of(hands[:1], 'side')
    with pytest.raises(ValueError, match='tf_names must be one of'):
        frame_outputs(hands, Header(), tf_names='name')


def test_the_keypoint_cloud_is_dense_only_without_nan_points():
    joints = generate_motion(1, seed=2).joints_xyz[0]
    unseen = joints.copy()
    unseen[8] = np.nan     # a joint a new track has not seen yet
    for xyz, dense in ((joints, True), (unseen, False)):
        hand = SimpleNamespace(hand_id=0, keypoints_xyz=xyz, scores=np.ones(21),
                               valid=np.isfinite(xyz).all(axis=1), handedness='unknown')
        data = keypoint_cloud([hand], Header(frame_id='cam'))
        assert cdr.matches_rclpy(data, PointCloud2)
        assert deserialize_message(data, PointCloud2).is_dense == dense


def test_outputs_carry_the_hands():
    for hands, header, prefix, lost in frames():
        messages = decoded(frame_outputs(hands, header, prefix, lost, marker_lifetime_s=0.25))
        visible = sorted((h for h in hands if h.valid.any()), key=lambda h: h.hand_id)
        geometry = hand_geometry(visible)
        for name, msg in messages.items():
            stamps = [msg.header] if hasattr(msg, 'header') else [
                item.header for item in getattr(msg, 'transforms', getattr(msg, 'markers', []))]
            assert all(s == header for s in stamps), name
        cloud = hands_from_cloud(messages['keypoints'])
        assert [c['hand_id'] for c in cloud] == [h.hand_id for h in hands]
        for parsed, hand in zip(cloud, sorted(hands, key=lambda h: h.hand_id)):
            np.testing.assert_allclose(parsed['keypoints_xyz'], hand.keypoints_xyz, atol=1e-6)
            np.testing.assert_allclose(parsed['scores'], hand.scores, atol=1e-6)
            assert (parsed['valid'] == hand.valid).all()
            assert parsed['handedness'] == hand.handedness
            assert not parsed['predicted'].any()
        poses = messages['joints'].poses
        assert len(poses) == 21 * len(visible)
        for k, hand in enumerate(visible):
            for j in (0, 4, 20):
                pose = poses[21 * k + j]
                # An invalid joint's last position is not passed on as a pose.
                np.testing.assert_allclose([pose.position.x, pose.position.y, pose.position.z],
                                           np.where(hand.valid[j], hand.keypoints_xyz[j], np.nan))
                q = pose.orientation
                np.testing.assert_allclose([q.x, q.y, q.z, q.w],
                                           geometry[hand.hand_id][2][j])
        states = messages['joint_states']
        defined = [np.isfinite(geometry[h.hand_id][3]) for h in visible]
        assert len(states.name) == len(states.position) == sum(int(d.sum()) for d in defined)
        assert not states.velocity and not states.effort
        if visible and visible[0].valid.all():
            np.testing.assert_allclose(states.position[:len(ANGLE_NAMES)], joint_angles(
                visible[0].keypoints_xyz, visible[0].handedness))
            palm = messages['palm'].pose.position
            np.testing.assert_allclose([palm.x, palm.y, palm.z],
                                       palm_center(visible[0].keypoints_xyz))
        if visible:
            palm_defined = [np.isfinite(np.concatenate(geometry[h.hand_id][:2])).all()
                            for h in visible]
            assert ('palm' in messages) == palm_defined[0]
            transforms = {t.child_frame_id: t.transform
                          for t in getattr(messages.get('tf'), 'transforms', [])}
            expected = {f'{prefix}hand_{h.hand_id}'
                        for h, palm in zip(visible, palm_defined) if palm} | {
                f'{prefix}hand_{h.hand_id}_{JOINT_NAMES[j]}'
                for h in visible for j in np.flatnonzero(h.valid)
                if np.isfinite(geometry[h.hand_id][2][j]).all()}
            assert set(transforms) == expected
            tip_name = f'{prefix}hand_{visible[0].hand_id}_{JOINT_NAMES[8]}'
            if tip_name in transforms:
                tip = transforms[tip_name]
                np.testing.assert_allclose(
                    [tip.translation.x, tip.translation.y, tip.translation.z],
                    visible[0].keypoints_xyz[8])
        else:
            assert 'palm' not in messages and 'tf' not in messages
        markers = messages['markers'].markers
        assert len(markers) == 3 * (len(lost) + len(visible))
        deleted = [m for m in markers if m.action == Marker.DELETE]
        assert {(m.ns, m.id) for m in deleted} == {(f'hand_{i}', k) for i in lost
                                                   for k in range(3)}
        for k, hand in enumerate(visible):
            joints, bones, label = markers[3 * (len(lost) + k):3 * (len(lost) + k + 1)]
            assert joints.type == Marker.SPHERE_LIST and len(joints.points) == hand.valid.sum()
            assert len(joints.colors) == len(joints.points)
            drawn = hand.valid[BONES].all(axis=1)
            assert bones.type == Marker.LINE_LIST and len(bones.points) == 2 * drawn.sum()
            assert len(bones.colors) == len(bones.points)
            first = bones.points[0] if len(bones.points) else None
            if first is not None:
                parent = BONES[np.flatnonzero(drawn)[0], 0]
                np.testing.assert_allclose([first.x, first.y, first.z],
                                           hand.keypoints_xyz[parent])
            assert label.text == f'hand {hand.hand_id} ({hand.handedness})'
            assert label.pose.orientation.w == 1.0 and label.color.a == 1.0
            assert all(m.lifetime.nanosec == 250_000_000 for m in (joints, bones, label))


def test_joint_states_prefer_the_filter_angles():
    hands, header, _, _ = next(frames(1))
    hands[0].joint_angles = np.arange(len(ANGLE_NAMES), dtype=float)
    msg = deserialize_message(joint_state(hands, header), JointState)
    assert list(msg.position) == list(range(len(ANGLE_NAMES)))
    assert msg.name[0] == f'{hands[0].handedness}_{ANGLE_NAMES[0]}' or \
        msg.name[0].startswith('hand_3_')


def test_writer_aligns_each_primitive_and_skips_empty_sequences():
    writer = cdr.CdrWriter()
    writer.put(b'\x01')
    writer.float64s([])
    writer.uint32(7)
    writer.put(cdr.string('ab'), 4)
    writer.float64s([2.0])
    data = writer.getvalue()
    assert data[:4] == cdr.ENCAPSULATION
    body = data[4:]
    assert body[:1] == b'\x01' and body[1:4] == b'\x00' * 3
    assert body[4:8] == (7).to_bytes(4, 'little')
    assert body[8:15] == (3).to_bytes(4, 'little') + b'ab\x00'
    assert body[15:16] == b'\x00' and np.frombuffer(body[16:], '<f8').tolist() == [2.0]


def test_a_text_ends_at_its_first_nul_as_rclpy_writes_it():
    data = keypoint_cloud([], Header(frame_id='cam\x00era'))
    assert cdr.matches_rclpy(data, PointCloud2)   # 'cam\0era\0' whole did not
    assert deserialize_message(data, PointCloud2).header.frame_id == 'cam'


def test_bytes_rclpy_reads_differently_do_not_match():
    hands, header, _, _ = next(frames(1))
    data = bytearray(frame_outputs(hands, header)['joints'])
    assert cdr.matches_rclpy(bytes(data), OUTPUT_TYPES['joints'])
    count = data.index((21).to_bytes(4, 'little'), 8)
    data[count] = 20  # one pose fewer than written: rclpy stops before the end
    assert not cdr.matches_rclpy(bytes(data), OUTPUT_TYPES['joints'])
    assert not cdr.matches_rclpy(bytes(data[:40]), OUTPUT_TYPES['joints'])
    # A point cloud read as joint states: no error from rclpy, but other bytes come back.
    cloud = frame_outputs(hands, header)['keypoints']
    assert not cdr.matches_rclpy(cloud, JointState)


@pytest.mark.parametrize('as_bytes', [True, False])
def test_published_bytes_arrive_as_the_message(spinner, as_bytes):
    node = spinner.add(rclpy.create_node('encoded_publisher', context=spinner.context))
    recorder = Recorder(node)
    received = recorder.listen(PointCloud2, 'encoded_cloud', OUTPUT_QOS)
    publisher = node.create_publisher(PointCloud2, 'encoded_cloud', OUTPUT_QOS)
    assert spinner.wait_for(lambda: publisher.get_subscription_count() > 0, 10)
    hands, header, _, _ = next(frames(1))
    data = frame_outputs(hands, header)['keypoints']
    publish_encoded(publisher, data, as_bytes)
    assert spinner.wait_for(lambda: received, 10)
    assert received[0] == deserialize_message(data, PointCloud2)


def test_another_encoding_falls_back_to_messages_with_one_warning(monkeypatch, capfd):
    from hand_pose_ros.ros import node_utils

    # As where rclpy would write the outputs differently (the check is per process).
    monkeypatch.setattr(node_utils, 'encoding_matches_rclpy', lambda: False)
    node_utils._publish_bytes.cache_clear()
    try:
        assert node_utils._publish_bytes() is False
        assert node_utils._publish_bytes() is False
    finally:
        node_utils._publish_bytes.cache_clear()
    assert capfd.readouterr().err.count('serialises messages differently') == 1


def test_a_hand_with_a_missing_joint_or_a_degenerate_bone_keeps_what_is_defined():
    joints = generate_motion(1, seed=5).joints_xyz[0]
    unseen = joints.copy()
    unseen[8] = np.nan                  # a joint the filter has never accepted
    flat = joints + 0.1
    flat[7] = flat[6]                   # a zero-length bone: no frame for joint 7
    hands = [SimpleNamespace(hand_id=1, keypoints_xyz=unseen, scores=np.ones(21),
                             valid=np.arange(21) != 8, handedness='right'),
             SimpleNamespace(hand_id=2, keypoints_xyz=flat, scores=np.ones(21),
                             valid=np.ones(21, bool), handedness='right')]
    header = Header(frame_id='cam')
    outputs = frame_outputs(hands, header, markers=True)
    for name, data in outputs.items():
        assert cdr.matches_rclpy(data, OUTPUT_TYPES[name]), name
    messages = decoded(outputs)
    poses = messages['joints'].poses
    assert len(poses) == 42
    position = [[p.position.x, p.position.y, p.position.z] for p in poses]
    orientation = [[p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]
                   for p in poses]
    assert np.isnan(position[8]).all() and np.isnan(orientation[8]).all()
    assert np.isnan(orientation[21 + 7]).all() and np.isfinite(position[21 + 7]).all()
    assert sum(np.isnan(q).any() for q in orientation) == 2
    children = {t.child_frame_id for t in messages['tf'].transforms}
    assert children == {f'hand_{i}' for i in (1, 2)} | {
        f'hand_{i}_{name}' for i in (1, 2) for j, name in enumerate(JOINT_NAMES)
        if (i, j) not in ((1, 8), (2, 7))}
    states = dict(zip(messages['joint_states'].name, messages['joint_states'].position))
    left_out = {'right_index_dip_flexion', 'hand_2_index_pip_flexion',
                'hand_2_index_dip_flexion'}
    assert set(states) == {f'{prefix}{name}' for prefix in ('right_', 'hand_2_')
                           for name in ANGLE_NAMES} - left_out
    assert np.isfinite(list(states.values())).all()
    np.testing.assert_allclose(states['right_middle_pip_flexion'], joint_angles(
        joints, 'right')[ANGLE_NAMES.index('middle_pip_flexion')])
    palm = messages['palm'].pose.position
    np.testing.assert_allclose([palm.x, palm.y, palm.z], palm_center(joints))
    markers = messages['markers'].markers
    assert all(np.isfinite([m.pose.position.x, m.pose.position.y, m.pose.position.z]).all()
               and all(np.isfinite([p.x, p.y, p.z]).all() for p in m.points) for m in markers)
    assert len(markers[0].points) == 20


def test_a_hand_without_a_palm_frame_has_no_palm_pose_nor_palm_transform():
    joints = generate_motion(1, seed=6).joints_xyz[0]
    joints[0] = np.nan                  # the wrist never seen: no palm frame, no angle
    hand = SimpleNamespace(hand_id=0, keypoints_xyz=joints, scores=np.ones(21),
                           valid=np.arange(21) > 0, handedness='left')
    outputs = frame_outputs([hand], Header(frame_id='cam'))
    assert outputs['palm'] is None
    messages = decoded(outputs)
    assert not messages['joint_states'].name and not messages['joint_states'].position
    assert outputs['tf'] is None
    assert len(messages['joints'].poses) == 21


def test_padded_cloud_rows_are_read_and_a_short_buffer_is_refused():
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, n in enumerate('xyz')]
    rows = np.zeros((2, 8), np.float32)          # 2 points of 12 bytes + 8 bytes padding
    rows[:, :6] = np.arange(12, dtype=np.float32).reshape(2, 6)
    cloud = PointCloud2(height=2, width=2, fields=fields, point_step=12, row_step=32,
                        data=rows.tobytes())
    points = points_from_cloud(cloud)
    np.testing.assert_array_equal(points['x'], [0, 3, 6, 9])
    cloud.data = rows.tobytes()[:56]               # the last row's padding missing
    with pytest.raises(ValueError, match='fewer than row_step x height'):
        points_from_cloud(cloud)
    cloud.data, cloud.row_step = rows.tobytes(), 20
    with pytest.raises(ValueError, match='row_step 20 is shorter'):
        points_from_cloud(cloud)
