import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from hand_pose_ros.ros.conversions import depth_from_image, image_from_array


def test_depth_image_passes_between_two_nodes_over_dds(ros_context):
    sender = rclpy.create_node('depth_sender', context=ros_context)
    receiver = rclpy.create_node('depth_receiver', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(sender)
    executor.add_node(receiver)
    received = []
    receiver.create_subscription(Image, 'depth/image_raw', received.append,
                                 qos_profile_sensor_data)
    publisher = sender.create_publisher(Image, 'depth/image_raw', 10)
    depth = np.random.default_rng(3).integers(300, 1200, size=(48, 64)).astype(np.uint16)
    msg = image_from_array(depth, '16UC1')
    msg.header.frame_id = 'camera_depth_optical_frame'
    msg.header.stamp.sec, msg.header.stamp.nanosec = 42, 7
    try:
        for _ in range(100):
            publisher.publish(msg)
            executor.spin_once(timeout_sec=0.05)
            if received:
                break
        assert received, 'no image arrived over DDS'
        got = received[0]
        assert got.header.frame_id == 'camera_depth_optical_frame'
        assert (got.header.stamp.sec, got.header.stamp.nanosec) == (42, 7)
        np.testing.assert_array_equal(depth_from_image(got), depth)
    finally:
        executor.shutdown()
        sender.destroy_node()
        receiver.destroy_node()
