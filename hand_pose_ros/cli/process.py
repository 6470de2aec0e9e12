"""
``hand_pose_process``: turn a depth recording into a bag of hand poses, every frame.

The nodes keep up with a live camera by dropping frames they cannot take in time; this runs
the same estimator, hand tracker and filter over a recording offline, frame by frame, and
writes what the nodes would publish into a new rosbag2 (MCAP or sqlite3), stamped with each
depth image's stamp::

    hand_pose_process RECORDING -o poses_bag [--params-file my_hand_pose.yaml]
    ros2 bag play -i RECORDING -i poses_bag    # both together (Jazzy and later)

RECORDING is a rosbag2 folder with a depth topic and its camera_info, or a folder of depth
PNGs with an intrinsics file (see ``hand_pose_selftrain --help``). The parameter file is the
nodes' (``config/hand_pose.yaml`` by default): its ``hand_pose_node`` section sets the model
and localiser, its ``hand_filter_node`` section the filter and outputs. Topics written:
``hand_pose/raw_keypoints`` and the filter's ``hand_pose/keypoints``, ``hand_pose/joints``,
``hand_pose/palm_pose``, ``hand_pose/joint_states`` and ``/tf`` (``--markers`` adds
``hand_pose/markers``).
"""

import argparse
import os
import shutil
import sys
import time
from types import SimpleNamespace

from hand_pose_ros.cli.options import fail

DEFAULT_FRAME_ID = 'camera_depth_optical_frame'


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='hand_pose_process', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('recording', help='rosbag2 folder or folder of depth PNGs')
    parser.add_argument('-o', '--output', required=True, help='rosbag2 folder to create')
    parser.add_argument('--params-file', help='node parameter YAML (default: the installed '
                                              'config/hand_pose.yaml)')
    parser.add_argument('--namespace', default='',
                        help="the nodes' namespace, for the file's namespaced sections")
    parser.add_argument('--model', help="model name or card (overrides the file's model.name)")
    parser.add_argument('--backend', help='inference backend (overrides model.backend)')
    parser.add_argument('--depth-topic', help='depth image topic of a bag')
    parser.add_argument('--info-topic', help='camera_info topic of a bag')
    parser.add_argument('--fps', type=float, default=30.0,
                        help='frame rate of a PNG folder whose names are not stamps')
    parser.add_argument('--frame-id', default=DEFAULT_FRAME_ID,
                        help='frame_id of the outputs where the recording has none (PNGs)')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    parser.add_argument('--markers', action='store_true', help='also write RViz markers')
    parser.add_argument('--with-input', action='store_true',
                        help="also copy the recording's depth images (16UC1 mm) and "
                             'camera_info into the bag: one bag to play (Humble plays one)')
    return parser.parse_args(argv)


def node_parameters(args):
    """Return the hand_pose_node and hand_filter_node values of the parameter file."""
    from hand_pose_ros.ros.params import values_from_file
    from hand_pose_ros.ros.pipeline import default_params_file

    path = args.params_file or default_params_file()
    pose_values = values_from_file(path, 'hand_pose_node', args.namespace)
    if args.model:
        pose_values['model.name'] = args.model
    if args.backend:
        pose_values['model.backend'] = args.backend
    return pose_values, values_from_file(path, 'hand_filter_node', args.namespace)


