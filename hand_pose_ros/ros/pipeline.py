"""
``hand_pose_pipeline``: the whole pipeline in one process (no ``ros2 launch`` needed).

Spins ``hand_pose_node`` and ``hand_filter_node`` (and ``synthetic_camera_node`` with
``--synthetic``), each in its own thread, reading the same YAML parameter file that the
launch file uses.
"""

import argparse
import os
import sys

import rclpy
from rclpy.executors import ExternalShutdownException

from hand_pose_ros.core.install import share_dirs
from hand_pose_ros.ros.hand_filter_node import HandFilterNode
from hand_pose_ros.ros.hand_pose_node import HandPoseNode
from hand_pose_ros.ros.node_utils import exit_process, NodeSpinner, STARTUP_ERRORS
from hand_pose_ros.ros.synthetic_camera_node import SyntheticCameraNode


def default_params_file():
    """Return the shipped ``config/hand_pose.yaml`` (source tree or installed share)."""
    here = os.path.dirname(os.path.abspath(__file__))
    source = os.path.normpath(os.path.join(here, '..', '..', 'config', 'hand_pose.yaml'))
    for path in [source] + [str(share / 'config' / 'hand_pose.yaml') for share in share_dirs()]:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError('config/hand_pose.yaml not found; pass --params-file')


def create_nodes(params_file=None, synthetic=False, namespace='', context=None,
                 estimator=None, extra_ros_args=()):
    """
    Construct the pipeline's nodes.

    :param params_file: ROS parameter YAML (node sections ``hand_pose_node`` etc.).
    :param synthetic: also create the synthetic camera.
    :param namespace: namespace of all nodes (several cameras on one machine).
    :param estimator: optional pre-built estimator for ``hand_pose_node``.
    :param extra_ros_args: further ``--ros-args`` items, e.g. ``['-p', 'name:=value']``.
    :return: list of nodes, camera first.
    """
    ros_args = ['--ros-args']
    if params_file:
        ros_args += ['--params-file', params_file]
    ros_args += list(extra_ros_args)
    kwargs = {'namespace': namespace, 'context': context, 'cli_args': ros_args}
    nodes = [SyntheticCameraNode(**kwargs)] if synthetic else []
    nodes.append(HandPoseNode(estimator=estimator, **kwargs))
    nodes.append(HandFilterNode(**kwargs))
    return nodes


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--params-file', default=None,
                        help='parameter YAML (default: the shipped config/hand_pose.yaml)')
    parser.add_argument('--synthetic', action='store_true',
                        help='start the synthetic camera instead of using a real one')
    parser.add_argument('--namespace', default='', help='namespace of all nodes')
    return parser.parse_args(argv)


def ros_arguments(argv):
    """Return the items after ``--ros-args`` (up to ``--``) of a command line."""
    if '--ros-args' not in argv:
        return []
    rest = argv[argv.index('--ros-args') + 1:]
    return rest[:rest.index('--')] if '--' in rest else rest


def main(args=None):
    """Run the pipeline until Ctrl-C; end the process with its exit status."""
    argv = sys.argv if args is None else args
    rclpy.init(args=argv)
    options = parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    nodes = []
    code = 0
    spinner = None
    try:
        # Command-line parameters come after the YAML so that they win, as with ros2 run.
        nodes = create_nodes(options.params_file or default_params_file(), options.synthetic,
                             options.namespace, extra_ros_args=ros_arguments(argv))
        spinner = NodeSpinner(nodes)
        spinner.wait()
        if spinner.errors:
            # One node stopped on an error: stop the others too rather than run without it.
            print('hand_pose_pipeline: error: a node stopped on the error above; stopping',
                  file=sys.stderr)
            code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except STARTUP_ERRORS as error:
        print(f'hand_pose_pipeline: error: {error}', file=sys.stderr)
        code = 1
    finally:
        # Callbacks in progress finish before their nodes go.
        if spinner is not None:
            spinner.stop()
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    exit_process(code)
