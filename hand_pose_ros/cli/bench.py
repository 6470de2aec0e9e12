"""
``hand_pose_bench``: per-stage latency of the whole per-frame path, per backend and model.

Stages: decode image (message to numpy), localise, find (the learned hand finder's network,
when the model has one), crop, infer, decode (joints back to the camera frame), other (the
estimator's and the hand tracker's work between those: hand score, re-centring, the
tracker's checks), filter (anatomy, gates, smoothing, tracking), publish (encoding every
output message, markers included, into the bytes the nodes publish); "all but network"
leaves out find and infer. Frames
are a synthetic 640x480 depth stream of one hand moving (30 Hz), run through a hand tracker
like the node's (the localiser runs every ``--redetect-interval`` frames, and whenever the
hand is lost).
``--networks`` adds network-only latency of every architecture on ONNX Runtime vs eager
PyTorch; with ``--device cuda``, on every GPU runtime this machine has
(PyTorch FP32, FP16, FP16 with CUDA graphs; ONNX Runtime's CUDA provider and TensorRT when
installed). ``--no-pipeline`` skips the per-frame path; ``--no-ros`` times it without the
stages that need ROS messages (decode image, publish), e.g. on a machine without rclpy.
Prints p50/p99 and frames per second, names the hardware, writes JSON.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from hand_pose_ros.cli.options import check_at_least, check_output_file, fail
from hand_pose_ros.core.backends import resolve_backend_name
from hand_pose_ros.core.backends.base import PRECISIONS
from hand_pose_ros.core.crop import VIEW_SETS
from hand_pose_ros.core.estimator import DEFAULT_REDETECT_INTERVAL

STAGES = ('decode_image', 'localize', 'find', 'crop', 'infer', 'decode', 'other', 'filter',
          'publish')
# Stages that run a network: the pose network and the learned hand finder.
NETWORK_STAGES = ('find', 'infer')
# Stages that need ROS messages (rclpy and the message packages).
ROS_STAGES = ('decode_image', 'publish')


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


def synthetic_frames(count, seed, camera='sr300', ros=True, color=False):
    """
    Return (frames, intrinsics): each frame a (depth, colour or None) pair.

    Depth is a 16UC1 Image message (a uint16 array without ROS); colour, rendered when
    ``color`` is set (for a model with a colour input), an rgb8 Image (a uint8 array).
    The frames are one continuous 30 Hz motion of one hand in front of a background, as a
    camera streams them, so the filter tracks one hand from frame to frame as it does in
    use (frames of unrelated scenes would start a new track at every frame).
    """
    from hand_pose_ros.core.camera import CameraIntrinsics
    from hand_pose_ros.core.synth import generate_motion, SyntheticGenerator

    intrinsics = CameraIntrinsics.from_preset(camera)
    generator = SyntheticGenerator(intrinsics, seed=seed)
    motion = generate_motion(count, fps=30.0, seed=seed, intrinsics=intrinsics)
    frames = [(frame.depth_mm, frame.color)
              for frame in generator.render_motion(motion, color=color)]
    if not ros:
        return frames, intrinsics
    from hand_pose_ros.ros.conversions import image_from_array

    return [(image_from_array(depth, '16UC1'),
             None if pixels is None else image_from_array(pixels, 'rgb8'))
            for depth, pixels in frames], intrinsics


def takes_color(model):
    """Return whether a model (name or card) has a colour input."""
    from hand_pose_ros.core.estimator import resolve_card
    from hand_pose_ros.core.model_io import card_input_names, read_card

    return 'color' in card_input_names(read_card(resolve_card(model), verify=False))


def bench_pipeline(model, backend, frames, intrinsics, warmup, threads, use_finder=True,
                   device='cpu', views=None, ros=True, redetect_interval=1, precision='auto'):
    """
    Return (per-stage ms arrays, facts) of one backend's per-frame path.

    :param frames: (depth, colour or None) pairs of one sequence as from
        :func:`synthetic_frames`: Image messages, or arrays with ``ros`` False (then the
        :data:`ROS_STAGES` are left out); the first ``warmup`` are not timed.
    :param redetect_interval: of the :class:`~hand_pose_ros.core.estimator.HandTracker`
        that runs the estimator, as in ``hand_pose_node`` (1: localise every frame).
    :param precision: of the backend (see ``hand_pose_ros.core.backends``).
    :return: ({stage: (frames,) ms}, {'hand_detected_fraction', 'localized_fraction'
        (frames on which the localiser ran), 'backend', 'precision', 'views'}).
    """
    from hand_pose_ros.core import HandTracker, load_estimator
    from hand_pose_ros.core.estimator import STAGES as ESTIMATOR_STAGES
    from hand_pose_ros.core.filters import FilterConfig, HandFilter, Observation

    if ros:
        from std_msgs.msg import Header

        from hand_pose_ros.ros.conversions import color_from_image, depth_from_image
        from hand_pose_ros.ros.messages import frame_outputs
    estimator = load_estimator(model, backend=backend, max_hands=1, threads=threads,
                               use_finder=use_finder, device=device, views=views,
                               precision=precision)
    tracker = HandTracker(estimator, redetect_interval)
    hand_filter = HandFilter(FilterConfig())
    samples = {stage: [] for stage in STAGES if ros or stage not in ROS_STAGES}
    hands_found = localized = 0
    for index, (depth_frame, color_frame) in enumerate(frames):
        stamp_s = index / 30.0
        if ros:
            header = Header(frame_id='camera')
            header.stamp.sec, header.stamp.nanosec = int(stamp_s), int((stamp_s % 1) * 1e9)
        t0 = time.perf_counter()
        depth, color = depth_frame, color_frame
        if ros:
            depth = depth_from_image(depth_frame)
            color = None if color_frame is None else color_from_image(color_frame)
        t1 = time.perf_counter()
        poses = tracker.estimate(depth, intrinsics, color=color)
        t2 = time.perf_counter()
        tracks = hand_filter.update(stamp_s, [Observation(p.keypoints_xyz, p.scores)
                                              for p in poses])
        t3 = time.perf_counter()
        if ros:
            frame_outputs(tracks, header)
        t4 = time.perf_counter()
        if index < warmup:
            continue
        hands_found += bool(poses)
        localized += tracker.last_localized
        timings = tracker.last_timings
        for stage in ESTIMATOR_STAGES:
            samples[stage].append(timings[stage])
        # The estimator's and the tracker's work between the stages they time.
        samples['other'].append((t2 - t1) * 1e3 - sum(timings.values()))
        samples['filter'].append((t3 - t2) * 1e3)
        if ros:
            samples['decode_image'].append((t1 - t0) * 1e3)
            samples['publish'].append((t4 - t3) * 1e3)
    timed = len(frames) - warmup
    return {stage: np.array(values) for stage, values in samples.items()}, {
        'hand_detected_fraction': hands_found / timed, 'localized_fraction': localized / timed,
        'backend': getattr(estimator.backend, 'name', backend),
        'precision': getattr(estimator.backend, 'precision', precision), 'views': estimator.views}


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


def available_backends(device='cpu'):
    """Return the backends that can run on this machine's CPU or GPU."""
    from hand_pose_ros.core.backends.profiling import gpu_variants

    if device == 'cpu':
        return ['onnxruntime', 'torch']
    return list(dict.fromkeys(backend for backend, _ in gpu_variants().values()))


