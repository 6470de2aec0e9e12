"""hand_filter_node over real DDS: outputs, headers, TF, markers, parameters, bad input."""

from types import SimpleNamespace

from conftest import Recorder
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseStamped
import numpy as np
import rclpy
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from hand_pose_ros.core.filters import HandFilter, Observation
from hand_pose_ros.core.kinematics import ANGLE_NAMES
from hand_pose_ros.core.skeleton import JOINT_NAMES
from hand_pose_ros.core.synth import generate_motion
from hand_pose_ros.ros.hand_filter_node import HandFilterNode
from hand_pose_ros.ros.messages import frame_outputs, hands_from_cloud, keypoint_cloud
from hand_pose_ros.ros.node_utils import LogThrottle, OUTPUT_QOS

FRAME = 'test_camera_optical_frame'


def raw_cloud(stamp_s, keypoint_sets, valid=np.ones(21, bool)):
    """Return a raw keypoint cloud (CDR bytes, as hand_pose_node publishes it)."""
    header = Header(frame_id=FRAME)
    header.stamp.sec = int(stamp_s)
    header.stamp.nanosec = int(round((stamp_s % 1) * 1e9))
    hands = [SimpleNamespace(hand_id=i, keypoints_xyz=xyz, scores=np.full(21, 0.9),
                             valid=valid, handedness='unknown')
             for i, xyz in enumerate(keypoint_sets)]
    return keypoint_cloud(hands, header)


def stamp_of(msg):
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def make_probe(spinner):
    probe = spinner.add(rclpy.create_node('probe', context=spinner.context))
    recorder = Recorder(probe)
    for msg_type, topic in ((PointCloud2, 'hand_pose/keypoints'), (PoseArray, 'hand_pose/joints'),
                            (PoseStamped, 'hand_pose/palm_pose'),
                            (JointState, 'hand_pose/joint_states'),
                            (MarkerArray, 'hand_pose/markers'), (TFMessage, '/tf'),
                            (DiagnosticArray, '/diagnostics')):
        recorder.listen(msg_type, topic, OUTPUT_QOS)
    publisher = probe.create_publisher(PointCloud2, 'hand_pose/raw_keypoints', OUTPUT_QOS)
    return probe, recorder, publisher


def publish_and_wait(spinner, publisher, recorder, msg, count):
    publisher.publish(msg)
    assert spinner.wait_for(lambda: len(recorder.messages['hand_pose/keypoints']) >= count, 10)


