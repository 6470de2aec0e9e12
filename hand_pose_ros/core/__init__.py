"""
ROS-free core of hand_pose_ros: geometry, data, models, filters.

The numpy parts import eagerly; anything needing torch or onnxruntime loads lazily
inside the function that needs it. The estimator API (``load_estimator``,
``HandPoseEstimator``, ``HandPose``, ``HandTracker``) is imported on first access.
"""

import importlib

from hand_pose_ros.core.camera import CameraIntrinsics, uvd_from_xyz, xyz_from_uvd

_LAZY = {
    'HandPose': 'hand_pose_ros.core.estimator',
    'HandPoseEstimator': 'hand_pose_ros.core.estimator',
    'HandTracker': 'hand_pose_ros.core.estimator',
    'load_estimator': 'hand_pose_ros.core.estimator',
}

__all__ = ['CameraIntrinsics', 'HandPose', 'HandPoseEstimator', 'HandTracker',
           'load_estimator', 'uvd_from_xyz', 'xyz_from_uvd']


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
