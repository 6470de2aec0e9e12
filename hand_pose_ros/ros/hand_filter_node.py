"""
``hand_filter_node``: raw per-frame estimates -> filtered, tracked hands and all outputs.

Subscribes ``hand_pose/raw_keypoints`` and publishes ``hand_pose/keypoints``,
``hand_pose/joints``, ``hand_pose/palm_pose``, ``hand_pose/joint_states``, ``/tf``,
``hand_pose/markers`` and ``/diagnostics``. Every output reuses the input header.
"""

import time
import traceback

from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2

from hand_pose_ros.core.filters import HandFilter, Observation
from hand_pose_ros.core.filters.config import config_from_dict
from hand_pose_ros.core.stats import LatencyWindow, RateMeter
from hand_pose_ros.ros.messages import hands_from_cloud, OUTPUT_TYPES, OutputContinuity, \
    visible_hands
from hand_pose_ros.ros.node_utils import (create_encoded_publisher, declare_parameters,
                                          diagnostic_status, exit_process, input_qos,
                                          LogThrottle, publish_encoded, run, stamp_ns,
                                          start_diagnostics)
from hand_pose_ros.ros.params import group, HAND_FILTER_NODE_PARAMS

# Topic of each output of frame_outputs.
OUTPUT_TOPICS = {'keypoints': 'hand_pose/keypoints', 'joints': 'hand_pose/joints',
                 'palm': 'hand_pose/palm_pose', 'joint_states': 'hand_pose/joint_states',
                 'markers': 'hand_pose/markers', 'tf': '/tf'}


def observations_from_cloud(msg):
    """Return filter observations of a raw keypoint cloud (invalid joints become NaN)."""
    observations = []
    for hand in hands_from_cloud(msg):
        xyz = np.where(hand['valid'][:, None], hand['keypoints_xyz'], np.nan)
        observations.append(Observation(keypoints_xyz=xyz, scores=hand['scores']))
    return observations