def test_outputs_carry_the_input_header_and_hand_structure(spinner):
    node = spinner.add(HandFilterNode(context=spinner.context))
    probe, recorder, publisher = make_probe(spinner)
    assert spinner.wait_for(lambda: publisher.get_subscription_count() > 0, 10)
    # Markers are built only while someone subscribes: wait until the node sees the probe.
    assert spinner.wait_for(lambda: node._pubs['markers'].get_subscription_count() > 0, 10)
    motion = generate_motion(40, fps=30.0, seed=3, handedness='right')
    stamps = 100.0 + motion.stamps_s
    for i in range(30):
        publish_and_wait(spinner, publisher, recorder,
                         raw_cloud(stamps[i], [motion.joints_xyz[i]]), i + 1)
    assert spinner.wait_for(lambda: len(recorder.messages['hand_pose/markers']) >= 30, 10)
    sent = {(int(s), int(round((s % 1) * 1e9))) for s in stamps[:30]}
    for topic in ('hand_pose/keypoints', 'hand_pose/joints', 'hand_pose/palm_pose',
                  'hand_pose/joint_states'):
        msgs = recorder.messages[topic]
        assert msgs, topic
        assert all(m.header.frame_id == FRAME and stamp_of(m) in sent for m in msgs), topic
    last = hands_from_cloud(recorder.messages['hand_pose/keypoints'][-1])
    assert len(last) == 1 and last[0]['valid'].all()
    error_mm = np.linalg.norm(last[0]['keypoints_xyz'] - motion.joints_xyz[29], axis=1) * 1000
    assert error_mm.mean() < 15.0   # filtered clean input stays close to the truth
    assert len(recorder.messages['hand_pose/joints'][-1].poses) == 21
    names = recorder.messages['hand_pose/joint_states'][-1].name
    assert len(names) == len(ANGLE_NAMES) and names[0].startswith(('right_', 'hand_0_'))
    transforms = [t for m in recorder.messages['/tf'] for t in m.transforms]
    assert transforms and all(t.header.frame_id == FRAME for t in transforms)
    children = {t.child_frame_id for t in transforms}
    hand_id = last[0]['hand_id']
    assert f'hand_{hand_id}' in children
    assert {f'hand_{hand_id}_{name}' for name in JOINT_NAMES} <= children
    markers = recorder.messages['hand_pose/markers'][-1].markers
    assert {m.ns for m in markers} == {f'hand_{hand_id}'}
    assert node.status().level == DiagnosticStatus.OK

    # The hand leaves: empty frames beyond the gap limit delete its markers and stop its TF.
    for k in range(12):
        empty = raw_cloud(stamps[29] + 0.05 * (k + 1), [])
        publish_and_wait(spinner, publisher, recorder, empty, 31 + k)
    assert spinner.wait_for(lambda: any(
        m.action == Marker.DELETE and m.ns == f'hand_{hand_id}'
        for msg in recorder.messages['hand_pose/markers'] for m in msg.markers), 10)
    assert not any(hand['valid'].any()
                   for hand in hands_from_cloud(recorder.messages['hand_pose/keypoints'][-1]))
    # The last measured frame, then the first without a detection: carried through the gap
    # by the motion model, flagged predicted (and still valid).
    measured, coasted = (hands_from_cloud(recorder.messages['hand_pose/keypoints'][k])[0]
                         for k in (29, 30))
    assert not measured['predicted'].any() and measured['handedness'] in ('right', 'unknown')
    assert coasted['predicted'].all() and coasted['valid'].all()
    tf_count = len(recorder.messages['/tf'])
    for k in range(3):
        empty = raw_cloud(stamps[29] + 0.7 + 0.05 * k, [])
        publish_and_wait(spinner, publisher, recorder, empty, 43 + k)
    assert len(recorder.messages['/tf']) == tf_count


def test_a_hand_whose_raw_estimates_never_carry_a_joint_is_still_published(spinner):
    # An estimator that leaves the index tip out of every frame: the filter never accepts
    # it, and every output but that joint's frame and angle still carries the hand.
    spinner.add(HandFilterNode(context=spinner.context))
    probe, recorder, publisher = make_probe(spinner)
    assert spinner.wait_for(lambda: publisher.get_subscription_count() > 0, 10)
    motion = generate_motion(8, fps=30.0, seed=5, handedness='right')
    for i in range(8):
        publish_and_wait(spinner, publisher, recorder,
                         raw_cloud(50.0 + motion.stamps_s[i], [motion.joints_xyz[i]],
                                   valid=np.arange(21) != 8), i + 1)
    assert spinner.wait_for(lambda: recorder.messages['hand_pose/joint_states'], 10)
    last = hands_from_cloud(recorder.messages['hand_pose/keypoints'][-1])
    assert len(last) == 1 and last[0]['valid'].sum() == 20 and not last[0]['valid'][8]
    poses = recorder.messages['hand_pose/joints'][-1].poses
    assert len(poses) == 21 and np.isnan(poses[8].position.x)
    assert np.isfinite([poses[7].orientation.w, poses[7].position.x]).all()
    names = recorder.messages['hand_pose/joint_states'][-1].name
    assert len(names) == len(ANGLE_NAMES) - 1 and not any('index_dip' in n for n in names)
    assert recorder.messages['hand_pose/palm_pose']
    children = {t.child_frame_id for m in recorder.messages['/tf'] for t in m.transforms}
    hand_id = last[0]['hand_id']
    assert f'hand_{hand_id}' in children and f'hand_{hand_id}_{JOINT_NAMES[7]}' in children
    assert f'hand_{hand_id}_{JOINT_NAMES[8]}' not in children


