"""
Synthetic depth hands: kinematic hand model, motion, scenes, ray-cast rendering, sensors.

Numpy only. :class:`SyntheticGenerator` renders labelled frames of random scenes or of a
:func:`generate_motion` sequence; :func:`hand_keypoints` is the forward kinematics.
"""

from hand_pose_ros.core.synth.generator import Frame, HandLabel, SyntheticGenerator
from hand_pose_ros.core.synth.hand_model import (
    Articulation, ArticulationConfig, flexion_angles_deg, hand_keypoints, HandShape,
    HandShapeConfig, POSTURE_NAMES, POSTURES, sample_articulation, sample_hand_shape)
from hand_pose_ros.core.synth.motion import generate_motion, MotionConfig, MotionSequence
from hand_pose_ros.core.synth.pose import HandPose, sample_hand_pose, WristPoseConfig
from hand_pose_ros.core.synth.render import Box, Cylinder, Plane, RoundCone, Sphere
from hand_pose_ros.core.synth.scene import PART_NAMES, Scene, SceneConfig, SceneItem
from hand_pose_ros.core.synth.sensor import SensorConfig

__all__ = [
    'Articulation', 'ArticulationConfig', 'Box', 'Cylinder', 'flexion_angles_deg', 'Frame',
    'generate_motion', 'hand_keypoints', 'HandLabel', 'HandPose', 'HandShape',
    'HandShapeConfig', 'MotionConfig', 'MotionSequence', 'PART_NAMES', 'Plane',
    'POSTURE_NAMES', 'POSTURES', 'RoundCone', 'sample_articulation', 'sample_hand_pose',
    'sample_hand_shape', 'Scene', 'SceneConfig', 'SceneItem', 'SensorConfig', 'Sphere',
    'SyntheticGenerator', 'WristPoseConfig',
]
