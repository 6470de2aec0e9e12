"""
``hand_pose_node``: depth image + camera info -> raw per-frame 3D hand estimates.

Subscribes ``depth/image_raw`` and ``depth/camera_info`` (and, for a model with a colour
input, ``color/image_raw``: a colour image registered to the depth image, same size and
stamp, e.g. a depth stream aligned to the colour stream), publishes the raw estimates on
``hand_pose/raw_keypoints`` (PointCloud2, same layout as ``hand_pose/keypoints``) for
``hand_filter_node``, ``hand_pose/debug_image`` while someone listens, and ``/diagnostics``.
Frames arriving while the previous one is processed replace the waiting one (drop-oldest).
"""

import dataclasses
import threading
import time
import traceback

from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from hand_pose_ros.core.estimator import coarse_depth_m, HandTracker
from hand_pose_ros.core.frame_slot import LatestFrameSlot
from hand_pose_ros.core.overlay import depth_to_gray, draw_skeletons
from hand_pose_ros.core.pairing import StampPairer
from hand_pose_ros.core.stats import LatencyWindow, RateMeter
from hand_pose_ros.ros.conversions import (color_from_image, depth_from_image,
                                           distortion_of, image_from_array,
                                           intrinsics_from_camera_info)
from hand_pose_ros.ros.messages import keypoint_cloud
from hand_pose_ros.ros.node_utils import (create_encoded_publisher, create_output_publisher,
                                          declare_parameters, diagnostic_status, exit_process,
                                          input_qos, LogThrottle, publish_encoded, run,
                                          stamp_ns, start_diagnostics)
from hand_pose_ros.ros.params import group, HAND_POSE_NODE_PARAMS


# Colour images kept for pairing with depth frames (each up to a few MB).
COLOR_HISTORY = 10
# A median depth beyond this is another unit (millimetres as 32FC1 metres, say).
SUSPECT_DEPTH_M = 20.0
# The diagnostic message of a node that drops more frames than it processes.
FALLING_BEHIND = 'falling behind: more frames dropped than processed'


def _tolerance_ns(values, stream):
    """Return a paired stream's ``<stream>.max_stamp_diff_s`` parameter in nanoseconds."""
    return int(values[f'{stream}.max_stamp_diff_s'] * 1e9)


class RawHand:
    """A per-frame estimate in the shape the message builders expect."""

    def __init__(self, hand_id, pose):
        self.hand_id = hand_id
        self.keypoints_xyz = pose.keypoints_xyz
        self.scores = pose.scores
        self.valid = np.isfinite(pose.keypoints_xyz).all(axis=1)
        self.handedness = 'unknown'


def load_node_estimator(values):
    """Build the estimator from the node's ``model.*`` and ``localizer.*`` parameters."""
    from hand_pose_ros.core import load_estimator

    model = group(values, 'model')
    estimator = load_estimator(
        model['name'], backend=model['backend'], max_hands=values['localizer.max_hands'],
        use_finder=values['localizer.use_finder'], threads=model['threads'] or None,
        views=model['views'] or None,
        refine_passes=None if model['refine_passes'] < 0 else model['refine_passes'],
        precision=model['precision'],
        cache_dir=model['cache_dir'] or None, force_rebuild=model['force_engine_rebuild'])
    configure_localizer(estimator, values)
    return estimator


def configure_localizer(estimator, values):
    """Apply the ``localizer.*`` parameters to an estimator (start-up and dynamic updates)."""
    config = dataclasses.replace(estimator.localizer.config,
                                 min_depth_m=values['localizer.min_depth_m'],
                                 max_depth_m=values['localizer.max_depth_m'])
    estimator.localizer = estimator.localizer.with_config(config)
    estimator.max_hands = values['localizer.max_hands']
    estimator.min_hand_score = values['localizer.min_hand_score']


def describe(estimator):
    """
    Return 'model on backend (precision)' for diagnostics.

    Adds a TensorRT engine's cache status and whether a learned finder helps the localiser.
    """
    backend = estimator.backend
    text = f'{estimator.name} on {getattr(backend, "name", "custom backend")}'
    if getattr(backend, 'precision', None):
        text += f' ({backend.precision})'
    if hasattr(estimator.localizer, 'finder'):
        text += ' with hand finder'
    cache_status = getattr(backend, 'cache_status', None)
    return f'{text} (engine {cache_status})' if cache_status else text