def test_dynamic_parameters_validated_by_the_core(spinner):
    node = spinner.add(HandFilterNode(context=spinner.context))
    ok = node.set_parameters([Parameter('filter.one_euro.min_cutoff_hz', value=2.5)])[0]
    assert ok.successful and node._filter.config.one_euro.min_cutoff_hz == 2.5
    for name, value in (('filter.one_euro.min_cutoff_hz', -1.0), ('filter.smoother', 'bogus')):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful, (name, value)
    assert node._filter.config.one_euro.min_cutoff_hz == 2.5
    assert node._filter.config.smoother != 'bogus'


def test_log_throttle_holds_repeats_per_kind_and_follows_a_new_period():
    now = [0.0]
    throttle = LogThrottle(clock=lambda: now[0])
    logged = []
    for key, period_s, at in (('a', 5.0, 0.0), ('a', 5.0, 0.1), ('b', 5.0, 0.2),
                              ('a', 5.0, 0.9), ('a', 0.5, 1.0), ('a', 0.5, 1.2)):
        now[0] = at
        message = throttle.message(key, f'{key} at {at}', period_s)
        if message:
            logged.append(message)
    # 'b' is not hidden by 'a'; the shorter period applies from the next message on.
    assert logged == ['a at 0.0', 'b at 0.2', 'a at 1.0 (2 more held back)']


def test_a_repeated_stamp_is_counted_and_not_published_again(spinner):
    # The same stamp twice (a re-sent frame): its outputs, TF included, went out once; a
    # second TF of the same stamp makes every tf2 listener log TF_REPEATED_DATA.
    node = spinner.add(HandFilterNode(context=spinner.context))
    probe, recorder, publisher = make_probe(spinner)
    assert spinner.wait_for(lambda: publisher.get_subscription_count() > 0, 10)
    motion = generate_motion(4, fps=30.0, seed=6, handedness='right')
    # A new hand is shown from its second detection (filter.tracking.min_detections).
    for i, stamp in enumerate((20.0, 20.1)):
        publish_and_wait(spinner, publisher, recorder, raw_cloud(stamp, [motion.joints_xyz[i]]),
                         i + 1)
    assert spinner.wait_for(lambda: recorder.messages['/tf'], 10)
    publisher.publish(raw_cloud(20.1, [motion.joints_xyz[2]]))
    assert spinner.wait_for(lambda: node._counts['received'] == 3, 10)
    publish_and_wait(spinner, publisher, recorder, raw_cloud(20.2, [motion.joints_xyz[3]]), 3)
    assert [stamp_of(m) for m in recorder.messages['hand_pose/keypoints']] == [
        (20, 0), (20, 100_000_000), (20, 200_000_000)]
    assert spinner.wait_for(lambda: len(recorder.messages['/tf']) == 2, 10)
    assert [stamp_of(m.transforms[0]) for m in recorder.messages['/tf']] == [
        (20, 100_000_000), (20, 200_000_000)]
    values = {kv.key: kv.value for kv in node.status().values}
    assert values['filter duplicate stamps'] == '1'
    assert node.status().level == DiagnosticStatus.OK


def test_diagnostics_give_output_rate_shown_hands_and_the_age_of_the_outputs(spinner):
    node = spinner.add(HandFilterNode(context=spinner.context))
    probe, recorder, publisher = make_probe(spinner)
    assert spinner.wait_for(lambda: publisher.get_subscription_count() > 0, 10)
    motion = generate_motion(3, fps=30.0, seed=7)
    for i in range(3):
        # Stamped now on the node's clock, as a camera stamps its images.
        now_s = node.get_clock().now().nanoseconds * 1e-9
        publish_and_wait(spinner, publisher, recorder, raw_cloud(now_s, [motion.joints_xyz[i]]),
                         i + 1)
    values = {kv.key: kv.value for kv in node.status().values}
    assert values['hands shown'] == '1' and values['hands tracked'] == '1'
    assert float(values['output rate (Hz)']) > 0.0
    ages = float(values['output age p50 (ms)']), float(values['output age p99 (ms)'])
    assert np.isfinite(ages).all() and 0.0 <= ages[0] <= ages[1]


