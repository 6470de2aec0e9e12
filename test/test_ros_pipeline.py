"""
End to end over real DDS: synthetic camera -> hand_pose_node -> hand_filter_node.

Runs the shipped default model, in one process (``create_nodes``) and as a separate
``hand_pose_pipeline`` process with a subscriber in the test process.
"""

import os
import signal
import subprocess
import sys
import time

from conftest import Recorder, Spinner
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseStamped
import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import Image, JointState, PointCloud2
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import MarkerArray

from hand_pose_ros.core.skeleton import JOINT_NAMES
from hand_pose_ros.ros.hand_pose_node import FALLING_BEHIND
from hand_pose_ros.ros.messages import hands_from_cloud
from hand_pose_ros.ros.node_utils import OUTPUT_QOS, stamp_ns
from hand_pose_ros.ros.pipeline import create_nodes, default_params_file

MODEL = os.environ.get('HAND_POSE_TEST_MODEL', 'default')
CAMERA_FRAME = 'camera_depth_optical_frame'
# Mean 3D error bound of the shipped model against the synthetic ground truth, through the
# whole pipeline (localiser, network, filter) on a 10 Hz synthetic sequence. The shipped
# model measures 32-38 mm on these first frames (17.4 mm on the held-out set with oracle
# centres): the bound catches a broken pipeline or model, it is not the accuracy
# target. The camera stamps frames on a fixed grid; on a loaded machine frames are dropped
# (by the camera's timer or the node's latest-frame slot), so the frames judged vary, and
# the tests judge the outputs recorded when the pipeline stopped.
MAX_MEAN_ERROR_MM = 60.0
# The sequence shows one hand; the hand score keeps false hands (arms, bodies, clutter) out
# of most frames (7 of the first 40 have one).
MAX_FALSE_HAND_FRAME_FRACTION = 0.3
OVERRIDES = ['-p', 'rate_hz:=10.0', '-p', 'sequence_frames:=200', '-p', 'seed:=5',
             '-p', f'model.name:={MODEL}', '-p', 'model.backend:=onnxruntime']


@pytest.fixture(scope='module')
def pipeline_run():
    """Run the in-process pipeline until 40 filtered outputs, stop it; return its outputs."""
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=int(os.environ['ROS_DOMAIN_ID']))
    spinner = Spinner(context)
    try:
        nodes = [spinner.add(n) for n in create_nodes(default_params_file(), synthetic=True,
                                                      context=context,
                                                      extra_ros_args=OVERRIDES)]
        probe = spinner.add(rclpy.create_node('probe', context=context))
        recorder = Recorder(probe)
        for msg_type, topic in ((Image, 'depth/image_raw'),
                                (PointCloud2, 'hand_pose/ground_truth'),
                                (PointCloud2, 'hand_pose/raw_keypoints'),
                                (PointCloud2, 'hand_pose/keypoints'),
                                (PoseArray, 'hand_pose/joints'),
                                (PoseStamped, 'hand_pose/palm_pose'),
                                (JointState, 'hand_pose/joint_states'),
                                (MarkerArray, 'hand_pose/markers'), (TFMessage, '/tf'),
                                (DiagnosticArray, '/diagnostics')):
            recorder.listen(msg_type, topic, OUTPUT_QOS)
        assert spinner.wait_for(
            lambda: len(recorder.messages['hand_pose/keypoints']) >= 40, 90), \
            'pipeline produced too few outputs'
        statuses = [node.status() for node in nodes[1:]]
    finally:
        spinner.close()
        context.try_shutdown()
    # Every node is stopped: the tests judge these outputs, not a list that still grows.
    yield {topic: list(msgs) for topic, msgs in recorder.messages.items()}, statuses


def test_every_output_has_the_input_header(pipeline_run):
    messages, _ = pipeline_run
    depth_stamps = {stamp_ns(m.header) for m in messages['depth/image_raw']}
    for topic in ('hand_pose/raw_keypoints', 'hand_pose/keypoints', 'hand_pose/joints',
                  'hand_pose/palm_pose', 'hand_pose/joint_states'):
        assert messages[topic], topic
        for msg in messages[topic]:
            assert msg.header.frame_id == CAMERA_FRAME, topic
            assert stamp_ns(msg.header) in depth_stamps, topic
    for msg in messages['/tf']:
        for transform in msg.transforms:
            assert transform.header.frame_id == CAMERA_FRAME
            assert stamp_ns(transform.header) in depth_stamps


