"""
Evaluate the hand filters on corrupted synthetic motion or on a model's own predictions.

Synthetic mode (default): clean sequences (``--rate``, 30 Hz) from
``hand_pose_ros.core.synth`` are corrupted like an estimator's output (noise, outliers,
finger swaps, dropped frames and hands) and each filter configuration is scored against the
clean sequence. Predictions mode (``--predictions file.npz`` with ``stamps_s``, ``pred``
(T, 21, 3) and ``gt`` (T, 21, 3), metres, NaN rows for missing hands): the same metrics on
a model's output, with the model's gross errors (>= 50 mm) standing in for injected
outliers. Model mode (``--model NAME``): the same on the model's own estimates of rendered
synthetic sequences (hands found by its localiser; a frame whose nearest hand lies over
50 mm from the true centre counts as missed).
"""

import argparse
import json
import sys

import numpy as np

from hand_pose_ros.cli.options import check_output_file, fail
from hand_pose_ros.core.filters import config_from_dict, FilterConfig
from hand_pose_ros.core.filters import evaluation

COLUMNS = (
    ('mean_error_mm', 'mean err mm', '{:.2f}'),
    ('accel_error_mm_f2', 'accel err mm/f2', '{:.2f}'),
    ('accel_change_pct', 'accel vs raw %', '{:+.0f}'),
    ('lag_ms', 'lag ms', '{:.1f}'),
    ('outlier_recall', 'outl. recall %', '{:.1%}'),
    ('false_rejection', 'false rej. %', '{:.2%}'),
    ('gap_error_mm', 'gap err mm', '{:.2f}'),
    ('gap_ratio', 'gap/raw', '{:.2f}'),
    ('coverage', 'valid %', '{:.1%}'),
)


def configurations():
    """Return {name: (runner, FilterConfig or None)} of the configurations compared."""
    default = FilterConfig()
    return {
        'raw': ('raw', None),
        'gates only': ('online', config_from_dict({'smoother': 'none'})),
        'one_euro, no gates': ('online', config_from_dict(
            {'gates.enabled': False, 'anatomy.enabled': False})),
        'one_euro (default)' if default.smoother == 'one_euro' else 'one_euro':
            ('online', config_from_dict({'smoother': 'one_euro'})),
        'kalman (default)' if default.smoother == 'kalman' else 'kalman':
            ('online', config_from_dict({'smoother': 'kalman'})),
        'offline (two-way)': ('offline', default),
    }


def _run(kind, sequence, config):
    if kind == 'raw':
        return evaluation.run_raw(sequence)
    if kind == 'online':
        return evaluation.run_online(sequence, config)
    return evaluation.run_offline(sequence, config)


def _load_predictions(path):
    data = np.load(path)
    missing = [k for k in ('stamps_s', 'pred', 'gt') if k not in data]
    if missing:
        raise ValueError(f'{path} lacks arrays {missing} (needs stamps_s, pred, gt)')
    return _prediction_sequence(
        *(np.asarray(data[k], dtype=np.float64) for k in ('stamps_s', 'pred', 'gt')))


def _prediction_sequence(stamps, pred, gt):
    """Return the CorruptedSequence of a model's predictions (gross errors as outliers)."""
    if pred.shape != gt.shape or pred.shape != (len(stamps), 21, 3):
        raise ValueError(f'expected pred and gt of shape ({len(stamps)}, 21, 3), got '
                         f'{pred.shape} and {gt.shape}')
    if len(stamps) < 3 or np.any(np.diff(stamps) <= 0):
        raise ValueError('stamps_s must be strictly increasing with at least 3 frames')
    detected = np.any(np.all(np.isfinite(pred), axis=2), axis=1)
    gross = np.linalg.norm(pred - gt, axis=2) >= evaluation.CorruptionConfig().outlier_min_m
    gross &= np.isfinite(pred).all(axis=2)
    return evaluation.CorruptedSequence(
        stamps_s=stamps, gt=gt, observed=pred, detected=detected, gross=gross,
        corrupted=gross.copy(), frame_period_s=float(np.median(np.diff(stamps))),
        full_stamps_s=stamps, full_gt=gt)


def _motions(frames, seed, count, rate_hz):
    from hand_pose_ros.core.synth import generate_motion
    return [generate_motion(frames, fps=rate_hz, seed=seed + k,
                            handedness=('right', 'left')[k % 2]) for k in range(count)]


def _synthetic_sequences(frames, seed, count, rate_hz):
    rng = np.random.default_rng(seed)
    return [evaluation.corrupt_sequence(motion.stamps_s, motion.joints_xyz, rng)
            for motion in _motions(frames, seed, count, rate_hz)]


