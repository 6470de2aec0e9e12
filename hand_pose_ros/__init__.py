"""
Depth-image 3D hand pose estimation for ROS 2.

The package splits into a ROS-free :mod:`hand_pose_ros.core` (geometry, data,
models, filters) and a thin :mod:`hand_pose_ros.ros` layer (messages, nodes).
Importing this package loads neither rclpy nor torch.
"""

__version__ = '0.1.0'
