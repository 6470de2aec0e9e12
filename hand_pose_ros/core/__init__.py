"""
ROS-free core of hand_pose_ros: geometry, data, models, filters.

The numpy parts import eagerly; anything needing torch or onnxruntime loads lazily
inside the function that needs it.
"""

from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz, xyz_from_uvd

__all__ = ['CameraIntrinsics', 'uvd_from_xyz', 'xyz_from_uvd']
