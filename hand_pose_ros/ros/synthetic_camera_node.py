"""
``synthetic_camera_node``: a depth camera made of the synthetic hand engine.

Publishes ``depth/image_raw`` (16UC1), ``depth/camera_info``, optionally ``color/image_raw``
(rgb8), and the ground truth on ``hand_pose/ground_truth`` (PointCloud2 in the keypoint
layout; confidence 1 for visible joints, 0 for occluded ones), all with the same header.
A new motion sequence starts whenever one ends, so the camera runs forever.

Frames are stamped like a hardware camera's: on a fixed grid of ``1 / rate_hz``, the
timer's own schedule, whatever the timer's jitter. A frame's stamp is the grid time its tick
was due, never later than the tick itself (a camera stamps the exposure, which comes before
the image). A tick that comes late stands for the newest grid slot, and the frames of the
slots it missed are dropped (the hand keeps moving in real time, as in front of a camera
whose host fell behind); ``dropped`` counts them.
"""

from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.synth import generate_motion, SyntheticGenerator
from hand_pose_ros.ros.conversions import camera_info_from_intrinsics, image_from_array
from hand_pose_ros.ros.messages import keypoint_cloud
from hand_pose_ros.ros.node_utils import (create_encoded_publisher, declare_parameters,
                                          exit_process, OUTPUT_QOS, publish_encoded, run)
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
        self._motion = None
        self._background = None
        self._frame_index = 0
        self._first_stamp = None
        self._slot = -1
        self._depth_pub = self.create_publisher(Image, 'depth/image_raw', OUTPUT_QOS)
        self._info_pub = self.create_publisher(CameraInfo, 'depth/camera_info', OUTPUT_QOS)
        self._truth_pub = create_encoded_publisher(self, PointCloud2, 'hand_pose/ground_truth')
        self._color_pub = (self.create_publisher(Image, 'color/image_raw', OUTPUT_QOS)
                           if self._values['publish_color'] else None)
        self.published = 0
        self.dropped = 0
        self._timer = self.create_timer(1.0 / self._values['rate_hz'], self._tick)
        self.get_logger().info(
            f"synthetic {self._values['camera']} camera at {self._values['rate_hz']} Hz, "
            f"frame_id {self._values['frame_id']!r}")

    def _next_frame(self, skip):
        """Render the frame after ``skip`` dropped ones, starting sequences as they end."""
        self._frame_index += skip
        if self._motion is not None and self._frame_index >= len(self._motion.poses):
            self._motion = None
        if self._motion is None:
            self._motion = generate_motion(
                self._values['sequence_frames'], fps=self._values['rate_hz'],
                seed=self._values['seed'] + self._sequence_index,
                max_speed_m_s=self._values['max_speed_m_s'], intrinsics=self._intrinsics)
            self._sequence_index += 1
            self._background = self._generator.motion_scene(self._motion)
            self._frame_index = 0
        frame = self._generator.render_motion_frame(
            self._background, self._motion, self._frame_index,
            color=self._values['publish_color'])
        self._frame_index += 1
        return frame

    def _tick(self):
        now = self.get_clock().now()
        # The timer's own period (whole nanoseconds): a grid of another period would drift
        # from the ticks by a nanosecond a frame and, hours later, stamp a tick a slot late.
        period_ns = self._timer.timer_period_ns
        if self._first_stamp is None:
            # The grid is the timer's schedule: this tick was due one period before the next.
            due_in_ns = self._timer.time_until_next_call() or 0
            self._first_stamp = now - Duration(nanoseconds=max(0, period_ns - due_in_ns))
        slot = (now - self._first_stamp).nanoseconds // period_ns
        if slot <= self._slot:
            return  # no new slot is due yet: its stamp would lie in the future
        skip = slot - self._slot - 1
        self._slot = slot
        self.dropped += skip
        frame = self._next_frame(skip)
        header = Header(stamp=(self._first_stamp + Duration(nanoseconds=slot * period_ns)
                               ).to_msg(), frame_id=self._values['frame_id'])
        self._info_pub.publish(camera_info_from_intrinsics(self._intrinsics, header))
        self._depth_pub.publish(image_from_array(frame.depth_mm, '16UC1', header))
        if self._color_pub is not None and frame.color is not None:
            self._color_pub.publish(image_from_array(frame.color, 'rgb8', header))
        truth = [GroundTruthHand(i, label) for i, label in enumerate(frame.hands)]
        publish_encoded(self._truth_pub, keypoint_cloud(truth, header))
        self.published += 1


def main(args=None):
    """Run ``synthetic_camera_node``."""
    exit_process(run(SyntheticCameraNode, args))
