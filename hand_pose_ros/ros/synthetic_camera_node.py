"""
``synthetic_camera_node``: a depth camera made of the synthetic hand engine.

Publishes ``depth/image_raw`` (16UC1), ``depth/camera_info``, optionally ``color/image_raw``
(rgb8), and the ground truth on ``hand_pose/ground_truth`` (PointCloud2 in the keypoint
layout; confidence 1 for visible joints, 0 for occluded ones), all with the same header.
A new motion sequence starts whenever one ends, so the camera runs forever.
"""

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.synth import generate_motion, SyntheticGenerator
from hand_pose_ros.ros.conversions import camera_info_from_intrinsics, image_from_array
from hand_pose_ros.ros.messages import keypoint_cloud
from hand_pose_ros.ros.node_utils import declare_parameters, OUTPUT_QOS, run
from hand_pose_ros.ros.params import SYNTHETIC_CAMERA_PARAMS


class GroundTruthHand:
    """A labelled synthetic hand in the shape the message builders expect."""

    def __init__(self, hand_id, label):
        self.hand_id = hand_id
        self.keypoints_xyz = label.joints_xyz
        self.scores = label.visible.astype(float)
        self.valid = [True] * len(label.joints_xyz)
        self.handedness = label.handedness


class SyntheticCameraNode(Node):
    """Render and publish synthetic depth frames at a fixed rate."""

    def __init__(self, **node_kwargs):
        super().__init__('synthetic_camera_node', **node_kwargs)
        self._values = declare_parameters(self, SYNTHETIC_CAMERA_PARAMS)
        self._intrinsics = CameraIntrinsics.from_preset(self._values['camera'])
        self._generator = SyntheticGenerator(self._intrinsics, seed=self._values['seed'])
        self._sequence_index = 0
        self._frames = iter(())
        self._depth_pub = self.create_publisher(Image, 'depth/image_raw', OUTPUT_QOS)
        self._info_pub = self.create_publisher(CameraInfo, 'depth/camera_info', OUTPUT_QOS)
        self._truth_pub = self.create_publisher(PointCloud2, 'hand_pose/ground_truth',
                                                OUTPUT_QOS)
        self._color_pub = (self.create_publisher(Image, 'color/image_raw', OUTPUT_QOS)
                           if self._values['publish_color'] else None)
        self.published = 0
        self.create_timer(1.0 / self._values['rate_hz'], self._tick)
        self.get_logger().info(
            f"synthetic {self._values['camera']} camera at {self._values['rate_hz']} Hz, "
            f"frame_id {self._values['frame_id']!r}")

    def _next_frame(self):
        frame = next(self._frames, None)
        if frame is None:
            motion = generate_motion(
                self._values['sequence_frames'], fps=self._values['rate_hz'],
                seed=self._values['seed'] + self._sequence_index,
                max_speed_m_s=self._values['max_speed_m_s'], intrinsics=self._intrinsics)
            self._sequence_index += 1
            self._frames = self._generator.render_motion(
                motion, color=self._values['publish_color'])
            frame = next(self._frames)
        return frame

    def _tick(self):
        frame = self._next_frame()
        header = self._depth_header()
        self._info_pub.publish(camera_info_from_intrinsics(self._intrinsics, header))
        self._depth_pub.publish(image_from_array(frame.depth_mm, '16UC1', header))
        if self._color_pub is not None and frame.color is not None:
            self._color_pub.publish(image_from_array(frame.color, 'rgb8', header))
        truth = [GroundTruthHand(i, label) for i, label in enumerate(frame.hands)]
        self._truth_pub.publish(keypoint_cloud(truth, header))
        self.published += 1

    def _depth_header(self):
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self._values['frame_id'])


def main(args=None):
    """Run ``synthetic_camera_node``."""
    return run(SyntheticCameraNode, args)
