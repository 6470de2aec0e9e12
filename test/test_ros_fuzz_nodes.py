"""
Fuzzing through the real code paths: the estimator API and the running node over DDS.

Figures asserted: messages tried, exceptions escaping a callback (0), nodes alive at the
end (all), correct output on the next valid frame (always).
"""

from conftest import Recorder
from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from test_ros_fuzz_conversions import image_messages

from hand_pose_ros.core import load_estimator
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.synth import SyntheticGenerator
from hand_pose_ros.ros.conversions import camera_info_from_intrinsics, image_from_array
from hand_pose_ros.ros.hand_pose_node import HandPoseNode
from hand_pose_ros.ros.node_utils import OUTPUT_QOS, stamp_ns

CAMERA = CameraIntrinsics.from_preset('icvl')
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture]


def depth_arrays():
    special = st.sampled_from([0.0, np.nan, np.inf, -np.inf, -1.0, 1e9, 0.5, 1.0])
    shapes = st.sampled_from([(240, 320), (240, 320), (120, 160), (0, 320), (240,),
                              (240, 320, 3), (1, 1)])
    dtypes = st.sampled_from([np.float32, np.uint16, np.float64, np.int32, np.uint8])
    return st.tuples(shapes, dtypes, special, st.floats(0, 1), st.integers(0, 2 ** 16))


def build_depth(spec, base):
    shape, dtype, special, fraction, seed = spec
    rng = np.random.default_rng(seed)
    if shape == (240, 320):
        depth = base.astype(np.float64) / 1000.0
    else:
        depth = rng.uniform(0.2, 2.0, size=shape)
    mask = rng.random(depth.shape) < fraction
    depth = np.where(mask, special, depth)
    if np.issubdtype(dtype, np.integer):
        with np.errstate(invalid='ignore'):
            depth = np.nan_to_num(depth * 1000.0, posinf=0, neginf=0).clip(0, 60000)
    return depth.astype(dtype)


def test_estimator_fuzz_returns_poses_or_value_error(tiny_model_card):
    estimator = load_estimator(str(tiny_model_card), backend='onnxruntime')
    base = SyntheticGenerator(CAMERA, seed=3).sample_frame().depth_mm
    tried = []
    intrinsics = st.one_of(st.just(CAMERA), st.just(CameraIntrinsics.from_preset('sr300')))
    centers = st.one_of(st.none(), st.lists(st.tuples(
        st.floats(-1, 1), st.floats(-1, 1), st.floats(-0.5, 3.0)), min_size=1, max_size=3))

    @settings(max_examples=2000, deadline=None, suppress_health_check=SLOW)
    @given(depth_arrays(), intrinsics, centers)
    def run(spec, camera, given_centers):
        tried.append(1)
        depth = build_depth(spec, base)
        try:
            hands = estimator.estimate(depth, camera, centers=given_centers)
        except ValueError as error:
            assert str(error)
            return
        for hand in hands:
            assert hand.keypoints_xyz.shape == (21, 3)
            assert np.isfinite(hand.keypoints_xyz).all()
            assert ((hand.scores >= 0) & (hand.scores <= 1)).all()

    run()
    assert len(tried) == 2000


def test_node_fuzz_over_dds(spinner, tiny_model_card):
    node = spinner.add(HandPoseNode(estimator=load_estimator(str(tiny_model_card),
                                                             backend='onnxruntime'),
                                    context=spinner.context))
    camera = spinner.add(rclpy.create_node('fuzz_camera', context=spinner.context))
    depth_pub = camera.create_publisher(Image, 'depth/image_raw', qos_profile_sensor_data)
    info_pub = camera.create_publisher(CameraInfo, 'depth/camera_info',
                                       qos_profile_sensor_data)
    raw = Recorder(camera).listen(PointCloud2, 'hand_pose/raw_keypoints', OUTPUT_QOS)
    assert spinner.wait_for(lambda: depth_pub.get_subscription_count() > 0, 10)
    counts = node._counts

    def handled():
        return sum(counts[k] for k in ('processed', 'bad_input', 'no_camera_info'))

    stamps = st.one_of(st.integers(0, 2 ** 31 - 1), st.just(0), st.just(2 ** 31 - 1))
    tried = []

    @settings(max_examples=1000, deadline=None, suppress_health_check=SLOW)
    @given(image_messages(), stamps, st.booleans(),
           st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=9,
                    max_size=9))
    def run(msg, sec, send_info, k):
        tried.append(1)
        header = Header(frame_id='fuzz')
        header.stamp.sec = sec
        msg.header = header
        if send_info:
            info = CameraInfo(header=header, width=msg.width, height=msg.height)
            info.k = k
            info_pub.publish(info)
        before = handled()
        depth_pub.publish(msg)
        assert spinner.wait_for(lambda: handled() > before, 10), 'frame never handled'

    run()
    assert len(tried) == 1000
    assert counts['internal_errors'] == 0          # no exception escaped the frame path
    assert node._worker.is_alive() and spinner.spinning()
    # The next valid frame gives a correct output: processed, no error, published.
    bad_before = counts['bad_input']
    header = Header(frame_id='fuzz')
    header.stamp.sec, header.stamp.nanosec = 2 ** 31 - 1, 123456789   # unlike any fuzz stamp
    info_pub.publish(camera_info_from_intrinsics(CAMERA, header))
    depth = SyntheticGenerator(CAMERA, seed=4).sample_frame().depth_mm
    depth_pub.publish(image_from_array(depth, '16UC1', header))
    assert spinner.wait_for(lambda: any(stamp_ns(m.header) == stamp_ns(header) for m in raw),
                            15)
    assert counts['bad_input'] == bad_before
