"""
``hand_pose_selftrain``: adapt a hand pose model to an unlabelled recording.

Adapt the shipped model to a rosbag2 recording (MCAP or sqlite3) or a folder of depth PNGs::

    hand_pose_selftrain RECORDING --model default --output runs/adapted
    hand_pose_selftrain RECORDING --output runs/adapted --resume     # after an interruption

RECORDING is a rosbag2 folder holding a raw sensor_msgs/Image depth topic (16UC1 mm or 32FC1 m)
and its sensor_msgs/CameraInfo (chosen by type when the bag has one of each; else name them:
--depth-topic, --info-topic), or a folder of 16-bit PNGs (millimetres, 0 = invalid) with an
intrinsics.yaml, .yml or .json beside them: fx, fy, cx, cy, width, height, or a ROS
camera_info YAML (camera_matrix.data, image_width, image_height). PNG names that are integers
of 18 or more digits are stamps in nanoseconds; otherwise the frames, sorted by name, are
stamped at --fps. Training needs the package's training extras (torch, onnx; rosbags for
bags), which `make setup` installs.

Domain-shift experiment (records an unlabelled synthetic domain B bag: gloves, a held tool,
a noisier sensor, another camera; adapts on it; evaluates on labelled B frames the
adaptation never saw)::

    hand_pose_selftrain --experiment runs/domain_shift

Measure models on the experiment's labelled test frames (cards, or checkpoints of
``hand_pose_train`` runs that fine-tuned ``--model``)::

    hand_pose_selftrain --evaluate default runs/fitted/checkpoint_last.pt
"""

import argparse
import json
import logging
import math
from pathlib import Path
import shutil
import sys
import time

from hand_pose_ros.cli.options import fail, parse_assignment
from hand_pose_ros.core.selftrain import SelfTrainConfig

TUNABLES = (
    # (flag, config field, type, help)
    ('--iterations', 'iterations', int, 'most fine-tuning rounds'),
    ('--steps', 'steps', int, 'fine-tuning steps per round'),
    ('--batch-size', 'batch_size', int, 'crops per step'),
    ('--lr', 'lr', float, 'peak fine-tuning learning rate'),
    ('--holdout-fraction', 'holdout_fraction', float,
     'share of the recording kept for label-free model selection'),
    ('--holdout-blocks', 'holdout_blocks', int,
     'contiguous blocks, spread evenly over the recording, that the kept share forms'),
    ('--max-frames', 'max_frames', int, 'frames read from the recording (0: all)'),
    ('--max-hands', 'max_hands', int, 'hands expected per frame'),
    ('--score-quantile', 'score_quantile', float,
     'drop this least confident share of detections'),
    ('--joint-score-quantile', 'joint_score_quantile', float,
     'leave this least confident share of pseudo-label joints out of the loss'),
    ('--max-residual', 'max_residual_m', float,
     'largest mean raw-to-smoothed joint distance of a pseudo-label, metres'),
    ('--synthetic-fraction', 'synthetic_fraction', float,
     'share of synthetic crops in fine-tuning'),
    ('--min-pseudo-labels', 'min_pseudo_labels', int,
     'fewer pseudo-labelled frames end the loop'),
    ('--min-improvement', 'min_improvement', float,
     'pass-rate gain a round needs to continue'),
    ('--start-domain-fraction', 'start_domain_fraction', float,
     "share of synthetic crops in the start model's domain when fitting one"),
    ('--domain-fit-frames', 'domain_fit_frames', int,
     'most recording frames measured by the domain fit'),
    ('--domain-fit-crops', 'domain_fit_crops', int,
     'rendered crops per evaluation of a setting in the domain fit'),
    ('--label-views', 'label_views', int, 'test-time views per crop for the pseudo-labels'),
    ('--backend', 'backend', str, "estimator backend during the rounds ('torch', "
     "'onnxruntime', 'auto')"),
    ('--device', 'device', str, "'auto', 'cpu' or 'cuda'"),
    ('--threads', 'num_threads', int, 'torch CPU threads (0: default)'),
    ('--seed', 'seed', int, 'seed of fine-tuning and synthetic crops'),
    ('--name', 'name', str, 'name of the adapted model card'),
)


