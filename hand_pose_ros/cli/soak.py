"""
``hand_pose_soak``: run the pipeline on synthetic cameras for a long time and watch it.

Each camera gets its own namespaced pipeline of three processes (synthetic camera,
``hand_pose_node``, ``hand_filter_node``), as on a robot. Every ``--report-s`` seconds and at
the end it prints frames in/out, frames dropped by the documented drop-oldest policy, frames
lost otherwise, latency p50/p99 (image stamp to filtered keypoints), RSS memory and CPU of
every process; at the end, memory growth after warm-up and latency drift.
"""

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from hand_pose_ros.cli.options import check_at_least, check_output_file, check_positive, fail

NODES = ('synthetic_camera_node', 'hand_pose_node', 'hand_filter_node')
# Seconds between checks that the processes still run.
POLL_S = 1.0


def process_stats(pid):
    """Return (RSS MiB, CPU seconds) of a process from /proc."""
    with open(f'/proc/{pid}/status') as handle:
        rss_kib = next(int(line.split()[1]) for line in handle if line.startswith('VmRSS:'))
    with open(f'/proc/{pid}/stat') as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    ticks = os.sysconf('SC_CLK_TCK')
    return rss_kib / 1024.0, (int(fields[11]) + int(fields[12])) / ticks


class CameraMonitor:
    """Count frames and latency of one namespaced pipeline."""

    def __init__(self, node, namespace):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import PointCloud2

        from hand_pose_ros.ros.node_utils import OUTPUT_QOS

        self.namespace = namespace
        self.node = node
        self.lock = threading.Lock()
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.received = 0
        self.bad = 0
        self.latency_ms = []
        node.create_subscription(PointCloud2, f'/{namespace}/hand_pose/ground_truth',
                                 self._on_truth, OUTPUT_QOS)
        node.create_subscription(PointCloud2, f'/{namespace}/hand_pose/keypoints',
                                 self._on_output, OUTPUT_QOS)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                 OUTPUT_QOS)

    def _on_truth(self, _):
        with self.lock:
            self.frames_in += 1

    def _on_output(self, msg):
        from hand_pose_ros.ros.node_utils import stamp_ns

        latency = (self.node.get_clock().now().nanoseconds - stamp_ns(msg.header)) / 1e6
        with self.lock:
            self.frames_out += 1
            self.latency_ms.append(latency)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.hardware_id == f'/{self.namespace}/hand_pose_node':
                values = {kv.key: kv.value for kv in status.values}
                with self.lock:
                    self.dropped = int(values.get('frames dropped', 0))
                    self.received = int(values.get('received', 0))
                    self.bad = int(values.get('bad input', 0))

    def take_latencies(self):
        with self.lock:
            values, self.latency_ms = self.latency_ms, []
        return np.array(values)


def find_executable(name):
    """
    Return the path of a node's executable.

    It is looked for beside this command (``lib/hand_pose_ros`` under colcon, ``bin`` of a
    virtual environment), then on PATH.

    :raises FileNotFoundError: when it is in neither.
    """
    here = os.path.dirname(os.path.realpath(sys.argv[0]))
    beside = os.path.join(here, name)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f'node executable {name} found neither in {here} nor on PATH '
                                f'(install the package, or source its workspace)')
    return found


def start_pipeline(processes, namespace, params_file, rate_hz, seed, executables, log):
    """
    Start the three processes of one camera's pipeline.

    :param processes: dict that gets {node name: Popen} as each starts (so the caller can
        stop those started when a later one fails).
    :param executables: {node name: path}.
    """
    for name in NODES:
        args = [executables[name], '--ros-args', '-r', f'__ns:=/{namespace}',
                '--params-file', params_file]
        if name == 'synthetic_camera_node':
            args += ['-p', f'rate_hz:={float(rate_hz)}', '-p', f'seed:={seed}']
        elif name == 'hand_filter_node':
            # Each camera's hands get their own TF frames (cam0/hand_0, ...).
            args += ['-p', f'output.tf_prefix:={namespace}/']
        processes[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--duration-s', type=float, default=600.0, help='total run time')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate (Hz)')
    parser.add_argument('--cameras', type=int, default=1, help='namespaced pipelines')
    parser.add_argument('--report-s', type=float, default=60.0, help='report period')
    parser.add_argument('--warmup-s', type=float, default=60.0,
                        help='memory growth is measured from the end of the warm-up')
    parser.add_argument('--params-file', default=None, help='parameter YAML')
    parser.add_argument('--log', default='soak.log', help='file for the output of the nodes')
    return parser.parse_args(argv)


def check_periods(options):
    """Raise ValueError unless the run reports twice from the end of the warm-up on."""
    # Memory growth compares the last report (one comes at the end) with the first one at or
    # after the warm-up; reports come every --report-s from the start, the first at report_s.
    warm_report = max(options.report_s,
                      math.ceil(options.warmup_s / options.report_s) * options.report_s)
    if options.duration_s <= warm_report:
        raise ValueError(f'--duration-s {options.duration_s:g} gives no report after the one '
                         f'at the end of the warm-up ({warm_report:g} s) to measure memory '
                         f'growth and latency drift: give more than {warm_report:g} s, or a '
                         f'shorter --warmup-s')


def main(argv=None):
    """Run the soak test and print its figures; return the exit status."""
    from hand_pose_ros.ros.pipeline import default_params_file

    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_positive('--duration-s', options.duration_s)
        check_positive('--report-s', options.report_s)
        check_positive('--rate', options.rate)
        check_at_least('--cameras', options.cameras, 1)
        check_at_least('--warmup-s', options.warmup_s, 0)
        check_periods(options)
        params_file = options.params_file or default_params_file()
        if not os.path.isfile(params_file):
            raise FileNotFoundError(f'--params-file {params_file}: file not found')
        check_output_file('--log', options.log)
        executables = {name: find_executable(name) for name in NODES}
        log = open(options.log, 'w')
    except (ValueError, OSError) as error:
        return fail('hand_pose_soak', error)
    with log:
        return run(options, params_file, executables, log)


