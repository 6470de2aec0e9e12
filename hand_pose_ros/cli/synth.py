"""
``hand_pose_synth``: write a synthetic depth hand dataset, preview it, or benchmark.

Examples::

    hand_pose_synth --out /tmp/synth --frames 1000 --seed 0 --camera sr300 --preview sheet.png
    hand_pose_synth --benchmark
"""

import argparse
from dataclasses import asdict
import os
import sys
import time

from PIL import Image

from hand_pose_ros.cli.options import (
    check_at_least, check_output_file, check_output_folder, check_positive, fail)
from hand_pose_ros.core import skeleton
from hand_pose_ros.core.camera import CAMERA_PRESETS, CameraIntrinsics
from hand_pose_ros.core.evaluation import synthetic_scene_config
from hand_pose_ros.core.progress import ProgressBar
from hand_pose_ros.core.synth import (
    generate_motion, SceneConfig, SensorConfig, SyntheticGenerator)
from hand_pose_ros.core.synth.dataset import contact_sheet, depth_preview, write_dataset
from hand_pose_ros.core.synth.generator import hand_crop_intrinsics

# The evaluation's scene types (a folder labels only the first hand of each frame:
# single_hand and hand_only folders have no unlabelled second hand).
SCENES = ('default', 'single_hand', 'hand_only')
SENSORS = {'default': SensorConfig, 'clean': SensorConfig.clean}


def build_parser():
    parser = argparse.ArgumentParser(
        prog='hand_pose_synth', description='Render labelled synthetic depth hand frames.')
    parser.add_argument('--out', help='output dataset folder')
    parser.add_argument('--frames', type=int, default=100, help='number of frames')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--camera', default='sr300', choices=sorted(CAMERA_PRESETS),
                        help='camera preset')
    parser.add_argument('--scene', default='default', choices=SCENES,
                        help='scene contents (the folder labels the first hand of each frame; '
                             'default scenes sometimes show a second hand)')
    parser.add_argument('--sensor', default='default', choices=sorted(SENSORS),
                        help='sensor artefacts (clean: exact depth)')
    parser.add_argument('--motion', action='store_true',
                        help='render one smooth motion sequence instead of random scenes')
    parser.add_argument('--fps', type=float, default=30.0, help='frame rate of --motion')
    parser.add_argument('--color', action='store_true', help='also write colour images')
    parser.add_argument('--preview', help='write a PNG contact sheet of the first frames')
    parser.add_argument('--preview-frames', type=int, default=16,
                        help='frames on the contact sheet')
    parser.add_argument('--benchmark', action='store_true',
                        help='print rendering speed figures (no dataset needed)')
    parser.add_argument('--benchmark-frames', type=int, default=200,
                        help='frames per benchmark figure')
    return parser


def _frames(args, generator, intrinsics):
    if args.motion:
        motion = generate_motion(args.frames, fps=args.fps, seed=args.seed,
                                 intrinsics=intrinsics)
        return generator.render_motion(motion, color=args.color)
    return (generator.sample_frame(color=args.color) for _ in range(args.frames))


class _PreviewCollector:
    """Pass frames through while keeping previews of the first few."""

    def __init__(self, frames, count):
        self.frames = frames
        self.count = count
        self.images, self.uvd, self.visible = [], [], []

    def __iter__(self):
        for frame in self.frames:
            if len(self.images) < self.count:
                self.images.append(depth_preview(frame.depth_mm))
                self.uvd.append(frame.hands[0].joints_uvd)
                self.visible.append(frame.hands[0].visible)
            yield frame


class _Timer:
    """Wall-clock and process CPU time of a block, as frames per second."""

    def __init__(self, count):
        self.count = count

    def __enter__(self):
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall_fps = self.count / max(time.perf_counter() - self.wall, 1e-9)
        self.cpu_fps = self.count / max(time.process_time() - self.cpu, 1e-9)