class HandPoseNode(Node):
    """Run the localiser and the pose network on every depth frame it can keep up with."""

    def __init__(self, estimator=None, **node_kwargs):
        # First, for destroy_node: rclpy destroys a node whose construction failed (e.g. a
        # missing model) at shutdown too.
        self._slot = LatestFrameSlot()
        self._worker = None
        super().__init__('hand_pose_node', **node_kwargs)
        self._values = declare_parameters(self, HAND_POSE_NODE_PARAMS, self._apply_parameters)
        self._estimator = estimator if estimator is not None else load_node_estimator(
            self._values)
        self.get_logger().info(f'model {describe(self._estimator)}')
        self._tracker = HandTracker(self._estimator, self._values['localizer.redetect_interval'])
        self._pairer = StampPairer(_tolerance_ns(self._values, 'camera_info'))
        self._needs_color = 'color' in getattr(self._estimator, 'input_names', ('depth',))
        self._colors = StampPairer(_tolerance_ns(self._values, 'color'), COLOR_HISTORY)
        self._lock = threading.Lock()
        self._counts = {'received': 0, 'processed': 0, 'localised': 0, 'bad_input': 0,
                        'no_camera_info': 0, 'unsynchronised_info': 0, 'no_color': 0,
                        'time_jumps': 0, 'internal_errors': 0, 'frame_mismatch': 0,
                        'suspect_depth_units': 0}
        self._last_error = ''
        self._throttle = LogThrottle()
        self._latest_failed = False
        self._distortion = ''
        self._last_hands = 0
        self._last_stamp_ns = None
        self._input_rate = RateMeter()
        self._output_rate = RateMeter()
        self._latency_ms = LatencyWindow()
        self._start = time.monotonic()

        qos = input_qos(self._values)
        self.create_subscription(CameraInfo, 'depth/camera_info', self._on_info, qos)
        self.create_subscription(Image, 'depth/image_raw', self._on_image, qos)
        if self._needs_color:
            self.create_subscription(Image, 'color/image_raw', self._on_color, qos)
        self._raw_pub = create_encoded_publisher(self, PointCloud2, 'hand_pose/raw_keypoints')
        self._debug_pub = create_output_publisher(self, Image, 'hand_pose/debug_image')
        start_diagnostics(self, self._values['diagnostics.period_s'], self.status)
        self._worker = threading.Thread(target=self._work, name='hand_pose_worker', daemon=True)
        self._worker.start()

    def _apply_parameters(self, values):
        configure_localizer(self._estimator, values)
        self._tracker.redetect_interval = values['localizer.redetect_interval']
        self._pairer.max_stamp_diff_ns = _tolerance_ns(values, 'camera_info')
        self._colors.max_stamp_diff_ns = _tolerance_ns(values, 'color')
        self._values = values

    def _warn(self, key, text):
        with self._lock:
            self._counts[key] += 1
            self._last_error = text
        message = self._throttle.message(key, text, self._values['log_throttle_s'])
        if message:
            self.get_logger().warning(message)

    def _on_info(self, msg):
        self._pairer.add(stamp_ns(msg.header), msg)

    def _on_color(self, msg):
        self._colors.add(stamp_ns(msg.header), msg)

    def _on_image(self, msg):
        with self._lock:
            self._counts['received'] += 1
        self._input_rate.tick(time.monotonic())
        self._slot.put(msg)

    def _work(self):
        while not self._slot.closed:
            msg = self._slot.take(timeout_s=0.5)
            if msg is None:
                continue
            try:
                self._process(msg)
            except Exception as error:  # noqa: B902 - a bug must not stop the worker thread
                if not self.context.ok():
                    return  # shut down (Ctrl-C) while the frame was being published
                # Flagged before it is counted: whoever sees the count sees the error state.
                self._latest_failed = True
                self._warn('internal_errors', f'internal error on a frame: {error!r}')
                message = self._throttle.message('traceback', traceback.format_exc(),
                                                 self._values['log_throttle_s'])
                if message:
                    self.get_logger().error(message)

    def _process(self, msg):
        start = time.monotonic()
        stamp = stamp_ns(msg.header)
        if self._last_stamp_ns is not None and stamp < self._last_stamp_ns:
            self._warn('time_jumps', 'depth image stamp went backwards (bag loop?): '
                       'newer camera_info discarded')
            self._pairer.discard_after(stamp)
            self._colors.discard_after(stamp)
            self._tracker.reset()
        self._last_stamp_ns = stamp
        info, exact = self._pairer.match(stamp)
        if info is None:
            self._warn('no_camera_info', 'no camera_info received yet on '
                       f'{self.resolve_topic_name("depth/camera_info")}: frame skipped')
            return
        if not exact:
            with self._lock:
                self._counts['unsynchronised_info'] += 1
        color_msg = None
        if self._needs_color:
            # The colour image of a stamp may arrive after its depth image.
            color_msg, exact = self._colors.wait_match(stamp, self._values['color.wait_s'])
            if not exact:
                self._warn('no_color', 'no colour image within color.max_stamp_diff_s of the '
                           'depth frame on '
                           f'{self.resolve_topic_name("color/image_raw")}: frame skipped')
                return
        try:
            depth = depth_from_image(msg, self._values['input.max_pixels'])
            intrinsics = intrinsics_from_camera_info(info)
            intrinsics.check_image(depth)
            self._check_distortion(info)
            self._check_frames(msg, info, color_msg, depth)
            color = None if color_msg is None else color_from_image(
                color_msg, self._values['input.max_pixels'])
            poses = self._tracker.estimate(depth, intrinsics, color=color)
        except ValueError as error:
            self._warn('bad_input', f'depth frame rejected: {error}')
            return
        hands = [RawHand(i, pose) for i, pose in enumerate(poses)]
        publish_encoded(self._raw_pub, keypoint_cloud(hands, msg.header))
        if self._debug_pub.get_subscription_count() > 0:
            self._publish_debug(msg.header, depth, intrinsics, hands)
        self._latest_failed = False
        with self._lock:
            self._counts['processed'] += 1
            self._counts['localised'] += self._tracker.last_localized
            self._last_hands = len(hands)
        self._output_rate.tick(time.monotonic())
        self._latency_ms.add((time.monotonic() - start) * 1000.0)

    def _check_frames(self, msg, info, color_msg, depth):
        """
        Warn (throttled, counted) about input that converts but is likely wrong.

        The frame is still processed: each of these can be intended.
        """
        frame = msg.header.frame_id
        pairs = (('camera_info', info), ('colour image', color_msg))
        others = [(name, m.header.frame_id) for name, m in pairs
                  if m is not None and m.header.frame_id != frame]
        if not frame or others:
            self._warn('frame_mismatch', f'depth image frame_id {frame!r}'
                       + ''.join(f', {name} frame_id {other!r}' for name, other in others)
                       + ': outputs are published in the depth image frame; an empty or '
                       'different frame means TF cannot place them, or intrinsics/colour of '
                       'another camera (register both streams to the depth image)')
        # Depth in metres (32FC1) or millimetres (16UC1): hands are within a few metres.
        sample = coarse_depth_m(depth)
        valid = sample[np.isfinite(sample) & (sample > 0)]
        median = float(np.median(valid)) if valid.size else 0.0
        if median > SUSPECT_DEPTH_M:
            self._warn('suspect_depth_units', f'median depth {median:.0f} m: is the '
                       f'{msg.encoding} image in another unit? (32FC1 must be metres, '
                       f'16UC1 millimetres)')

    def _check_distortion(self, info):
        """Say once that the depth image is taken as rectified when camera_info has D."""
        if self._distortion or not distortion_of(info):
            return
        self._distortion = (f'assumed rectified: camera_info has D = {distortion_of(info)} '
                            f'({info.distortion_model}); back-projected with P')
        self.get_logger().warning(
            f'{self.resolve_topic_name("depth/camera_info")} has lens distortion: the depth '
            'image is taken to be rectified and back-projected with P. Nothing to do when '
            'the depth topic is rectified (image_rect*, which keeps the camera_info with D); '
            'on a raw (distorted) topic joints are off, most so far from the image centre: '
            'subscribe to the rectified image instead')

    def _publish_debug(self, header, depth, intrinsics, hands):
        overlay = draw_skeletons(depth_to_gray(depth), intrinsics,
                                 [(h.keypoints_xyz, h.valid) for h in hands])
        scale = self._values['debug_image.scale']
        if scale != 1.0:
            rows = (np.arange(int(overlay.shape[0] * scale)) / scale).astype(int)
            cols = (np.arange(int(overlay.shape[1] * scale)) / scale).astype(int)
            overlay = overlay[rows][:, cols]
        self._debug_pub.publish(image_from_array(overlay, 'rgb8', header))

    def status(self):
        """Return the node's ``DiagnosticStatus``; the pipeline and tests read it too."""
        now = time.monotonic()
        with self._lock:
            counts = dict(self._counts)
            last_error, hands = self._last_error, self._last_hands
        silent_s = self._input_rate.silence_s(now, self._start)
        values = {
            'input rate (Hz)': f'{self._input_rate.rate_hz(now):.1f}',
            'output rate (Hz)': f'{self._output_rate.rate_hz(now):.1f}',
            'latency p50 (ms)': f'{self._latency_ms.percentile(50):.1f}',
            'latency p99 (ms)': f'{self._latency_ms.percentile(99):.1f}',
            'model': describe(self._estimator),
            'hands detected': hands,
            'frames dropped': self._slot.dropped,
            'lens distortion': self._distortion or 'none',
            **{k.replace('_', ' '): v for k, v in counts.items()},
            'last problem': last_error,
        }
        if silent_s > self._values['diagnostics.stale_timeout_s']:
            level, text = DiagnosticStatus.ERROR, f'no depth images for {silent_s:.1f} s'
        elif self._latest_failed:
            # Until a frame goes through again: the count and the last problem stay.
            level, text = DiagnosticStatus.ERROR, f'internal errors: {last_error}'
        elif counts['processed'] and self._slot.dropped > counts['processed']:
            level = DiagnosticStatus.WARN
            text = FALLING_BEHIND
        elif last_error and counts['processed'] == 0:
            level, text = DiagnosticStatus.WARN, last_error
        else:
            level, text = DiagnosticStatus.OK, 'running'
        return diagnostic_status(f'{self.get_name()}: hand pose estimation',
                                 self.get_fully_qualified_name(), level, text, values)

    def destroy_node(self):
        """Stop the worker thread (when it was started), then destroy the node."""
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        return super().destroy_node()


def main(args=None):
    """Run ``hand_pose_node``."""
    exit_process(run(HandPoseNode, args))