def run(options, params_file, executables, log):
    """Start the pipelines, report until the end (or until every process died), stop them."""
    import rclpy

    from hand_pose_ros.ros.node_utils import NodeSpinner

    namespaces = [f'cam{i}' for i in range(options.cameras)]
    pipelines = {ns: {} for ns in namespaces}
    rclpy.init(args=[])
    node = rclpy.create_node('hand_pose_soak')
    monitors = {ns: CameraMonitor(node, ns) for ns in namespaces}
    spinner = NodeSpinner([node])
    history = []
    warm_rss = None
    try:
        for seed, ns in enumerate(namespaces):
            start_pipeline(pipelines[ns], ns, params_file, options.rate, seed, executables, log)
        print(f'hand_pose_soak: {options.cameras} camera(s) at {options.rate:g} Hz for '
              f'{options.duration_s:g} s; node output in {options.log}', flush=True)
        start = time.monotonic()
        end, next_report = start + options.duration_s, start + options.report_s
        while True:
            now = time.monotonic()
            time.sleep(max(0.0, min(POLL_S, next_report - now, end - now)))
            now = time.monotonic()
            if not any(p.poll() is None for ps in pipelines.values() for p in ps.values()):
                return fail('hand_pose_soak', f'every node process has exited (their output '
                            f'is in {options.log})', status=1)
            if now >= min(next_report, end):
                row = report_row(now - start, monitors, pipelines)
                if warm_rss is None and row['t_s'] >= options.warmup_s:
                    warm_rss = {(ns, name): rss for ns in namespaces
                                for name, (rss, _) in row['cameras'][ns]['processes'].items()}
                history.append(row)
                print_row(row, options.rate)
                next_report += options.report_s
            if now >= end:
                break
    except KeyboardInterrupt:
        pass
    except OSError as error:
        return fail('hand_pose_soak', f'cannot start a node: {error}')
    finally:
        for processes in pipelines.values():
            for process in processes.values():
                process.send_signal(signal.SIGINT)
        for processes in pipelines.values():
            for process in processes.values():
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return print_summary(history, warm_rss, options)


def report_row(elapsed, monitors, pipelines):
    """Return the figures of every camera at ``elapsed`` seconds."""
    row = {'t_s': elapsed, 'cameras': {}}
    for ns, monitor in monitors.items():
        latency = monitor.take_latencies()
        procs = {name: process_stats(p.pid) for name, p in pipelines[ns].items()
                 if p.poll() is None}
        row['cameras'][ns] = {
            'in': monitor.frames_in, 'out': monitor.frames_out,
            # Drop-oldest happens in two places: the input queue (history depth) replaces
            # frames the node has not taken yet, and the node's frame slot replaces frames
            # waiting for the estimator.
            'dropped': monitor.dropped + max(0, monitor.frames_in - monitor.received),
            'bad': monitor.bad,
            'p50_ms': float(np.percentile(latency, 50)) if len(latency) else None,
            'p99_ms': float(np.percentile(latency, 99)) if len(latency) else None,
            'processes': procs,
            'alive': sum(p.poll() is None for p in pipelines[ns].values())}
    return row


def print_row(row, rate_hz):
    for ns, cam in row['cameras'].items():
        memory = ', '.join(f'{name} {rss:.0f} MiB cpu {cpu:.0f} s'
                           for name, (rss, cpu) in cam['processes'].items())
        p50 = 'n/a' if cam['p50_ms'] is None else f'{cam["p50_ms"]:.1f}'
        p99 = 'n/a' if cam['p99_ms'] is None else f'{cam["p99_ms"]:.1f}'
        print(f'[{row["t_s"]:7.1f} s] {ns}: in {cam["in"]} out {cam["out"]} '
              f'dropped {cam["dropped"]} lost {lost(cam)} | latency p50 {p50} p99 {p99} ms | '
              f'{memory} | alive {cam["alive"]}/3', flush=True)


def lost(cam):
    """Frames neither output nor dropped by policy (a few may still be in flight)."""
    return cam['in'] - cam['out'] - cam['dropped'] - cam['bad']


def print_summary(history, warm_rss, options):
    if not history:
        return 1
    last = history[-1]
    elapsed = last['t_s']
    code = 0
    print('\nsummary:')
    for ns, cam in last['cameras'].items():
        rates = cam['out'] / elapsed
        p50s = [r['cameras'][ns]['p50_ms'] for r in history if r['cameras'][ns]['p50_ms']]
        drift = f'{p50s[-1] - p50s[0]:+.1f} ms' if len(p50s) > 1 else 'n/a'
        growth = {name: 100.0 * (rss / warm_rss[(ns, name)] - 1.0)
                  for name, (rss, _) in cam['processes'].items()
                  if warm_rss and (ns, name) in warm_rss}
        growth_text = ', '.join(f'{n} {g:+.1f} %' for n, g in growth.items()) or 'n/a'
        print(f'  {ns}: {cam["out"]} frames out of {cam["in"]} in {elapsed:.0f} s '
              f'({rates:.1f} Hz sustained), dropped by policy {cam["dropped"]}, other losses '
              f'{lost(cam)}, latency p50 first/last interval {p50s[0] if p50s else 0:.1f}/'
              f'{p50s[-1] if p50s else 0:.1f} ms (drift {drift}), memory growth after '
              f'warm-up: {growth_text}, processes alive {cam["alive"]}/3')
        if cam['alive'] != 3:
            code = 1
    return code
