"""Importing the package and its numpy core must not load rclpy or torch."""

import subprocess
import sys

NUMPY_MODULES = ['hand_pose_ros', 'hand_pose_ros.core', 'hand_pose_ros.core.skeleton',
                 'hand_pose_ros.core.camera', 'hand_pose_ros.core.crop',
                 'hand_pose_ros.core.localizer', 'hand_pose_ros.core.estimator',
                 'hand_pose_ros.core.evaluation', 'hand_pose_ros.core.synth',
                 'hand_pose_ros.core.backends', 'hand_pose_ros.core.kinematics',
                 'hand_pose_ros.core.filters']


def test_numpy_core_loads_neither_rclpy_nor_torch():
    code = ('import sys\n'
            f'for name in {NUMPY_MODULES!r}:\n'
            '    __import__(name)\n'
            "heavy = [m for m in ('rclpy', 'torch', 'onnxruntime', 'tensorrt') "
            'if m in sys.modules]\n'
            'print(",".join(heavy))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == '', f'heavy modules imported: {result.stdout}'