def bench_networks(device, threads):
    """Time every architecture on every runtime of ``device``; print the table, return rows."""
    from hand_pose_ros.core.backends.profiling import CPU_VARIANTS, format_rows, \
        gpu_variants, profile_model, PROFILE_CONFIGS

    variants = CPU_VARIANTS if device == 'cpu' else gpu_variants()
    rows = [profile_model(label, variants, threads=threads,
                          iterations=20 if device == 'cpu' else 200)
            for label in PROFILE_CONFIGS]
    print(f'\nnetworks on {device}, batch 1, random weights (latency does not depend on them):')
    print(format_rows(rows, variants))
    for row in rows:
        for name in variants:
            if f'{name}_error' in row:
                print(f'{row["label"]} on {name} failed: {row[f"{name}_error"]}')
    if device == 'cpu':
        for row in rows:
            row['onnxruntime_speedup'] = row['torch_ms'] / row['onnxruntime_ms']
            row['onnxruntime_int8_speedup'] = row['torch_ms'] / row['onnxruntime_int8_ms']
        print('ONNX Runtime speed-up over eager PyTorch, float / INT8: ' + ', '.join(
            f'{r["label"]} {r["onnxruntime_speedup"]:.2f}x / {r["onnxruntime_int8_speedup"]:.2f}x'
            for r in rows))
    else:
        fastest = [max(((r[f'{v}_fps'], v) for v in variants if f'{v}_error' not in r),
                       default=(0.0, 'none')) for r in rows]
        print('fastest runtime, crops/s at batch 1: ' + ', '.join(
            f'{r["label"]} {fps:.0f} ({name})' for r, (fps, name) in zip(rows, fastest)))
    return rows


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
    parser.add_argument('--views', type=int, default=None, choices=sorted(VIEW_SETS),
                        help='test-time views per reported hand (default: the model '
                             "card's)")
    parser.add_argument('--redetect-interval', type=int, default=DEFAULT_REDETECT_INTERVAL,
                        help='frames from one hand search to the next while the hand is '
                             'followed, as the node parameter localizer.redetect_interval '
                             '(1: search every frame)')
    parser.add_argument('--precision', choices=PRECISIONS, default='auto',
                        help="network precision (auto: onnxruntime on the CPU runs the card's "
                             'INT8 copy when it has one)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='run the networks on the CPU or on the CUDA GPU')
    parser.add_argument('--networks', action='store_true',
                        help='also time every architecture on every runtime of the device')
    parser.add_argument('--no-pipeline', action='store_true',
                        help='skip the per-frame path (network figures only)')
    parser.add_argument('--no-ros', action='store_true',
                        help='time the per-frame path without the stages that need ROS '
                             'messages (decode image, publish)')
    parser.add_argument('--json', default=None, help='write the figures to this file')
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark and print its tables; return the exit status."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_at_least('--frames', options.frames, 1)
        check_at_least('--warmup', options.warmup, 0)
        check_at_least('--redetect-interval', options.redetect_interval, 1)
        check_output_file('--json', options.json)
        for backend in options.backends or ():
            resolve_backend_name(backend)  # an unknown name fails before frames are rendered
        run(options)
    except (ValueError, RuntimeError, OSError) as error:
        return fail('hand_pose_bench', error)
    return 0


def run(options):
    """Run the benchmark the parsed options ask for and print its tables."""
    report = {'hardware': hardware(), 'model': options.model, 'finder': not options.no_finder,
              'device': options.device, 'ros_stages': not options.no_ros, 'pipeline': {}}
    print('hardware: ' + ', '.join(f'{k} {v}' for k, v in report['hardware'].items()))
    if options.device == 'cuda' and not report['hardware'].get('gpu'):
        raise RuntimeError('--device cuda: torch sees no CUDA device')
    backends = [] if options.no_pipeline else \
        options.backends or available_backends(options.device)
    if backends:
        frames, intrinsics = synthetic_frames(options.warmup + options.frames, options.seed,
                                              ros=not options.no_ros,
                                              color=takes_color(options.model))
    for backend in backends:
        samples, facts = bench_pipeline(
            options.model, backend, frames, intrinsics, options.warmup, options.threads,
            not options.no_finder, options.device, options.views, not options.no_ros,
            options.redetect_interval, options.precision)
        summary = summarise(samples)
        summary.update(facts)
        report['pipeline'][facts['backend']] = summary
        print(f'\nmodel {options.model}, backend {facts["backend"]} ({facts["precision"]}) on '
              f'{options.device}, {facts["views"]} view(s), one hand, 640x480, '
              f'{options.frames} frames (hand found in {facts["hand_detected_fraction"]:.0%}; '
              f'localiser run on {facts["localized_fraction"]:.0%}, redetect interval '
              f'{options.redetect_interval})')
        print('| stage | p50 ms | p99 ms |\n| --- | --- | --- |')
        for stage in (*samples, 'all_but_network', 'total'):
            row = summary[stage]
            print(f'| {stage} | {row["p50_ms"]:.2f} | {row["p99_ms"]:.2f} |')
        print(f'| frames/s (mean) | {summary["fps"]:.1f} | |')
    if options.networks:
        report['networks'] = bench_networks(options.device, options.threads)
    if options.json:
        with open(options.json, 'w') as handle:
            json.dump(report, handle, indent=2)
        print(f'\nwrote {options.json}')


if __name__ == '__main__':
    sys.exit(main())