class HandFilterNode(Node):
    """Filter, track and publish hands for robots, RViz and TF."""

    def __init__(self, **node_kwargs):
        super().__init__('hand_filter_node', **node_kwargs)
        self._values = declare_parameters(self, HAND_FILTER_NODE_PARAMS,
                                          self._apply_parameters)
        self._filter = HandFilter(config_from_dict(group(self._values, 'filter')))
        self._continuity = OutputContinuity()
        self._counts = {'received': 0, 'bad_input': 0, 'internal_errors': 0}
        self._last_error = ''
        self._throttle = LogThrottle()
        self._latest_rejected = False
        self._latest_failed = False
        self._last_hands = 0
        self._shown = 0
        self._output_rate = RateMeter()
        self._age_ms = LatencyWindow()
        self._input_rate = RateMeter()
        self._latency_ms = LatencyWindow()
        self._start = time.monotonic()

        self.create_subscription(PointCloud2, 'hand_pose/raw_keypoints', self._on_raw,
                                 input_qos(self._values))
        self._pubs = {name: create_encoded_publisher(self, OUTPUT_TYPES[name], topic)
                      for name, topic in OUTPUT_TOPICS.items()}
        start_diagnostics(self, self._values['diagnostics.period_s'], self.status)

    def _apply_parameters(self, values):
        self._filter.set_config(config_from_dict(group(values, 'filter')))
        self._values = values

    def _on_raw(self, msg):
        start = time.monotonic()
        self._counts['received'] += 1
        self._input_rate.tick(start)
        try:
            self._filter_and_publish(msg, start)
        except Exception as error:  # noqa: B902 - a bug must not stop the node
            if not self.context.ok():
                return  # shut down (Ctrl-C) while the message was being published
            self._counts['internal_errors'] += 1
            self._last_error = f'internal error on a message: {error!r}'
            self._latest_failed = True
            message = self._throttle.message('internal_errors', traceback.format_exc(),
                                             self._values['log_throttle_s'])
            if message:
                self.get_logger().error(message)

    def _filter_and_publish(self, msg, start):
        try:
            observations = observations_from_cloud(msg)
        except ValueError as error:
            self._counts['bad_input'] += 1
            self._last_error = f'raw keypoints rejected: {error}'
            self._latest_rejected = True
            message = self._throttle.message('bad_input', self._last_error,
                                             self._values['log_throttle_s'])
            if message:
                self.get_logger().warning(message)
            return
        self._latest_rejected = False
        resets = self._filter.stats.get('resets', 0)
        tracks = self._filter.update(stamp_ns(msg.header) * 1e-9, observations)
        if self._filter.repeated:
            # That stamp's outputs went out already: sent again, TF listeners would log
            # TF_REPEATED_DATA. Counted on /diagnostics ('filter duplicate stamps').
            self._latest_failed = False
            return
        if self._filter.stats.get('resets', 0) > resets:
            message = self._throttle.message(
                'reset', 'filter reset (time jumped back or stream went stale)',
                self._values['log_throttle_s'])
            if message:
                self.get_logger().warning(message)
        self.publish_hands(msg.header, tracks)
        self._latest_failed = False
        self._last_hands = len(tracks)
        self._latency_ms.add((time.monotonic() - start) * 1000.0)

    def publish_hands(self, header, tracks):
        """
        Publish every output for the tracked hands of one frame (``OutputContinuity.outputs``).

        Markers, which only a display reads, are built only while someone subscribes.
        """
        markers = self._pubs['markers'].get_subscription_count() > 0
        for name, data in self._continuity.outputs(tracks, header, self._values,
                                                   markers).items():
            if data is not None:
                publish_encoded(self._pubs[name], data)
        self._shown = len(visible_hands(tracks))
        self._output_rate.tick(time.monotonic())
        # From the image's capture stamp to here, on the node's clock (ROS time: the system
        # clock, or /clock with use_sim_time): the whole path a consumer sees, camera,
        # transport, estimator and filter.
        self._age_ms.add((self.get_clock().now().nanoseconds - stamp_ns(header)) / 1e6)

    def status(self):
        """Return the node's ``DiagnosticStatus``; the pipeline and tests read it too."""
        now = time.monotonic()
        silent_s = self._input_rate.silence_s(now, self._start)
        values = {
            'input rate (Hz)': f'{self._input_rate.rate_hz(now):.1f}',
            'latency p50 (ms)': f'{self._latency_ms.percentile(50):.2f}',
            'latency p99 (ms)': f'{self._latency_ms.percentile(99):.2f}',
            'output rate (Hz)': f'{self._output_rate.rate_hz(now):.1f}',
            'output age p50 (ms)': f'{self._age_ms.percentile(50):.1f}',
            'output age p99 (ms)': f'{self._age_ms.percentile(99):.1f}',
            'hands tracked': self._last_hands,
            'hands shown': self._shown,
            'smoother': self._filter.config.smoother,
            'anatomy action': self._filter.config.anatomy.action,
            **{k.replace('_', ' '): v for k, v in self._counts.items()},
            **{f'filter {k}'.replace('_', ' '): v for k, v in self._filter.stats.items()},
            'last problem': self._last_error,
        }
        if silent_s > self._values['diagnostics.stale_timeout_s']:
            level, text = DiagnosticStatus.ERROR, f'no raw estimates for {silent_s:.1f} s'
        elif self._latest_failed:
            # Until a message goes through again: the count and the last problem stay.
            level, text = DiagnosticStatus.ERROR, self._last_error
        elif self._latest_rejected:
            # Until the next good message: the count and the last problem stay in the values.
            level, text = DiagnosticStatus.WARN, self._last_error
        else:
            level, text = DiagnosticStatus.OK, 'running'
        return diagnostic_status(f'{self.get_name()}: hand filter',
                                 self.get_fully_qualified_name(), level, text, values)


def main(args=None):
    """Run ``hand_filter_node``."""
    exit_process(run(HandFilterNode, args))