def test_hand_structure_and_tf_tree(pipeline_run):
    messages, _ = pipeline_run
    for cloud, poses in zip(messages['hand_pose/keypoints'][-10:],
                            messages['hand_pose/joints'][-10:]):
        hands = hands_from_cloud(cloud)
        assert all(h['keypoints_xyz'].shape == (21, 3) for h in hands)
        assert len(poses.poses) % 21 == 0
    # A frame where the filter holds no hand publishes an empty JointState; the single hand
    # of the sequence is tracked in most of the last frames.
    names = [m.name for m in messages['hand_pose/joint_states'][-10:]]
    assert sum(bool(n) for n in names) >= 5
    assert all(n.split('_')[0] in ('left', 'right', 'hand') for frame in names for n in frame)
    for msg in messages['/tf'][-10:]:
        children = [t.child_frame_id for t in msg.transforms]
        assert len(children) == len(set(children))   # one parent per frame: a tree
        palms = [c for c in children if c.count('_') == 1]
        for palm in palms:
            joints = [c for c in children if c.startswith(palm + '_')]
            assert set(joints) <= {f'{palm}_{name}' for name in JOINT_NAMES}
    markers = [m for msg in messages['hand_pose/markers'] for m in msg.markers]
    assert {m.type for m in markers} >= {7, 5, 9}   # sphere list, line list, text


def test_accuracy_against_ground_truth(pipeline_run):
    messages, _ = pipeline_run
    truth = {stamp_ns(m.header): hands_from_cloud(m) for m in messages['hand_pose/ground_truth']}
    errors = []
    for cloud in messages['hand_pose/keypoints']:
        gt = truth.get(stamp_ns(cloud.header))
        hands = [h for h in hands_from_cloud(cloud) if h['valid'].any()]
        if not gt or not hands:
            continue
        # Nearest estimated hand to the primary ground-truth hand (by wrist).
        target = gt[0]['keypoints_xyz']
        best = min(hands, key=lambda h: np.linalg.norm(h['keypoints_xyz'][0] - target[0]))
        valid = best['valid']
        errors.append(np.linalg.norm(best['keypoints_xyz'][valid] - target[valid], axis=1).mean())
    assert len(errors) >= 20
    mean_mm = float(np.mean(errors) * 1000)
    print(f'pipeline mean 3D error over {len(errors)} frames: {mean_mm:.1f} mm')
    assert mean_mm < MAX_MEAN_ERROR_MM


def test_false_hands_are_rare(pipeline_run):
    messages, _ = pipeline_run
    truth = {stamp_ns(m.header): len(hands_from_cloud(m))
             for m in messages['hand_pose/ground_truth']}
    extra = [len(hands_from_cloud(cloud)) > truth[stamp_ns(cloud.header)]
             for cloud in messages['hand_pose/raw_keypoints']
             if stamp_ns(cloud.header) in truth]
    assert len(extra) >= 20
    assert np.mean(extra) <= MAX_FALSE_HAND_FRAME_FRACTION


def test_diagnostics_report_running_nodes(pipeline_run):
    messages, statuses = pipeline_run
    # Running, or running behind on a loaded machine (a speed, not a fault): no errors, no
    # bad input.
    assert all(s.level == DiagnosticStatus.OK or s.message == FALLING_BEHIND
               for s in statuses), [s.message for s in statuses]
    names = {s.name for msg in messages['/diagnostics'] for s in msg.status}
    assert any('hand pose estimation' in n for n in names)
    assert any('hand filter' in n for n in names)


def test_pipeline_in_a_separate_process(ros_context):
    script = os.path.join(os.path.dirname(sys.executable), 'hand_pose_pipeline')
    process = subprocess.Popen([script, '--synthetic', '--namespace', 'external',
                                '--ros-args', *OVERRIDES],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = rclpy.create_node('external_subscriber', context=ros_context)
    received = []
    node.create_subscription(PointCloud2, '/external/hand_pose/keypoints', received.append,
                             OUTPUT_QOS)
    from rclpy.executors import SingleThreadedExecutor
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 90
        while len(received) < 5 and time.monotonic() < deadline and process.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        assert len(received) >= 5, process.stdout.read() if process.poll() is not None else ''
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        executor.shutdown()
        node.destroy_node()
    assert process.returncode == 0, output
    assert 'never retrieved' not in output   # executors stopped before their nodes went
