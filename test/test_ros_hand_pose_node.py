"""hand_pose_node over real DDS: QoS, pairing, parameters and bad input through topics."""

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
from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.synth import SyntheticGenerator
from hand_pose_ros.ros.conversions import camera_info_from_intrinsics, image_from_array
from hand_pose_ros.ros.hand_pose_node import HandPoseNode
from hand_pose_ros.ros.messages import hands_from_cloud
from hand_pose_ros.ros.node_utils import OUTPUT_QOS

CAMERA = CameraIntrinsics.from_preset('sr300')
FRAME = 'cam_optical'


@pytest.fixture(scope='module')
def frames():
    generator = SyntheticGenerator(CAMERA, seed=11)
    return [generator.sample_frame() for _ in range(3)]


def header(stamp_s):
    h = Header(frame_id=FRAME)
    h.stamp.sec, h.stamp.nanosec = int(stamp_s), int(round((stamp_s % 1) * 1e9))
    return h


class Camera:
    """A test camera: publishes depth + camera_info pairs and records the node's output."""

    def __init__(self, spinner, qos):
        self.node = spinner.add(rclpy.create_node('test_camera', context=spinner.context))
        self.depth_pub = self.node.create_publisher(Image, 'depth/image_raw', qos)
        self.info_pub = self.node.create_publisher(CameraInfo, 'depth/camera_info', qos)
        self.recorder = Recorder(self.node)
        self.raw = self.recorder.listen(PointCloud2, 'hand_pose/raw_keypoints', OUTPUT_QOS)
        self.spinner = spinner

    def send(self, depth_msg, stamp_s, info=True, intrinsics=CAMERA):
        h = header(stamp_s)
        if info:
            self.info_pub.publish(camera_info_from_intrinsics(intrinsics, h))
        depth_msg.header = h
        self.depth_pub.publish(depth_msg)

    def send_and_wait(self, depth_msg, stamp_s, **kwargs):
        self.send(depth_msg, stamp_s, **kwargs)
        stamp = (header(stamp_s).stamp.sec, header(stamp_s).stamp.nanosec)

        def output():
            return next((m for m in self.raw
                         if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp), None)

        assert self.spinner.wait_for(lambda: output() is not None, 15), 'no raw output'
        return output()


@pytest.fixture
def node_and_camera(spinner, tiny_model_card, request):
    qos = getattr(request, 'param', qos_profile_sensor_data)
    estimator = load_estimator(str(tiny_model_card), backend='onnxruntime')
    node = spinner.add(HandPoseNode(estimator=estimator, context=spinner.context))
    camera = Camera(spinner, qos)
    assert spinner.wait_for(lambda: camera.depth_pub.get_subscription_count() > 0, 10)
    return node, camera


@pytest.mark.parametrize('node_and_camera', [qos_profile_sensor_data, OUTPUT_QOS],
                         ids=['best_effort_camera', 'reliable_camera'], indirect=True)
def test_camera_qos_kinds_both_work_and_header_is_kept(node_and_camera, frames):
    node, camera = node_and_camera
    for k, frame in enumerate(frames):
        out = camera.send_and_wait(image_from_array(frame.depth_mm, '16UC1'), 10.0 + k)
        assert out.header.frame_id == FRAME
        assert (out.header.stamp.sec, out.header.stamp.nanosec) == (10 + k, 0)
        hands = hands_from_cloud(out)
        assert 1 <= len(hands) <= 2
        assert all(h['keypoints_xyz'].shape == (21, 3) for h in hands)
    # Counted just after the output is published.
    assert camera.spinner.wait_for(lambda: node._counts['processed'] >= len(frames), 10)
    assert node._counts['processed'] == len(frames)


def test_float_depth_and_unsynchronised_info(node_and_camera, frames):
    node, camera = node_and_camera
    depth_m = frames[0].depth_m.astype(np.float32)
    camera.send_and_wait(image_from_array(depth_m, '32FC1'), 20.0)
    camera.send_and_wait(image_from_array(depth_m, '32FC1'), 20.5, info=False)
    assert node._counts['unsynchronised_info'] == 1
    assert node._counts['frame_mismatch'] == node._counts['suspect_depth_units'] == 0


def test_likely_mistakes_are_processed_with_a_counted_warning(node_and_camera, frames):
    node, camera = node_and_camera
    # Millimetres sent as 32FC1 (metres): converts, finds nothing; said so.
    millimetres = frames[0].depth_m.astype(np.float32) * 1000.0
    camera.send_and_wait(image_from_array(millimetres, '32FC1'), 30.0)
    assert node._counts['suspect_depth_units'] == 1
    # A camera_info of another frame (intrinsics of another camera?), an empty frame_id.
    msg = image_from_array(frames[0].depth_mm, '16UC1')
    camera.info_pub.publish(camera_info_from_intrinsics(CAMERA, Header(
        frame_id='other_optical', stamp=header(31.0).stamp)))
    camera.send_and_wait(msg, 31.0, info=False)
    assert node._counts['frame_mismatch'] == 1
    assert "camera_info frame_id 'other_optical'" in node._last_error
    assert node._counts['processed'] >= 2 and node._counts['bad_input'] == 0


