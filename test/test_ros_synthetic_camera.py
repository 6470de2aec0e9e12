"""The synthetic camera over real DDS: grid stamps, dropped slots, ground truth in step."""

import threading
import time

from conftest import Recorder
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image, PointCloud2

from hand_pose_ros.core.camera import CameraIntrinsics
from hand_pose_ros.core.synth import generate_motion
from hand_pose_ros.ros.messages import hands_from_cloud
from hand_pose_ros.ros.node_utils import OUTPUT_QOS, stamp_ns
from hand_pose_ros.ros.synthetic_camera_node import SyntheticCameraNode

RATE_HZ = 20.0
PERIOD_NS = round(1e9 / RATE_HZ)
FRAMES = 400


def test_stamps_stay_on_the_frame_grid_when_the_host_falls_behind(ros_context):
    camera = SyntheticCameraNode(context=ros_context, cli_args=[
        '--ros-args', '-p', f'rate_hz:={RATE_HZ}', '-p', 'seed:=3', '-p',
        f'sequence_frames:={FRAMES}'])
    probe = rclpy.create_node('probe', context=ros_context)
    recorder = Recorder(probe)
    depth = recorder.listen(Image, 'depth/image_raw', OUTPUT_QOS)
    truth = recorder.listen(PointCloud2, 'hand_pose/ground_truth', OUTPUT_QOS)
    # Wall-clock age of each frame when it arrives: a stamp never lies in the future.
    ages_ns = []
    probe.create_subscription(Image, 'depth/image_raw',
                              lambda msg: ages_ns.append(time.time_ns() - stamp_ns(msg.header)),
                              OUTPUT_QOS)
    stall = threading.Event()

    def block_once():
        # One executor thread: a callback that blocks it makes the camera's ticks late.
        if stall.is_set():
            stall.clear()
            time.sleep(0.33)

    probe.create_timer(0.05, block_once)
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (camera, probe):
        executor.add_node(node)
    deadline = time.monotonic() + 20.0
    try:
        while len(depth) < 8 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        stall.set()
        while len(depth) < 20 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        camera.destroy_node()
        probe.destroy_node()

    assert len(depth) >= 20
    assert ages_ns and min(ages_ns) >= 0
    stamps = np.array([stamp_ns(m.header) for m in depth])
    steps = np.diff(stamps)
    assert np.all(steps > 0) and np.all(steps % PERIOD_NS == 0)
    slots = (stamps - stamps[0]) // PERIOD_NS
    # The stall skipped slots (a frame still in flight may have skipped more).
    skipped = slots[-1] + 1 - len(depth)
    assert 4 <= skipped <= camera.dropped
    # The ground truth of each published frame is the motion at its slot: the hand moved on
    # in real time through the dropped frames.
    motion = generate_motion(FRAMES, fps=RATE_HZ, seed=3, max_speed_m_s=1.5,
                             intrinsics=CameraIntrinsics.from_preset('sr300'))
    truth_at = {stamp_ns(m.header): m for m in truth}
    assert set(truth_at) <= set(stamps) and len(truth_at) >= len(stamps) - 1
    for slot, stamp in zip(slots, stamps):
        if stamp not in truth_at:   # the last frame's truth may still be in flight
            continue
        hand, = hands_from_cloud(truth_at[stamp])
        np.testing.assert_allclose(hand['keypoints_xyz'], motion.poses[slot].keypoints_xyz,
                                   atol=1e-6)
