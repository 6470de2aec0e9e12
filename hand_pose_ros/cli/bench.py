"""
``hand_pose_bench``: per-stage latency of the whole per-frame path, per backend and model.

Stages: decode image (message to numpy), localise, find (the learned hand finder's network,
when the model has one), crop, infer, decode (joints back to the camera frame), filter
(anatomy, gates, smoothing, tracking), publish (building and serialising every output
message); "all but network" leaves out find and infer. Frames are synthetic 640x480 depth
images with one hand. ``--networks`` adds network-only latency of every architecture on
ONNX Runtime vs eager PyTorch. Prints p50/p99 and frames per second, names the hardware,
writes JSON.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

STAGES = ('decode_image', 'localize', 'find', 'crop', 'infer', 'decode', 'filter', 'publish')
# Stages that run a network: the pose network and the learned hand finder.
NETWORK_STAGES = ('find', 'infer')


def hardware():
    """Return a description of this machine (CPU model, cores, runtimes, GPU)."""
    info = {'machine': platform.machine(), 'cores': os.cpu_count(),
            'python': platform.python_version()}
    try:
        with open('/proc/cpuinfo') as handle:
            models = [line.split(':', 1)[1].strip() for line in handle
                      if line.startswith('model name')]
        info['cpu'] = models[0] if models else platform.processor()
    except OSError:
        info['cpu'] = platform.processor()
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import torch
        info['torch'] = torch.__version__
        info['gpu'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def synthetic_frames(count, seed, camera='sr300'):
    """Return (depth Image messages, intrinsics) of synthetic frames with one hand."""
    from hand_pose_ros.core.camera import CameraIntrinsics
    from hand_pose_ros.core.synth import SceneConfig, SyntheticGenerator
    from hand_pose_ros.ros.conversions import image_from_array

    intrinsics = CameraIntrinsics.from_preset(camera)
    generator = SyntheticGenerator(intrinsics, scene=SceneConfig(second_hand_prob=0.0),
                                   seed=seed)
    return [image_from_array(generator.sample_frame().depth_mm, '16UC1')
            for _ in range(count)], intrinsics


def publish_outputs(tracks, header, serialize):
    """Build and serialise every output message of one frame (what publishing costs)."""
    from hand_pose_ros.ros.messages import frame_outputs

    return [serialize(msg) for msg in frame_outputs(tracks, header).values()
            if msg is not None]


def bench_pipeline(model, backend, frames, intrinsics, warmup, threads, use_finder=True):
    """Return per-stage timings (ms arrays) of the full per-frame path for one backend."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from hand_pose_ros.core import load_estimator
    from hand_pose_ros.core.estimator import STAGES as ESTIMATOR_STAGES
    from hand_pose_ros.core.filters import FilterConfig, HandFilter, Observation
    from hand_pose_ros.ros.conversions import depth_from_image

    estimator = load_estimator(model, backend=backend, max_hands=1, threads=threads,
                               use_finder=use_finder)
    hand_filter = HandFilter(FilterConfig())
    samples = {stage: [] for stage in STAGES}
    hands_found = 0
    for index, msg in enumerate(frames[:warmup] + frames):
        header = Header(frame_id='camera')
        stamp_s = index / 30.0
        header.stamp.sec, header.stamp.nanosec = int(stamp_s), int((stamp_s % 1) * 1e9)
        t0 = time.perf_counter()
        depth = depth_from_image(msg)
        t1 = time.perf_counter()
        poses = estimator.estimate(depth, intrinsics)
        t2 = time.perf_counter()
        tracks = hand_filter.update(stamp_s, [Observation(p.keypoints_xyz, p.scores)
                                              for p in poses])
        t3 = time.perf_counter()
        publish_outputs(tracks, header, serialize_message)
        t4 = time.perf_counter()
        if index < warmup:
            continue
        hands_found += bool(poses)
        timings = estimator.last_timings
        samples['decode_image'].append((t1 - t0) * 1e3)
        for stage in ESTIMATOR_STAGES:
            samples[stage].append(timings[stage])
        samples['filter'].append((t3 - t2) * 1e3)
        samples['publish'].append((t4 - t3) * 1e3)
    return {stage: np.array(values) for stage, values in samples.items()}, \
        hands_found / len(frames), getattr(estimator.backend, 'name', backend)


