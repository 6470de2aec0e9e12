"""Faults through real topics: camera stops, resolution changes, node restarts, sim time."""

from conftest import Recorder
from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from hand_pose_ros.core import load_estimator
from hand_pose_ros.core.backends.tensorrt_backend import tensorrt_available
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.synth import SyntheticGenerator
from hand_pose_ros.ros.conversions import camera_info_from_intrinsics, image_from_array
from hand_pose_ros.ros.hand_filter_node import HandFilterNode
from hand_pose_ros.ros.hand_pose_node import HandPoseNode
from hand_pose_ros.ros.node_utils import NodeSpinner, OUTPUT_QOS, run, stamp_ns

SR300 = CameraIntrinsics.from_preset('sr300')
ICVL = CameraIntrinsics.from_preset('icvl')


@pytest.fixture(scope='module')
def depth_frames():
    return {cam: [SyntheticGenerator(cam, seed=s).sample_frame().depth_mm for s in (1, 2)]
            for cam in (SR300, ICVL)}


class Rig:
    """Estimator + filter nodes with a test camera and an output recorder."""

    # Long enough that a frame's trip through both nodes on a loaded machine stays far
    # inside it (the status is read as soon as the output arrives), short for the tests.
    def __init__(self, spinner, card, stale_timeout_s=3.0):
        overrides = ['--ros-args', '-p', f'diagnostics.stale_timeout_s:={stale_timeout_s}']
        self.spinner = spinner
        self.pose = spinner.add(HandPoseNode(
            estimator=load_estimator(str(card), backend='onnxruntime'),
            context=spinner.context, cli_args=overrides))
        self.filter = spinner.add(HandFilterNode(context=spinner.context, cli_args=overrides))
        self.camera = spinner.add(rclpy.create_node('fault_camera', context=spinner.context))
        self.depth_pub = self.camera.create_publisher(Image, 'depth/image_raw',
                                                      qos_profile_sensor_data)
        self.info_pub = self.camera.create_publisher(CameraInfo, 'depth/camera_info',
                                                     qos_profile_sensor_data)
        recorder = Recorder(self.camera)
        self.raw = recorder.listen(PointCloud2, 'hand_pose/raw_keypoints', OUTPUT_QOS)
        self.out = recorder.listen(PointCloud2, 'hand_pose/keypoints', OUTPUT_QOS)
        assert spinner.wait_for(lambda: self.depth_pub.get_subscription_count() > 0, 10)

    def frame(self, depth_mm, stamp_s, intrinsics=SR300, info=True):
        header = Header(frame_id='cam')
        header.stamp.sec, header.stamp.nanosec = int(stamp_s), int((stamp_s % 1) * 1e9)
        if info:
            self.info_pub.publish(camera_info_from_intrinsics(intrinsics, header))
        msg = image_from_array(depth_mm, '16UC1', header)
        self.depth_pub.publish(msg)
        stamp = stamp_ns(header)
        assert self.spinner.wait_for(
            lambda: any(stamp_ns(m.header) == stamp for m in self.out), 15), stamp_s
        return next(m for m in self.raw if stamp_ns(m.header) == stamp)


def test_camera_stop_is_an_error_and_restart_recovers(spinner, tiny_model_card, depth_frames):
    rig = Rig(spinner, tiny_model_card)
    rig.frame(depth_frames[SR300][0], 1.0)
    assert rig.pose.status().level == DiagnosticStatus.OK
    assert spinner.wait_for(lambda: rig.pose.status().level == DiagnosticStatus.ERROR, 10)
    assert 'no depth images' in rig.pose.status().message
    assert spinner.wait_for(lambda: rig.filter.status().level == DiagnosticStatus.ERROR, 10)
    rig.frame(depth_frames[SR300][1], 5.0)   # restart, after a gap in stamps
    assert rig.pose.status().level == DiagnosticStatus.OK
    assert rig.filter.status().level == DiagnosticStatus.OK


