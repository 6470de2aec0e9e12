"""
Temporal and anatomical filtering of 3D hand keypoints (ROS-free).

Online: :class:`HandFilter` (several hands, stable ids, anatomy, gates, smoothing, gap
prediction, handedness). Offline: :func:`offline_filter` (one hand, whole sequence).
Parameters: :class:`FilterConfig`, :func:`config_fields`, :func:`config_from_dict`.
"""

from hand_pose_ros.core.filters.config import (
    config_fields, config_from_dict, config_to_dict, FilterConfig)
from hand_pose_ros.core.filters.offline import offline_filter
from hand_pose_ros.core.filters.pipeline import HandFilter, Observation, TrackedHand

__all__ = ['FilterConfig', 'HandFilter', 'Observation', 'TrackedHand', 'config_fields',
           'config_from_dict', 'config_to_dict', 'offline_filter']