def summarise(samples):
    """Return per-stage p50/p99 plus totals and frames per second."""
    total = sum(samples.values())
    outside = total - sum(samples[stage] for stage in NETWORK_STAGES)
    rows = {stage: {'p50_ms': float(np.percentile(v, 50)), 'p99_ms': float(np.percentile(v, 99))}
            for stage, v in samples.items()}
    rows['total'] = {'p50_ms': float(np.percentile(total, 50)),
                     'p99_ms': float(np.percentile(total, 99))}
    rows['all_but_network'] = {'p50_ms': float(np.percentile(outside, 50)),
                               'p99_ms': float(np.percentile(outside, 99))}
    rows['fps'] = float(1000.0 / total.mean())
    return rows


def available_backends():
    """Return the backends that can run on this machine."""
    from hand_pose_ros.core.backends.tensorrt_backend import tensorrt_available

    names = ['onnxruntime', 'torch']
    if tensorrt_available()[0]:
        names.append('tensorrt')
    return names


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--model', default='default', help='model name or card path')
    parser.add_argument('--backends', nargs='+', default=None,
                        help='backends to measure (default: all available)')
    parser.add_argument('--frames', type=int, default=200, help='timed frames per backend')
    parser.add_argument('--warmup', type=int, default=20, help='untimed frames first')
    parser.add_argument('--threads', type=int, default=None, help='runtime CPU threads')
    parser.add_argument('--seed', type=int, default=3)
    parser.add_argument('--no-finder', action='store_true',
                        help="localise with the geometric localiser alone (not the model's "
                             'learned finder)')
    parser.add_argument('--networks', action='store_true',
                        help='also time every architecture, ONNX Runtime vs eager PyTorch')
    parser.add_argument('--json', default=None, help='write the figures to this file')
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark and print its tables."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    report = {'hardware': hardware(), 'model': options.model, 'finder': not options.no_finder,
              'pipeline': {}}
    print('hardware: ' + ', '.join(f'{k} {v}' for k, v in report['hardware'].items()))
    frames, intrinsics = synthetic_frames(min(options.frames, 40), options.seed)
    frames = (frames * (options.frames // len(frames) + 1))[:options.frames]
    for backend in options.backends or available_backends():
        samples, detected, name = bench_pipeline(options.model, backend, frames, intrinsics,
                                                 options.warmup, options.threads,
                                                 not options.no_finder)
        summary = summarise(samples)
        summary['hand_detected_fraction'] = detected
        report['pipeline'][name] = summary
        print(f'\nmodel {options.model}, backend {name}, one hand, 640x480, '
              f'{options.frames} frames (hand found in {detected:.0%})')
        print('| stage | p50 ms | p99 ms |\n| --- | --- | --- |')
        for stage in (*STAGES, 'all_but_network', 'total'):
            row = summary[stage]
            print(f'| {stage} | {row["p50_ms"]:.2f} | {row["p99_ms"]:.2f} |')
        print(f'| frames/s (mean) | {summary["fps"]:.1f} | |')
    if options.networks:
        from hand_pose_ros.core.backends.profiling import format_rows, profile_model, \
            PROFILE_CONFIGS

        rows = [profile_model(label, ('onnxruntime', 'torch'), threads=options.threads)
                for label in PROFILE_CONFIGS]
        for row in rows:
            row['onnxruntime_speedup'] = row['torch_ms'] / row['onnxruntime_ms']
        report['networks'] = rows
        print('\nnetworks, batch 1, random weights (latency does not depend on them):')
        print(format_rows(rows, ('onnxruntime', 'torch')))
        print('ONNX Runtime speed-up over eager PyTorch: ' + ', '.join(
            f'{r["label"]} {r["onnxruntime_speedup"]:.2f}x' for r in rows))
    if options.json:
        with open(options.json, 'w') as handle:
            json.dump(report, handle, indent=2)
        print(f'\nwrote {options.json}')
    return 0