def test_output_qos_follows_ros_qos_overrides(spinner, monkeypatch):
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    applied = []
    apply = HandFilterNode._apply_parameters
    monkeypatch.setattr(HandFilterNode, '_apply_parameters',
                        lambda self, values: applied.append(values) or apply(self, values))
    overrides = [Parameter('qos_overrides./hand_pose/keypoints.publisher.reliability',
                           value='best_effort'),
                 Parameter('qos_overrides./hand_pose/palm_pose.publisher.durability',
                           value='transient_local')]
    node = spinner.add(HandFilterNode(context=spinner.context, parameter_overrides=overrides))
    assert node._pubs['keypoints'].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert node._pubs['palm'].qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert node._pubs['joint_states'].qos_profile.reliability == ReliabilityPolicy.RELIABLE
    # Declaring them did not run the node's own parameter callback.
    assert applied == []
    assert node.set_parameters([Parameter('log_throttle_s', value=2.0)])[0].successful
    assert len(applied) == 1


def test_bad_raw_clouds_are_reported_and_the_node_keeps_running(spinner):
    node = spinner.add(HandFilterNode(context=spinner.context))
    probe, recorder, publisher = make_probe(spinner)
    assert spinner.wait_for(lambda: publisher.get_subscription_count() > 0, 10)
    bad = deserialize_message(raw_cloud(5.0, [np.zeros((21, 3))]), PointCloud2)
    bad.fields = bad.fields[:3]
    publisher.publish(bad)
    assert spinner.wait_for(lambda: node._counts['bad_input'] == 1, 10), node._counts
    assert node.set_parameters([Parameter('log_throttle_s', value=0.5)])[0].successful
    truncated = deserialize_message(raw_cloud(5.1, [np.zeros((21, 3))]), PointCloud2)
    truncated.data = truncated.data[:40]
    publisher.publish(truncated)
    assert spinner.wait_for(lambda: node._counts['bad_input'] == 2, 10), node._counts
    status = node.status()
    assert status.level == DiagnosticStatus.WARN and 'raw keypoints rejected' in status.message
    motion = generate_motion(2, seed=1)
    publish_and_wait(spinner, publisher, recorder, raw_cloud(5.2, [motion.joints_xyz[0]]), 1)
    assert spinner.spinning()
    # A good message ends the warning; the count and the last problem stay.
    status = node.status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.OK and values['bad input'] == '2'
    assert 'raw keypoints rejected' in values['last problem']


def test_an_internal_error_is_reported_and_the_node_keeps_running(spinner):
    node = spinner.add(HandFilterNode(context=spinner.context))
    probe, recorder, publisher = make_probe(spinner)
    assert spinner.wait_for(lambda: publisher.get_subscription_count() > 0, 10)
    update = node._filter.update

    def broken(*args):
        node._filter.update = update  # fails once
        raise OverflowError('a bug in the filter')

    node._filter.update = broken
    motion = generate_motion(2, seed=1)
    publisher.publish(raw_cloud(6.0, [motion.joints_xyz[0]]))
    assert spinner.wait_for(lambda: node._counts['internal_errors'] == 1, 10), node._counts
    assert spinner.spinning()
    status = node.status()
    assert status.level == DiagnosticStatus.ERROR and 'a bug in the filter' in status.message
    publish_and_wait(spinner, publisher, recorder, raw_cloud(6.1, [motion.joints_xyz[1]]), 1)
    assert node.status().level == DiagnosticStatus.OK


def test_markers_are_built_only_when_asked():
    motion = generate_motion(3, fps=30.0, seed=3)
    hand_filter = HandFilter()
    for stamp, joints in zip(motion.stamps_s, motion.joints_xyz):
        tracks = hand_filter.update(stamp, [Observation(joints, np.full(21, 0.9))])
    header = Header(frame_id=FRAME)
    shown = frame_outputs(tracks, header)
    hidden = frame_outputs(tracks, header, markers=False)
    assert len(deserialize_message(shown['markers'], MarkerArray).markers) == 3
    assert hidden['markers'] is None
    assert all(hidden[name] is not None for name in hidden if name != 'markers')
