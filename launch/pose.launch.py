"""
Launch the hand pose pipeline: estimator + filter (+ synthetic camera, + RViz).

Example (realsense2_camera 4.5x, default names):
``ros2 launch hand_pose_ros pose.launch.py depth_topic:=/camera/camera/depth/image_rect_raw
camera_info_topic:=/camera/camera/depth/camera_info``. A model with a colour input also reads
``color_topic``, a colour image registered to the depth image (e.g. with a RealSense:
``depth_topic:=/camera/camera/aligned_depth_to_color/image_raw
camera_info_topic:=/camera/camera/aligned_depth_to_color/camera_info
color_topic:=/camera/camera/color/image_raw fixed_frame:=camera_color_optical_frame``: aligned
depth is in the colour camera's frame). The camera's own driver is started apart.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Every node, RViz included, runs on /clock with use_sim_time:=true (bag playback with --clock).
SIM_TIME = LaunchConfiguration('use_sim_time')


def parameters(context, params_file, argument, name):
    """Return the node's parameters: launch ``argument``, when given, overrides ``name``."""
    value = LaunchConfiguration(argument).perform(context)
    overrides = {name: value} if value else {}
    return [params_file, {'use_sim_time': SIM_TIME, **overrides}]


def pose_node(context, params_file, namespace, remappings):
    """Return ``hand_pose_node``: the ``backend`` argument overrides the YAML when given."""
    return [Node(package='hand_pose_ros', executable='hand_pose_node', name='hand_pose_node',
                 namespace=namespace, remappings=remappings,
                 parameters=parameters(context, params_file, 'backend', 'model.backend'))]


def filter_node(context, params_file, namespace):
    """Return ``hand_filter_node``: the ``tf_prefix`` argument overrides the YAML when given."""
    return [Node(package='hand_pose_ros', executable='hand_filter_node', name='hand_filter_node',
                 namespace=namespace,
                 parameters=parameters(context, params_file, 'tf_prefix', 'output.tf_prefix'))]


def generate_launch_description():
    """Return the launch description."""
    share = get_package_share_directory('hand_pose_ros')
    params_file = LaunchConfiguration('params_file')
    namespace = LaunchConfiguration('namespace')
    synthetic = LaunchConfiguration('synthetic')
    camera_remaps = [('depth/image_raw', LaunchConfiguration('depth_topic')),
                     ('depth/camera_info', LaunchConfiguration('camera_info_topic')),
                     ('color/image_raw', LaunchConfiguration('color_topic'))]
    return LaunchDescription([
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'hand_pose.yaml'),
                              description='Parameter YAML for all nodes.'),
        DeclareLaunchArgument('depth_topic', default_value='depth/image_raw',
                              description='Depth image topic (16UC1 mm or 32FC1 m).'),
        DeclareLaunchArgument('camera_info_topic', default_value='depth/camera_info',
                              description='CameraInfo topic of the depth image.'),
        DeclareLaunchArgument('color_topic', default_value='color/image_raw',
                              description='Colour image registered to the depth image (read '
                                          'only by models with a colour input).'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of all nodes.'),
        DeclareLaunchArgument('backend', default_value='',
                              description='auto, onnxruntime, torch or tensorrt (default: '
                                          'model.backend of params_file).'),
        DeclareLaunchArgument('tf_prefix', default_value='',
                              description="Prefix of the hands' TF frames, e.g. cam1/ "
                                          '(default: output.tf_prefix of params_file).'),
        DeclareLaunchArgument('synthetic', default_value='false',
                              description='Start the synthetic camera (no camera driver '
                                          "needed); a real camera's driver is started "
                                          'apart.'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Run every node on /clock (ros2 bag play --clock).'),
        DeclareLaunchArgument('rviz', default_value='false', description='Start RViz.'),
        DeclareLaunchArgument('fixed_frame', default_value='camera_depth_optical_frame',
                              description="RViz's fixed frame: the depth images' frame_id."),
        Node(package='hand_pose_ros', executable='synthetic_camera_node',
             name='synthetic_camera_node', namespace=namespace,
             parameters=[params_file, {'use_sim_time': SIM_TIME}],
             remappings=camera_remaps, condition=IfCondition(synthetic)),
        OpaqueFunction(function=pose_node, args=[params_file, namespace, camera_remaps]),
        OpaqueFunction(function=filter_node, args=[params_file, namespace]),
        Node(package='rviz2', executable='rviz2', name='rviz2', namespace=namespace,
             arguments=['-d', os.path.join(share, 'config', 'pose.rviz'),
                        '-f', LaunchConfiguration('fixed_frame')],
             parameters=[{'use_sim_time': SIM_TIME}],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
