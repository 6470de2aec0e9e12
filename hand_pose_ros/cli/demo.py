"""
``hand_pose_demo``: the full pipeline on the synthetic camera, measured against the truth.

Starts the synthetic camera, ``hand_pose_node`` and ``hand_filter_node`` in one process,
prints the live rate, end-to-end latency (image stamp to filtered keypoints) and 3D error
against the synthetic ground truth every second, and writes an animated GIF of the filtered
skeleton (coloured) over the depth image with the ground truth (cyan) so a person sees it.
"""

import argparse
from collections import deque
import os
import sys
import threading
import time

import numpy as np

from hand_pose_ros.cli.options import check_at_least, check_output_folder, check_positive, fail


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--duration', type=float, default=20.0, help='seconds to run')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate (Hz)')
    parser.add_argument('--model', default='default', help='model name or card path')
    parser.add_argument('--backend', default='auto', help='inference backend')
    parser.add_argument('--camera', default='sr300', help='synthetic camera preset')
    parser.add_argument('--seed', type=int, default=7, help='synthetic scene seed')
    parser.add_argument('--out', default='demo_output', help='folder for demo.gif')
    parser.add_argument('--gif-frames', type=int, default=60, help='frames in the GIF')
    return parser.parse_args(argv)


class Monitor:
    """Match filtered keypoints with ground truth by stamp; keep frames for the GIF."""

    def __init__(self, node, gif_frames):
        from sensor_msgs.msg import Image, PointCloud2

        from hand_pose_ros.ros.node_utils import OUTPUT_QOS

        self.node = node
        self.lock = threading.Lock()
        self.truth = {}
        self.depth = deque(maxlen=30)
        self.latency_ms, self.errors_mm, self.frames = [], [], []
        self.outputs = 0
        self.gif = deque(maxlen=gif_frames)
        node.create_subscription(PointCloud2, 'hand_pose/ground_truth', self._on_truth,
                                 OUTPUT_QOS)
        node.create_subscription(PointCloud2, 'hand_pose/keypoints', self._on_keypoints,
                                 OUTPUT_QOS)
        node.create_subscription(Image, 'depth/image_raw', self._on_depth, OUTPUT_QOS)

    def _on_truth(self, msg):
        from hand_pose_ros.ros.messages import hands_from_cloud
        from hand_pose_ros.ros.node_utils import stamp_ns

        with self.lock:
            self.truth[stamp_ns(msg.header)] = hands_from_cloud(msg)
            if len(self.truth) > 300:
                self.truth.pop(next(iter(self.truth)))

    def _on_depth(self, msg):
        from hand_pose_ros.ros.conversions import depth_from_image
        from hand_pose_ros.ros.node_utils import stamp_ns

        with self.lock:
            self.depth.append((stamp_ns(msg.header), depth_from_image(msg).copy()))

    def _on_keypoints(self, msg):
        from hand_pose_ros.ros.messages import hands_from_cloud
        from hand_pose_ros.ros.node_utils import stamp_ns

        now_ns = self.node.get_clock().now().nanoseconds
        stamp = stamp_ns(msg.header)
        hands = [h for h in hands_from_cloud(msg) if h['valid'].any()]
        with self.lock:
            self.outputs += 1
            self.latency_ms.append((now_ns - stamp) / 1e6)
            truth = self.truth.get(stamp, [])
            for hand in hands[:1]:
                if truth:
                    gt = truth[0]['keypoints_xyz']
                    valid = hand['valid']
                    error = np.linalg.norm(hand['keypoints_xyz'][valid] - gt[valid], axis=1)
                    self.errors_mm.append(float(error.mean() * 1000.0))
            depth = next((d for s, d in self.depth if s == stamp), None)
            if depth is not None:
                self.gif.append((depth, [(h['keypoints_xyz'], h['valid']) for h in hands],
                                 [t['keypoints_xyz'] for t in truth]))

    def summary(self, since=0):
        with self.lock:
            latency = np.array(self.latency_ms[since:])
            errors = np.array(self.errors_mm)
            return {
                'outputs': self.outputs,
                'latency_p50_ms': float(np.percentile(latency, 50)) if len(latency) else None,
                'latency_p99_ms': float(np.percentile(latency, 99)) if len(latency) else None,
                'mean_error_mm': float(errors.mean()) if len(errors) else None,
                'frames_with_truth': len(errors),
            }