def _header(stamp_ns, frame_id):
    """Return a header the message builders read (stamp and frame_id)."""
    stamp = SimpleNamespace(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return SimpleNamespace(stamp=stamp, frame_id=frame_id)


def _type_name(msg_type):
    return f'{msg_type.__module__.split(".")[0]}/msg/{msg_type.__name__}'


class PoseBagWriter:
    """
    A new rosbag2 of the outputs, written as the message builders encode them (CDR).

    :param input_topics: (depth topic, camera_info topic) to copy the recording's frames
        to as well (16UC1 millimetres), or None.
    """

    def __init__(self, path, storage, topics, input_topics=None, frame_id=DEFAULT_FRAME_ID):
        from hand_pose_ros.ros.bags import DepthBagWriter

        depth_topic, info_topic = input_topics or (None, None)
        self.bag = DepthBagWriter(path, storage, depth_topic, info_topic, frame_id=frame_id)
        self.copies_input = input_topics is not None
        self.connections = {name: self.bag.add_connection(topic, _type_name(msg_type))
                            for name, (topic, msg_type) in topics.items()}
        self.counts = dict.fromkeys(topics, 0)

    def write(self, name, stamp_ns, data):
        self.bag.write_cdr(self.connections[name], stamp_ns, data)
        self.counts[name] += 1

    def write_input(self, frame):
        self.bag.write(frame)

    def close(self):
        self.bag.close()


def process(recording, tracker, hand_filter, writer, filter_values, frame_id, markers=False,
            counts=None):
    """
    Run every frame of ``recording`` through the tracker and the filter into ``writer``.

    A frame whose stamp repeats the one before is skipped (its outputs went out already).

    :param counts: dict updated in place as frames go (so an interrupted run still says how
        far it got), or None.
    :return: ``counts``: {'frames', 'with_hands', 'shown', 'repeated'}: frames processed,
        frames with a raw estimate, frames with a filtered hand shown, repeats skipped.
    """
    from hand_pose_ros.core.filters import Observation
    from hand_pose_ros.core.progress import ProgressBar
    from hand_pose_ros.ros.hand_pose_node import RawHand
    from hand_pose_ros.ros.messages import keypoint_cloud, OutputContinuity, visible_hands

    continuity = OutputContinuity()
    progress = ProgressBar(len(recording))
    counts = {} if counts is None else counts
    counts.update(frames=0, with_hands=0, shown=0, repeated=0)
    last_stamp_ns = None
    for frame in recording:
        if frame.stamp_ns == last_stamp_ns:
            counts['repeated'] += 1
            continue
        if last_stamp_ns is not None and frame.stamp_ns < last_stamp_ns:
            tracker.reset()   # the recording jumped back (the filter resets by itself)
        last_stamp_ns = frame.stamp_ns
        header = _header(frame.stamp_ns, frame.frame_id or frame_id)
        if writer.copies_input:
            writer.write_input(frame)
        poses = tracker.estimate(frame.depth, frame.intrinsics)
        hands = [RawHand(i, pose) for i, pose in enumerate(poses)]
        writer.write('raw', frame.stamp_ns, keypoint_cloud(hands, header))
        tracks = hand_filter.update(frame.stamp_ns * 1e-9, [
            Observation(keypoints_xyz=pose.keypoints_xyz, scores=pose.scores)
            for pose in poses])
        for name, data in continuity.outputs(tracks, header, filter_values, markers).items():
            if data is not None:
                writer.write(name, frame.stamp_ns, data)
        counts['frames'] += 1
        counts['with_hands'] += bool(hands)
        counts['shown'] += bool(visible_hands(tracks))
        progress.update(counts['frames'], f'frames, {counts["shown"]} with a hand')
    # The bar's total counts images skipped above too: end its line here.
    progress.update(progress.total, f'frames read, {counts["frames"]} processed', force=True)
    return counts


def _set_up(args):
    """Return (recording, tracker, filter, filter values), or raise ValueError/OSError."""
    from hand_pose_ros.cli.selftrain import open_recording
    from hand_pose_ros.core.estimator import HandTracker
    from hand_pose_ros.core.filters import HandFilter
    from hand_pose_ros.core.filters.config import config_from_dict
    from hand_pose_ros.ros.hand_pose_node import load_node_estimator
    from hand_pose_ros.ros.params import group

    if os.path.exists(args.output):
        raise ValueError(f'--output {args.output} exists: name a new folder')
    try:
        import rosbags.rosbag2  # noqa: F401  (before minutes of engine building, not after)
    except ImportError:
        raise ValueError('writing a bag needs the rosbags package (pip install rosbags)') \
            from None
    pose_values, filter_values = node_parameters(args)
    recording = open_recording(args.recording, args.depth_topic, args.info_topic, args.fps)
    estimator = load_node_estimator(pose_values)
    if 'color' in estimator.input_names:
        raise ValueError(f'{pose_values["model.name"]} takes a colour image; recordings here '
                         f'are depth only: use a depth model')
    tracker = HandTracker(estimator, pose_values['localizer.redetect_interval'])
    return recording, tracker, HandFilter(config_from_dict(group(filter_values, 'filter'))), \
        filter_values


def main(argv=None):
    """Run the command line tool; return the exit status."""
    from hand_pose_ros.ros.hand_filter_node import OUTPUT_TOPICS
    from hand_pose_ros.ros.messages import OUTPUT_TYPES

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        recording, tracker, hand_filter, filter_values = _set_up(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, ImportError) as error:
        return fail('hand_pose_process', error)
    topics = {'raw': ('hand_pose/raw_keypoints', OUTPUT_TYPES['keypoints'])}
    topics.update({name: (topic, OUTPUT_TYPES[name]) for name, topic in OUTPUT_TOPICS.items()
                   if name != 'markers' or args.markers})
    start = time.monotonic()
    status, counts = 0, {'frames': 0}
    input_topics = None
    if args.with_input:
        input_topics = (getattr(recording, 'depth_topic', '/camera/depth/image_raw'),
                        getattr(recording, 'info_topic', '/camera/depth/camera_info'))
    try:
        writer = PoseBagWriter(args.output, args.storage, topics, input_topics, args.frame_id)
    except (ValueError, OSError) as error:
        return fail('hand_pose_process', error)
    try:
        process(recording, tracker, hand_filter, writer, filter_values, args.frame_id,
                args.markers, counts)
    except KeyboardInterrupt:
        print(f'hand_pose_process: interrupted after {counts["frames"]} frames'
              + (f'; {args.output} holds them' if counts['frames'] else ''), file=sys.stderr)
        status = 130
    except (ValueError, OSError) as error:
        kept = f' ({args.output} holds the {counts["frames"]} frames processed before it)'
        status = fail('hand_pose_process', f'{error}{kept if counts["frames"] else ""}',
                      status=1)
    finally:
        writer.close()
    if not counts['frames']:
        # Nothing written: no bag that a second run would have to be told to replace.
        shutil.rmtree(args.output, ignore_errors=True)
        return status or fail('hand_pose_process', f'{args.recording}: no usable frame '
                              f'(see the warnings above)', status=1)
    if status:
        return status
    elapsed = time.monotonic() - start
    skipped = getattr(recording, 'rejected', 0) + getattr(recording, 'unpaired', 0)
    print(f'hand_pose_process: {counts["frames"]} frames in {elapsed:.1f} s '
          f'({counts["frames"] / max(elapsed, 1e-9):.1f} frames/s), {counts["with_hands"]} with '
          f'a raw estimate, {counts["shown"]} with a filtered hand; {skipped} unusable frames '
          f'and {counts["repeated"]} repeated stamps skipped; wrote {args.output}: '
          + ', '.join(f'{topics[name][0]} {count}' for name, count in writer.counts.items())
          + (f', {input_topics[0]} and its camera_info {writer.bag.count}' if input_topics
             else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