def test_resolution_change_follows_camera_info(spinner, tiny_model_card, depth_frames):
    rig = Rig(spinner, tiny_model_card)
    rig.frame(depth_frames[SR300][0], 1.0)
    rig.frame(depth_frames[ICVL][0], 1.1, intrinsics=ICVL)   # 320x240 with its own info
    rig.frame(depth_frames[SR300][1], 1.2)
    assert spinner.wait_for(lambda: rig.pose._counts['processed'] >= 3, 10)
    assert rig.pose._counts['bad_input'] == 0 and rig.pose._counts['processed'] == 3


def test_filter_node_restart_while_estimator_publishes(
        spinner, tiny_model_card, depth_frames):
    rig = Rig(spinner, tiny_model_card)
    rig.frame(depth_frames[SR300][0], 1.0)
    spinner.remove(rig.filter)
    rig.filter = spinner.add(HandFilterNode(context=spinner.context))
    assert spinner.wait_for(lambda: rig.filter.count_subscribers('hand_pose/keypoints') > 0, 10)
    rig.frame(depth_frames[SR300][1], 1.1)
    assert rig.filter._counts['received'] >= 1


def test_switching_to_sim_time_keeps_input_stamps(spinner, tiny_model_card, depth_frames):
    rig = Rig(spinner, tiny_model_card)
    rig.frame(depth_frames[SR300][0], 1.0)
    for node in (rig.pose, rig.filter):
        assert node.set_parameters([Parameter('use_sim_time', value=True)])[0].successful
    raw = rig.frame(depth_frames[SR300][1], 2.0)
    assert (raw.header.stamp.sec, raw.header.stamp.nanosec) == (2, 0)
    for node in (rig.pose, rig.filter):
        assert node.set_parameters([Parameter('use_sim_time', value=False)])[0].successful
    raw = rig.frame(depth_frames[SR300][0], 3.0)
    assert (raw.header.stamp.sec, raw.header.stamp.nanosec) == (3, 0)
    assert rig.pose._counts['internal_errors'] == 0
    assert np.isfinite([rig.pose._latency_ms.percentile(50)]).all()


def test_a_node_that_stops_on_an_error_ends_the_wait_with_its_traceback(ros_context):
    # The pipeline process waits on its nodes: one that stopped must not go unnoticed.
    healthy = rclpy.create_node('healthy', context=ros_context)
    failing = rclpy.create_node('failing', context=ros_context)

    def fail():
        raise RuntimeError('callback bug')

    failing.create_timer(0.05, fail)
    spinner = NodeSpinner([healthy, failing], context=ros_context)
    try:
        spinner.wait()     # returns: Ctrl-C is not needed
        assert not spinner.spinning()
        assert len(spinner.errors) == 1 and 'spin failing' in spinner.errors[0]
        assert 'RuntimeError: callback bug' in spinner.errors[0]
    finally:
        spinner.stop()
        healthy.destroy_node()
        failing.destroy_node()


@pytest.mark.parametrize('value, message', [('1000.0', 'out of range'),
                                            ('2', "of type 'INTEGER', expecting type 'DOUBLE'")])
def test_a_bad_start_up_parameter_is_one_error_line(capsys, value, message):
    # rclpy's own range and type checks at declaration, not only ours.
    code = run(HandFilterNode, ['hand_filter_node', '--ros-args', '-p',
                                f'filter.one_euro.beta:={value}'])
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err
    assert err.startswith('HandFilterNode: error: ') and message in err


@pytest.mark.parametrize('parameter, message', [
    ('model.name:=nonexistent', "model 'nonexistent'"),
    ('model.backend:=tensorrt', 'TensorRT backend unavailable')])
def test_a_model_that_cannot_load_is_one_error_line(capsys, parameter, message):
    # The node's construction fails after rclpy registered it: rclpy destroys it at
    # shutdown, which must not raise over the error line.
    if message.startswith('TensorRT') and tensorrt_available()[0]:
        pytest.skip('TensorRT runs here')
    code = run(HandPoseNode, ['hand_pose_node', '--ros-args', '-p', parameter])
    err = capsys.readouterr().err
    assert code == 1 and 'Traceback' not in err, err
    assert err.startswith('HandPoseNode: error: ') and message in err