def build_parser():
    """Return the argument parser."""
    parser = argparse.ArgumentParser(
        prog='hand_pose_selftrain', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('recording', nargs='?',
                        help='rosbag2 directory (MCAP or sqlite3) or folder of depth PNGs')
    parser.add_argument('--model', default='default',
                        help='starting model: name or path of a model card')
    parser.add_argument('-o', '--output', help='output folder of the run')
    parser.add_argument('--resume', action='store_true', help='continue the run in --output')
    parser.add_argument('--depth-topic', help='depth image topic of a bag')
    parser.add_argument('--info-topic', help='camera_info topic of a bag')
    parser.add_argument('--fps', type=float, default=30.0,
                        help='frame rate of a PNG folder whose names are not stamps')
    parser.add_argument('--filter', action='append', default=[], metavar='KEY=VALUE',
                        help='filter override, e.g. gates.palm_max_speed_m_s=2.0 (repeatable)')
    parser.add_argument('--no-fit-domain', action='store_true',
                        help="render the synthetic crops in the start model's training "
                             'domain instead of one fitted to the recording')
    parser.add_argument('--no-onnx', action='store_true',
                        help='do not export the adapted model to ONNX')
    defaults = SelfTrainConfig()
    for flag, key, kind, text in TUNABLES:
        parser.add_argument(flag, dest=key, type=kind, default=getattr(defaults, key),
                            help=f'{text} (default {getattr(defaults, key)})')
    experiment = parser.add_argument_group('domain-shift experiment')
    experiment.add_argument('--experiment', metavar='OUTDIR',
                            help='run the domain-shift experiment into OUTDIR')
    experiment.add_argument('--adapt-frames', type=int, default=400,
                            help='unlabelled domain B frames recorded for adaptation')
    experiment.add_argument('--test-frames', type=int, default=600,
                            help='labelled domain B frames for the evaluation (domain A: '
                                 'half as many)')
    experiment.add_argument('--sequence-frames', type=int, default=100,
                            help='frames per recorded (unlabelled) motion sequence')
    experiment.add_argument('--evaluate', nargs='+', metavar='MODEL',
                            help="instead, measure models on the experiment's labelled test "
                                 'frames: model names, cards, or hand_pose_train checkpoints '
                                 "of fine-tunes of --model (kept with --model's finder, hand "
                                 'score and views)')
    experiment.add_argument('--test-sequence-frames', type=int, default=25,
                            help='frames per labelled test sequence: each sequence is another '
                                 'hand, motion and scene, so short ones measure more hands')
    return parser


def _filter_overrides(items):
    """Parse ``--filter KEY=VALUE`` strings (see :func:`parse_assignment`) into a dict."""
    return dict(parse_assignment(item, '--filter') for item in items)


def config_from_args(args):
    """Return the :class:`SelfTrainConfig` of parsed arguments."""
    values = {key: getattr(args, key) for _, key, _, _ in TUNABLES}
    values['filter_overrides'] = _filter_overrides(args.filter)
    values['export_onnx'] = not args.no_onnx
    values['fit_domain'] = not args.no_fit_domain
    return SelfTrainConfig(**values)


def open_recording(path, depth_topic=None, info_topic=None, fps=30.0):
    """Return a bag or PNG-folder recording for ``path``."""
    from hand_pose_ros.core.recordings import FolderRecording

    path = Path(path)
    if (path / 'metadata.yaml').is_file():
        from hand_pose_ros.ros.bags import BagRecording

        return BagRecording(path, depth_topic=depth_topic, info_topic=info_topic)
    if depth_topic or info_topic:
        raise ValueError(f'{path} is not a rosbag2 directory; topics apply to bags only')
    return FolderRecording(path, fps=fps)


# --------------------------------------------------------------------------- experiment

# Sequence seeds of the experiment: the adaptation recording's from 100, the labelled test
# sequences' from 900 (domain B, then domain A).
ADAPT_FIRST_SEED, TEST_FIRST_SEED = 100, 900


def record_domain_bag(path, shift, num_frames, sequence_frames, first_seed):
    """Render ``num_frames`` of a domain as motion sequences into an MCAP bag (no labels)."""
    from hand_pose_ros.core.recordings import DepthFrame
    from hand_pose_ros.core.selftrain import render_sequence
    from hand_pose_ros.ros.bags import DepthBagWriter

    gap_s = 2.0  # between sequences: longer than the filter's max_gap_s
    start_s = 0.0
    with DepthBagWriter(path, storage='mcap') as writer:
        for seed, count in _sequences(num_frames, sequence_frames, first_seed):
            for frame in render_sequence(count, seed, shift, start_s=start_s):
                writer.write(DepthFrame(int(round(frame.stamp_s * 1e9)) + 10 ** 18,
                                        frame.depth_mm, frame.intrinsics))
            start_s += count / 30.0 + gap_s
    return writer.count


def _sequences(num_frames, sequence_frames, first_seed):
    """Return (seed, frame count) of the sequences making ``num_frames``."""
    counts = [sequence_frames] * (num_frames // sequence_frames)
    if num_frames % sequence_frames:
        counts.append(num_frames % sequence_frames)
    return [(first_seed + i, count) for i, count in enumerate(counts)]


def labelled_frames(shift, num_frames, sequence_frames, first_seed):
    """Render labelled test frames of a domain (sequences with their own seeds)."""
    from hand_pose_ros.core.selftrain import render_sequence

    frames = []
    for seed, count in _sequences(num_frames, sequence_frames, first_seed):
        frames.extend(render_sequence(count, seed, shift))
    return frames


def snapshot_card(card_path, directory):
    """
    Copy a model card and its files into ``directory`` once; return the copy's path.

    The experiment keeps its own copy so that a model re-shipped under the same name
    during (or after) the run does not change what was adapted and measured.
    """
    import shutil

    from hand_pose_ros.core.model_io import read_card

    card_path = Path(card_path)
    copy = Path(directory) / card_path.name
    if not copy.is_file():
        card = read_card(card_path, verify=True)
        Path(directory).mkdir(parents=True, exist_ok=True)
        for name in card['files']:
            shutil.copyfile(card_path.parent / name, Path(directory) / name)
        shutil.copyfile(card_path, copy)
    read_card(copy, verify=True)
    return copy


def experiment_seeds(args):
    """
    Return the first seeds of the experiment's sequences: (adaptation, test B, test A).

    :raises ValueError: so many adaptation sequences that their seeds would reach the test
        sequences' (the same seed renders the same frames: test frames would be trained on).
    """
    adaptation = len(_sequences(args.adapt_frames, args.sequence_frames, ADAPT_FIRST_SEED))
    test_b = len(_sequences(args.test_frames, args.test_sequence_frames, TEST_FIRST_SEED))
    if ADAPT_FIRST_SEED + adaptation > TEST_FIRST_SEED:
        raise ValueError(
            f'--adapt-frames {args.adapt_frames} in sequences of {args.sequence_frames} makes '
            f'{adaptation} sequences; at most {TEST_FIRST_SEED - ADAPT_FIRST_SEED} keep their '
            'seeds apart from the test sequences')
    # Domain A's sequences take the seeds after domain B's.
    return ADAPT_FIRST_SEED, TEST_FIRST_SEED, TEST_FIRST_SEED + test_b


def experiment_test_sets(args):
    """Render the experiment's labelled test frames: (domain B, domain A)."""
    from hand_pose_ros.core.selftrain import DomainShift

    _, first_b, first_a = experiment_seeds(args)
    test_b = labelled_frames(DomainShift.gloved_tool(), args.test_frames,
                             args.test_sequence_frames, first_b)
    test_a = labelled_frames(DomainShift(), max(args.test_frames // 2, 1),
                             args.test_sequence_frames, first_a)
    return test_b, test_a


def measure_card(card, test_b, test_a, config):
    """Measure a model card on the labelled test frames of both domains."""
    from hand_pose_ros.core.estimator import load_estimator
    from hand_pose_ros.core.selftrain import evaluate_labelled

    options = {'device': config.device}
    if config.num_threads:
        options['threads'] = config.num_threads
    estimator = load_estimator(str(card), backend='torch', max_hands=2, **options)
    return {'domain_b': evaluate_labelled(estimator, test_b, config),
            'domain_a': evaluate_labelled(estimator, test_a, config)}


def card_of(model, start_model):
    """
    Return a card path for ``model``: a model name or card, or a training checkpoint.

    A checkpoint (``hand_pose_train`` fine-tuning the start model, e.g. on a fitted
    synthetic domain) gets a card beside it, ``evaluated/NAME.yaml``, that keeps the start
    model's finder, hand score and test-time views, as an adapted model does.
    """
    from hand_pose_ros.core.crop import CropSpec
    from hand_pose_ros.core.estimator import resolve_card
    from hand_pose_ros.core.model_io import read_card
    from hand_pose_ros.core.selftrain import save_adapted_card
    from hand_pose_ros.core.training import model_from_checkpoint

    path = Path(model)
    if path.suffix != '.pt':
        return Path(resolve_card(model))
    directory = path.parent / 'evaluated'
    card = directory / f'{path.stem}.yaml'
    if not card.is_file():
        network, config, _ = model_from_checkpoint(path)
        start_card = resolve_card(start_model)
        start_crop = read_card(start_card)['crop']
        if config.crop_spec.to_dict() != CropSpec.from_dict(start_crop).to_dict():
            raise ValueError(f'{path} was trained on crops {config.crop_spec.to_dict()}, '
                             f'not those of {start_card} ({start_crop}): give the model it '
                             f'fine-tuned as --model')
        save_adapted_card(network.eval(), directory, path.stem, start_card,
                          {'evaluated_checkpoint': str(path)})
    return card


def evaluate_models(args, config, stream):
    """Measure models on the experiment's labelled test frames; return {model: metrics}."""
    test_b, test_a = experiment_test_sets(args)
    results = {}
    for model in args.evaluate:
        stream.write(f'[evaluate] {model}\n')
        results[model] = measure_card(card_of(model, args.model), test_b, test_a, config)
    return results


def format_evaluation(results):
    """Return a Markdown table of :func:`evaluate_models` results."""
    lines = ['| model | B mean error mm | B oracle-centre error mm | B detection rate | '
             'A mean error mm | A oracle-centre error mm |',
             '| --- | --- | --- | --- | --- | --- |']
    for model, item in results.items():
        b, a = item['domain_b'], item['domain_a']
        lines.append(f'| {model} | {b["mean_error_mm"]:.2f} | {b["mean_error_oracle_mm"]:.2f} '
                     f'| {b["detection_rate"]:.1%} | {a["mean_error_mm"]:.2f} | '
                     f'{a["mean_error_oracle_mm"]:.2f} |')
    return '\n'.join(lines)


def run_experiment(args, config, stream):
    """Record domain B, adapt the model on it, evaluate before and after; return results."""
    from hand_pose_ros.core.estimator import resolve_card
    from hand_pose_ros.core.selftrain import DomainShift, SelfTrainer
    from hand_pose_ros.ros.bags import BagRecording

    out = Path(args.experiment)
    out.mkdir(parents=True, exist_ok=True)
    shift_b = DomainShift.gloved_tool()
    bag = out / 'domain_b_bag'
    if not (bag / 'metadata.yaml').is_file():
        stream.write(f'[experiment] recording {args.adapt_frames} unlabelled domain B frames '
                     f'into {bag}\n')
        # Recorded aside and moved into place when whole: an interrupted recording (a bag
        # folder without its metadata) is recorded again instead of blocking every rerun.
        partial = out / 'domain_b_bag.partial'
        for folder in (partial, bag):
            shutil.rmtree(folder, ignore_errors=True)
        record_domain_bag(partial, shift_b, args.adapt_frames, args.sequence_frames,
                          experiment_seeds(args)[0])
        partial.rename(bag)
    test_b, test_a = experiment_test_sets(args)
    base_card = snapshot_card(resolve_card(args.model), out / 'start_model')

    def measure(card):
        return measure_card(card, test_b, test_a, config)

    started = time.monotonic()
    stream.write('[experiment] evaluating the start model on labelled test frames\n')
    before = measure(base_card)
    trainer = SelfTrainer(BagRecording(bag), base_card, out / 'selftrain', config,
                          resume=True, progress_stream=stream)
    final_card = trainer.run()
    rounds = []
    for record in trainer.state['rounds']:
        card = base_card if record['round'] == 0 else out / 'selftrain' / record['card']
        stream.write(f'[experiment] evaluating round {record["round"]} on labelled B\n')
        rounds.append({'round': record['round'], 'label_free': {
            'pass_rate': record['train']['pass_rate'],
            'holdout_pass_rate': record['holdout']['pass_rate'],
            'holdout_residual_mm': record['holdout']['residual_mm'],
            'criterion': record['criterion']},
            'test': before if record['round'] == 0 else measure(card)})
    after = measure(final_card)
    best = trainer.state['best']
    control = None
    if best:
        stream.write(f'[experiment] control: {best} round(s) of fine-tuning on synthetic '
                     f'crops only\n')
        crops = trainer.state['rounds'][1]['training']['pool_size']
        control = measure(trainer.control_run(best, crops))
    b0, b1 = before['domain_b'], after['domain_b']
    results = {
        'start_model': str(base_card), 'adapted_model': str(final_card),
        'best_round': best, 'stopped': trainer.state['stopped'],
        'domain_b': {'camera': shift_b.camera, 'finger_radius_scale':
                     shift_b.finger_radius_scale, 'palm_thickness_scale':
                     shift_b.palm_thickness_scale, 'tool_radius_m': shift_b.tool_radius_m,
                     'sensor': shift_b.sensor},
        'frames': {'adapt_unlabelled': args.adapt_frames, 'test_b': len(test_b),
                   'test_sequence_frames': args.test_sequence_frames,
                   'test_a': len(test_a)},
        'fitted_domain': trainer.domain()['fitted'] if config.fit_domain else None,
        'config': config.to_dict(), 'before': before, 'after': after,
        'control_synthetic_only': control, 'rounds': rounds,
        'error_reduction_b': _reduction(b0['mean_error_mm'], b1['mean_error_mm']),
        'oracle_error_reduction_b': _reduction(b0['mean_error_oracle_mm'],
                                               b1['mean_error_oracle_mm']),
        'detection_rate_gain_b': b1['detection_rate'] - b0['detection_rate'],
        'elapsed_s': round(time.monotonic() - started, 1)}
    results['target_met'] = bool(results['error_reduction_b'] >= 0.25
                                 and results['detection_rate_gain_b'] > 0)
    (out / 'experiment.json').write_text(json.dumps(results, indent=2), encoding='utf-8')
    (out / 'experiment.md').write_text(format_experiment(results), encoding='utf-8')
    return results


def _reduction(before, after):
    if not (math.isfinite(before) and math.isfinite(after)) or before <= 0:
        return math.nan
    return (before - after) / before


def format_experiment(results):
    """Return the experiment's Markdown summary."""
    lines = [
        '# Domain-shift experiment', '',
        f'Start model `{results["start_model"]}`, adapted model `{results["adapted_model"]}` '
        f'(round {results["best_round"]}; {results["stopped"]}).', '',
        f'Domain B: {results["domain_b"]}.', '',
        f'Synthetic domain fitted to the unlabelled B recording: {results["fitted_domain"]}.',
        '',
        f'Frames: {results["frames"]}.', '',
        '| round | pass rate | held-out pass | held-out residual mm | criterion | '
        'B mean error mm | B oracle-centre error mm | B detection rate | '
        'A mean error mm |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for item in results['rounds']:
        free, b, a = item['label_free'], item['test']['domain_b'], item['test']['domain_a']
        lines.append(
            f'| {item["round"]} | {free["pass_rate"]:.1%} | {free["holdout_pass_rate"]:.1%} | '
            f'{free["holdout_residual_mm"]:.1f} | {free["criterion"]:.3f} | '
            f'{b["mean_error_mm"]:.1f} | {b["mean_error_oracle_mm"]:.1f} | '
            f'{b["detection_rate"]:.1%} | {a["mean_error_mm"]:.1f} |')
    before, after = results['before']['domain_b'], results['after']['domain_b']
    lines += [
        '', f'Domain B mean 3D error {before["mean_error_mm"]:.1f} -> '
        f'{after["mean_error_mm"]:.1f} mm ({results["error_reduction_b"]:.1%} reduction; '
        f'oracle centres {before["mean_error_oracle_mm"]:.1f} -> '
        f'{after["mean_error_oracle_mm"]:.1f} mm), detection rate '
        f'{before["detection_rate"]:.1%} -> {after["detection_rate"]:.1%}. '
        f'Target (>= 25 % and more detections) met: {results["target_met"]}.', '']
    control = results['control_synthetic_only']
    if control is not None:
        lines += [
            f'Control (same fine-tuning steps on synthetic crops only, no pseudo-labels): '
            f'domain B mean 3D error {control["domain_b"]["mean_error_mm"]:.1f} mm, '
            f'oracle centres {control["domain_b"]["mean_error_oracle_mm"]:.1f} mm, '
            f'detection rate {control["domain_b"]["detection_rate"]:.1%}; domain A '
            f'{control["domain_a"]["mean_error_mm"]:.1f} mm.', '']
    after_a = results['after']['domain_a']['mean_error_mm']
    lines += [f'Domain A (training domain) mean 3D error '
              f'{results["before"]["domain_a"]["mean_error_mm"]:.1f} -> {after_a:.1f} mm.', '']
    return '\n'.join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    """Entry point of ``hand_pose_selftrain``; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        config = config_from_args(args)
        if args.evaluate:
            if args.recording or args.output or args.experiment:
                raise ValueError('--evaluate takes no recording, --output or --experiment')
            print(format_evaluation(evaluate_models(args, config, sys.stderr)))
            return 0
        if args.experiment:
            if args.recording or args.output:
                raise ValueError('--experiment takes no recording or --output')
            results = run_experiment(args, config, sys.stderr)
            print(format_experiment(results))
            return 0
        if not args.recording or not args.output:
            parser.error('give a RECORDING and --output (or --experiment OUTDIR)')
        from hand_pose_ros.core.selftrain import SelfTrainer

        recording = open_recording(args.recording, args.depth_topic, args.info_topic,
                                   args.fps)
        card = SelfTrainer(recording, args.model, args.output, config, resume=args.resume,
                           progress_stream=sys.stderr).run()
        print(card)
        return 0
    except (ValueError, OSError) as error:
        return fail('hand_pose_selftrain', error)
    except KeyboardInterrupt:
        print('hand_pose_selftrain: interrupted; rerun with --resume to continue',
              file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