def write_gif(path, frames, intrinsics, fps, size_px=360):
    """
    Write the collected frames as an animated GIF, zoomed on the hand.

    Ground truth is drawn in cyan, the filtered estimate coloured per finger.
    """
    from PIL import Image

    from hand_pose_ros.core.camera import uvd_from_xyz
    from hand_pose_ros.core.overlay import depth_to_gray, draw_skeletons

    images = []
    half = 100
    for depth, estimates, truths in frames:
        image = draw_skeletons(depth_to_gray(depth), intrinsics, truths, radius=2, width=1,
                               color=(0, 230, 255))
        image = draw_skeletons(image, intrinsics, estimates, radius=3, width=2)
        anchor = truths[0] if truths else (estimates[0][0] if estimates else None)
        if anchor is not None:
            u, v = uvd_from_xyz(np.mean(anchor, axis=0), intrinsics)[:2]
            u = int(np.clip(u, half, image.shape[1] - half))
            v = int(np.clip(v, half, image.shape[0] - half))
            image = image[v - half:v + half, u - half:u + half]
        images.append(Image.fromarray(np.ascontiguousarray(image)).resize((size_px, size_px)))
    if images:
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=int(1000 / fps), loop=0)
    return len(images)


def main(argv=None):
    """Run the demo and print its figures."""
    import rclpy

    from hand_pose_ros.core.camera import CameraIntrinsics
    from hand_pose_ros.ros.node_utils import NodeSpinner
    from hand_pose_ros.ros.pipeline import create_nodes, default_params_file

    options = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = ['-p', f'rate_hz:={float(options.rate)}', '-p', f'camera:={options.camera}',
                 '-p', f'seed:={options.seed}', '-p', f'model.name:={options.model}',
                 '-p', f'model.backend:={options.backend}']
    try:
        check_positive('--duration', options.duration)
        check_positive('--rate', options.rate)
        check_at_least('--gif-frames', options.gif_frames, 1)
        check_output_folder('--out', options.out)
        rclpy.init(args=[])
        # A bad camera, model or backend fails here, as the nodes start.
        nodes = create_nodes(default_params_file(), synthetic=True, extra_ros_args=overrides)
    except (ValueError, RuntimeError, OSError) as error:
        rclpy.try_shutdown()
        return fail('hand_pose_demo', error)
    monitor_node = rclpy.create_node('hand_pose_demo_monitor')
    monitor = Monitor(monitor_node, options.gif_frames)
    spinner = NodeSpinner(nodes + [monitor_node])
    print(f'hand_pose_demo: synthetic {options.camera} camera at {options.rate:g} Hz, '
          f'model {options.model}, {options.duration:g} s', flush=True)
    start = time.monotonic()
    try:
        while time.monotonic() - start < options.duration:
            time.sleep(1.0)
            s = monitor.summary(since=max(0, len(monitor.latency_ms) - int(options.rate)))
            camera = nodes[0].published
            print(f'  t={time.monotonic() - start:5.1f} s  camera frames {camera:5d}  '
                  f'outputs {s["outputs"]:5d}  latency p50 {_fmt(s["latency_p50_ms"])} ms  '
                  f'mean error {_fmt(s["mean_error_mm"])} mm', flush=True)
    except KeyboardInterrupt:
        pass
    elapsed = time.monotonic() - start
    final = monitor.summary()
    status = nodes[1].status()
    spinner.stop()
    for node in nodes + [monitor_node]:
        node.destroy_node()
    rclpy.try_shutdown()
    gif_path = os.path.join(options.out, 'demo.gif')
    count = write_gif(gif_path, list(monitor.gif), CameraIntrinsics.from_preset(options.camera),
                      fps=10)
    print(f'hand_pose_demo: {final["outputs"]} filtered frames in {elapsed:.1f} s '
          f'({final["outputs"] / elapsed:.1f} Hz) from {nodes[0].published} camera frames '
          f'({nodes[0].dropped} dropped by the camera); '
          f'latency p50 {_fmt(final["latency_p50_ms"])} ms, p99 '
          f'{_fmt(final["latency_p99_ms"])} ms; mean 3D error '
          f'{_fmt(final["mean_error_mm"])} mm over {final["frames_with_truth"]} frames')
    print(f'hand_pose_demo: estimator diagnostics: {status.message}; '
          + ', '.join(f'{kv.key}={kv.value}' for kv in status.values
                      if kv.key in ('frames dropped', 'model')))
    print(f'hand_pose_demo: wrote {gif_path} ({count} frames)' if count else
          'hand_pose_demo: no GIF written (no frame had filtered keypoints and its depth image)')
    return 0 if final['outputs'] > 0 else 1


def _fmt(value):
    return '  n/a' if value is None else f'{value:5.1f}'