class FailingOnce:
    """A real estimator whose next ``estimate`` raises once (a bug on one frame)."""

    def __init__(self, estimator):
        self.__dict__.update(estimator=estimator, fail=False)

    def __getattr__(self, name):
        return getattr(self.estimator, name)

    def __setattr__(self, name, value):
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.estimator, name, value)

    def estimate(self, *args, **kwargs):
        if self.fail:
            self.fail = False
            raise RuntimeError('a bug on one frame')
        return self.estimator.estimate(*args, **kwargs)


def test_an_internal_error_is_an_error_until_a_frame_goes_through(
        spinner, tiny_model_card, frames):
    estimator = FailingOnce(load_estimator(str(tiny_model_card), backend='onnxruntime'))
    node = spinner.add(HandPoseNode(estimator=estimator, context=spinner.context))
    camera = Camera(spinner, qos_profile_sensor_data)
    assert spinner.wait_for(lambda: camera.depth_pub.get_subscription_count() > 0, 10)
    depth = image_from_array(frames[0].depth_mm, '16UC1')
    estimator.fail = True
    camera.send(depth, 40.0)
    assert spinner.wait_for(lambda: node._counts['internal_errors'] == 1, 10)
    assert node.status().level == DiagnosticStatus.ERROR
    camera.send_and_wait(depth, 40.5)
    status = node.status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.OK and values['internal errors'] == '1'
    assert 'a bug on one frame' in values['last problem']
    assert node._worker.is_alive()


def test_lens_distortion_is_reported_and_frames_still_flow(node_and_camera, frames):
    node, camera = node_and_camera
    depth = image_from_array(frames[0].depth_mm, '16UC1')

    def distortion():
        return {kv.key: kv.value for kv in node.status().values}['lens distortion']

    camera.send_and_wait(depth, 30.0)
    assert distortion() == 'none'
    info = camera_info_from_intrinsics(CAMERA, header(30.5))
    info.d = [0.1, -0.05, 0.0, 0.0, 0.01]
    camera.info_pub.publish(info)
    assert len(hands_from_cloud(camera.send_and_wait(depth, 30.5, info=False))) >= 1
    assert distortion().startswith(
        'assumed rectified: camera_info has D = [0.1, -0.05, 0.0, 0.0, 0.01]')
    assert node._counts['bad_input'] == 0


def test_bad_frames_warn_and_the_next_good_frame_is_processed(node_and_camera, frames):
    node, camera = node_and_camera
    good = image_from_array(frames[0].depth_mm, '16UC1')
    node.set_parameters([Parameter('localizer.max_hands', value=1)])

    # No camera_info yet: the frame is skipped with a warning.
    camera.send(image_from_array(frames[0].depth_mm, '16UC1'), 1.0, info=False)
    assert camera.spinner.wait_for(lambda: node._counts['no_camera_info'] == 1, 10)
    assert node.status().level == DiagnosticStatus.WARN
    # The throttle period changes while warnings keep coming (rclpy's own throttle raised).
    assert node.set_parameters([Parameter('log_throttle_s', value=0.5)])[0].successful

    bad_frames = [
        image_from_array(frames[0].color if frames[0].color is not None
                         else np.zeros((480, 640, 3), np.uint8), 'rgb8'),     # encoding
        image_from_array(np.zeros((240, 320), np.uint16), '16UC1'),          # size mismatch
        image_from_array(np.zeros((480, 640), np.uint16), 'mono16'),         # all invalid
        image_from_array(np.full((480, 640), np.nan, np.float32), '32FC1'),  # NaN frame
    ]
    huge = Image(height=20000, width=20000, encoding='16UC1', step=40000)
    bad_frames.append(huge)
    stamp = 2.0

    def handled():
        return node._counts['bad_input'] + node._counts['processed']

    for bad in bad_frames:
        before = handled()
        camera.send(bad, stamp)
        assert camera.spinner.wait_for(lambda: handled() > before, 10)
        stamp += 0.1
        good_out = camera.send_and_wait(good, stamp)
        assert len(hands_from_cloud(good_out)) == 1, 'good frame after a bad one'
        stamp += 0.1
    assert node._counts['bad_input'] == 3          # encoding, size mismatch, huge
    assert node._counts['processed'] >= 7          # all-invalid frames give empty results
    assert node._counts['internal_errors'] == 0

    # A jump back in time (bag loop) is reported and frames keep flowing.
    out = camera.send_and_wait(good, 0.5)
    assert node._counts['time_jumps'] == 1 and len(hands_from_cloud(out)) == 1
    values = {kv.key: kv.value for kv in node.status().values}
    assert values['bad input'] == '3' and values['time jumps'] == '1'
    assert values['model'] == 'tiny on onnxruntime (fp32)'  # a card without an INT8 copy