def _model_sequences(model, frames, seed, count, rate_hz):
    """Return the prediction sequences of a model on rendered synthetic motion."""
    from hand_pose_ros.core import load_estimator
    from hand_pose_ros.core.camera import CameraIntrinsics
    from hand_pose_ros.core.evaluation import match_centers
    from hand_pose_ros.core.synth import SyntheticGenerator

    estimator = load_estimator(model)
    intrinsics = CameraIntrinsics.from_preset('sr300')
    sequences = []
    for k, motion in enumerate(_motions(frames, seed, count, rate_hz)):
        pred = np.full(motion.joints_xyz.shape, np.nan)
        rendered = SyntheticGenerator(intrinsics, seed=seed + k).render_motion(
            motion, color='color' in estimator.input_names)
        for t, frame in enumerate(rendered):
            hands = estimator.estimate(frame.depth_m, intrinsics, color=frame.color)
            found, = match_centers([h.center_xyz for h in hands],
                                   motion.joints_xyz[t].mean(axis=0))
            if found >= 0:
                pred[t] = hands[found].keypoints_xyz
        sequences.append(_prediction_sequence(motion.stamps_s, pred, motion.joints_xyz))
    return sequences


def evaluate(sequences):
    """Return {configuration: pooled metrics} over the sequences."""
    results = {}
    weights = [len(s.stamps_s) for s in sequences]
    for name, (kind, config) in configurations().items():
        per_sequence = [evaluation.sequence_metrics(s, *_run(kind, s, config))
                        for s in sequences]
        results[name] = evaluation.pooled(per_sequence, weights)
    raw = results['raw']
    for metrics in results.values():
        # None where the raw figure is 0 (predictions equal to the truth): no ratio.
        metrics['accel_change_pct'] = None if raw['accel_error_mm_f2'] == 0 else 100.0 * (
            metrics['accel_error_mm_f2'] / raw['accel_error_mm_f2'] - 1.0)
        metrics['gap_ratio'] = None if raw['mean_error_mm'] == 0 else \
            metrics['gap_error_mm'] / raw['mean_error_mm']
    return results


def format_table(results):
    """Return the results as a fixed-width text table."""
    name_width = max(len(name) for name in results) + 2
    header = 'configuration'.ljust(name_width) + ' '.join(
        title.rjust(max(len(title), 9)) for _, title, _ in COLUMNS)
    lines = [header, '-' * len(header)]
    for name, metrics in results.items():
        cells = []
        for key, title, fmt in COLUMNS:
            value = metrics.get(key)
            text = 'n/a' if value is None or not np.isfinite(value) else fmt.format(value)
            cells.append(text.rjust(max(len(title), 9)))
        lines.append(name.ljust(name_width) + ' '.join(cells))
    return '\n'.join(lines)


def build_parser():
    parser = argparse.ArgumentParser(
        prog='hand_pose_filter_eval',
        description='Score the hand filters (raw vs each configuration) on corrupted '
        "synthetic 30 Hz motion or on a model's predictions.")
    parser.add_argument('--frames', type=int, default=900,
                        help='frames per synthetic sequence (default 900 = 30 s)')
    parser.add_argument('--sequences', type=int, default=4,
                        help='number of synthetic sequences (alternating right/left hands)')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--rate', type=float, default=30.0,
                        help='frame rate of the synthetic sequences (Hz)')
    parser.add_argument('--model',
                        help="score the filters on this model's estimates of rendered "
                             'synthetic sequences')
    parser.add_argument('--json', help='write the figures to this JSON file')
    parser.add_argument('--predictions',
                        help='npz with stamps_s (T,), pred (T,21,3), gt (T,21,3) in metres')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.frames < 10 or args.sequences < 1 or not args.rate > 0:
        return fail('hand_pose_filter_eval',
                    '--frames must be >= 10, --sequences >= 1 and --rate > 0')
    frames = f'{args.sequences} x {args.frames} frames at {args.rate:g} Hz, seed {args.seed}'
    try:
        check_output_file('--json', args.json)
        if args.predictions:
            sequences = [_load_predictions(args.predictions)]
            source = f'predictions {args.predictions}'
        elif args.model:
            sequences = _model_sequences(args.model, args.frames, args.seed, args.sequences,
                                         args.rate)
            source = f'model {args.model} on rendered synthetic motion: {frames}'
        else:
            sequences = _synthetic_sequences(args.frames, args.seed, args.sequences,
                                             args.rate)
            source = f'synthetic: {frames}, corruption {evaluation.CorruptionConfig()}'
        results = evaluate(sequences)
        print(source)
        print(format_table(results))
        if args.json:
            with open(args.json, 'w') as stream:
                json.dump({'source': source, 'results': results}, stream, indent=2)
    except (OSError, ValueError, RuntimeError) as error:
        return fail('hand_pose_filter_eval', error)
    return 0


if __name__ == '__main__':
    sys.exit(main())