def benchmark(intrinsics, seed, count, stream=sys.stdout):
    """
    Print frames per second of crop and full-frame rendering; return the figures.

    Each figure is given per wall-clock second and per second of this process's CPU time
    (the second is the fairer one on a machine shared with other jobs). Scenes are sampled
    before timing except where the name says so.
    """
    figures = {}
    full_count = max(count // 4, 1)
    for scene_name, scene in (('default', SceneConfig()), ('hand_only', SceneConfig.hand_only())):
        generator = SyntheticGenerator(intrinsics, scene=scene, seed=seed)
        scenes = [generator.sample_scene() for _ in range(count)]
        crops = [hand_crop_intrinsics(intrinsics, skeleton.palm_center(s.hands[0].keypoints_xyz))
                 for s in scenes]
        with _Timer(count) as timer:
            for s, crop in zip(scenes, crops):
                generator.render(s, intrinsics=crop)
        figures[f'crop176_{scene_name}'] = timer
        with _Timer(full_count) as timer:
            for s in scenes[:full_count]:
                generator.render(s)
        figures[f'full_{scene_name}'] = timer
    generator = SyntheticGenerator(intrinsics, seed=seed)
    with _Timer(full_count) as timer:
        for _ in range(full_count):
            generator.sample_frame()
    figures['full_default_sample_and_render'] = timer
    color_count = max(count // 8, 1)
    with _Timer(color_count) as timer:
        for _ in range(color_count):
            generator.sample_frame(color=True)
    figures['full_default_sample_and_render_color'] = timer
    with _Timer(count) as timer:
        generate_motion(count, seed=seed, intrinsics=intrinsics)
    figures['motion_generation'] = timer
    stream.write(f'hand_pose_synth benchmark: camera {intrinsics.width}x{intrinsics.height}, '
                 f'crops 176x176 (+-100 mm), default sensor, 1 process, numpy\n')
    stream.write(f'  {"figure":40s} {"fps (wall)":>11s} {"fps (cpu)":>11s}\n')
    for name, timer in figures.items():
        stream.write(f'  {name:40s} {timer.wall_fps:11.1f} {timer.cpu_fps:11.1f}\n')
    return {name: (timer.wall_fps, timer.cpu_fps) for name, timer in figures.items()}


def main(argv=None):
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        check_at_least('--frames', args.frames, 1)
        check_positive('--fps', args.fps)
        check_at_least('--preview-frames', args.preview_frames, 1)
        if not args.out and not args.benchmark:
            raise ValueError('--out is required (unless --benchmark)')
        if args.preview and os.path.splitext(args.preview)[1].lower() not in \
                Image.registered_extensions():
            raise ValueError(f'--preview {args.preview}: not an image file name (e.g. .png)')
        if args.out:
            check_output_folder('--out', args.out)
            check_output_file('--preview', args.preview)
        intrinsics = CameraIntrinsics.from_preset(args.camera)
        if args.benchmark:
            benchmark(intrinsics, args.seed, max(args.benchmark_frames, 1))
        if args.out:
            write(args, intrinsics)
    except (ValueError, OSError) as error:
        return fail('hand_pose_synth', error)
    return 0


def write(args, intrinsics):
    """Write the dataset folder (and the contact sheet) the arguments ask for."""
    scene = synthetic_scene_config(args.scene)
    sensor = SENSORS[args.sensor]()
    generator = SyntheticGenerator(intrinsics, scene=scene, sensor=sensor, seed=args.seed)
    frames = _PreviewCollector(_frames(args, generator, intrinsics),
                               args.preview_frames if args.preview else 0)
    meta = {'seed': args.seed, 'camera': args.camera, 'motion': args.motion, 'fps': args.fps,
            'scene_name': args.scene, 'sensor_name': args.sensor,
            'scene': asdict(scene), 'sensor': asdict(sensor)}
    count = write_dataset(args.out, frames, intrinsics, meta=meta, num_frames=args.frames,
                          progress=ProgressBar(args.frames))
    if args.preview:
        contact_sheet(frames.images, frames.uvd, frames.visible).save(args.preview)
    sys.stderr.write(f'wrote {count} frames to {args.out}\n')


if __name__ == '__main__':
    sys.exit(main())