def test_parameters_dynamic_readonly_and_range(node_and_camera):
    node, _ = node_and_camera
    assert node.set_parameters([Parameter('localizer.max_depth_m', value=1.2)])[0].successful
    assert node._estimator.localizer.config.max_depth_m == 1.2
    for name, value in (('localizer.max_depth_m', 50.0), ('localizer.max_hands', 0),
                        ('localizer.min_depth_m', 1.3), ('model.backend', 'torch'),
                        ('input.reliability', 'reliable')):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful, name
    assert node._estimator.localizer.config.max_depth_m == 1.2


@pytest.fixture(scope='module')
def rgb_model_card(tmp_path_factory):
    """Return an untrained, exported RGB joint-groups network (for the colour plumbing)."""
    torch = pytest.importorskip('torch')
    from hand_pose_ros.core import export, model_io
    from hand_pose_ros.core.crop import CropSpec
    from hand_pose_ros.core.models import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model('joint_groups_rgb', width=0.125, input_size=64).eval()
    spec = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3))
    card = model_io.save_model(model, tmp_path_factory.mktemp('rgb_model'), 'rgb',
                               extra={'crop': spec.to_dict()})
    export.export_card(card)
    return card


def test_a_colour_model_pairs_each_depth_frame_with_its_colour_image(spinner, rgb_model_card):
    frame = SyntheticGenerator(CAMERA, seed=12).sample_frame(color=True)
    estimator = load_estimator(str(rgb_model_card), backend='onnxruntime', max_hands=1)
    node = spinner.add(HandPoseNode(estimator=estimator, context=spinner.context))
    camera = Camera(spinner, qos_profile_sensor_data)
    color_pub = camera.node.create_publisher(Image, 'color/image_raw',
                                             qos_profile_sensor_data)
    assert spinner.wait_for(lambda: color_pub.get_subscription_count() > 0, 10)
    depth = image_from_array(frame.depth_mm, '16UC1')

    def send_color(pixels, encoding, stamp_s):
        color_pub.publish(image_from_array(pixels, encoding, header(stamp_s)))
        # Received (the node pairs it with a depth frame of the same stamp).
        assert spinner.wait_for(lambda: node._colors.match(round(stamp_s * 1e9))[1], 10)

    send_color(frame.color, 'rgb8', 1.0)
    hands = hands_from_cloud(camera.send_and_wait(depth, 1.0))
    assert len(hands) == 1 and np.all(np.isfinite(hands[0]['keypoints_xyz']))
    # BGR images are turned to RGB: the same pixels give the same joints.
    send_color(np.ascontiguousarray(frame.color[..., ::-1]), 'bgr8', 2.0)
    again = hands_from_cloud(camera.send_and_wait(depth, 2.0))
    np.testing.assert_allclose(again[0]['keypoints_xyz'], hands[0]['keypoints_xyz'],
                               atol=1e-6)

    # No colour image of the frame's stamp: skipped with a warning, nothing is published.
    camera.send(depth, 3.0)
    assert spinner.wait_for(lambda: node._counts['no_color'] == 1, 10)
    # A colour image of another size is bad input; the next good pair is processed.
    send_color(np.zeros((240, 320, 3), np.uint8), 'rgb8', 4.0)
    camera.send(depth, 4.0)
    assert spinner.wait_for(lambda: node._counts['bad_input'] == 1, 10)
    send_color(frame.color, 'rgb8', 5.0)
    assert len(hands_from_cloud(camera.send_and_wait(depth, 5.0))) == 1
    assert spinner.wait_for(lambda: node._counts['processed'] >= 3, 10)
    assert node._counts['processed'] == 3
    values = {kv.key: kv.value for kv in node.status().values}
    assert values['no color'] == '1'


def test_a_colour_model_runs_on_the_synthetic_cameras_colour_stream(spinner, rgb_model_card):
    from hand_pose_ros.ros.synthetic_camera_node import SyntheticCameraNode

    estimator = load_estimator(str(rgb_model_card), backend='onnxruntime', max_hands=1)
    node = spinner.add(HandPoseNode(estimator=estimator, context=spinner.context))
    spinner.add(SyntheticCameraNode(context=spinner.context, parameter_overrides=[
        Parameter('publish_color', value=True), Parameter('rate_hz', value=10.0),
        Parameter('seed', value=3)]))
    probe = spinner.add(rclpy.create_node('probe', context=spinner.context))
    raw = Recorder(probe).listen(PointCloud2, 'hand_pose/raw_keypoints', OUTPUT_QOS)
    assert spinner.wait_for(lambda: len(raw) >= 5, 60), 'too few outputs'
    # Depth and colour of a stamp arrive in any order: the node waits for the colour.
    assert node._counts['no_color'] == 0
    assert any(hands_from_cloud(msg) for msg in raw)
