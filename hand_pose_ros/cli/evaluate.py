"""
``hand_pose_evaluate``: accuracy of a model (or of the hand localiser) on labelled frames.

Examples::

    hand_pose_evaluate --dataset synthetic --model default --center oracle --json eval.json
    hand_pose_evaluate --dataset synthetic --model default --center detect --plot curve.png
    hand_pose_evaluate --dataset synthetic --localizer-only --frames 500
    hand_pose_evaluate --dataset nyu --root ~/data/nyu --model default --center detect
    hand_pose_evaluate --dataset synthetic --model my_model --fit-hand-score --seed 3000
    hand_pose_evaluate --dataset synthetic --scene motion --center detect --redetect-interval 3
    hand_pose_evaluate --dataset synthetic --scene motion --center detect --redetect-interval 3 \
        --filter

Metric definitions: :mod:`hand_pose_ros.core.evaluation`.
"""

import argparse
import dataclasses
import inspect
import json
import logging
import sys

from hand_pose_ros.cli.options import (
    check_at_least, check_output_file, check_positive, fail, parse_assignment)
from hand_pose_ros.core import evaluation, skeleton
from hand_pose_ros.core.backends.base import PRECISIONS
from hand_pose_ros.core.crop import VIEW_SETS
from hand_pose_ros.core.estimator import DEFAULT_MIN_HAND_SCORE
from hand_pose_ros.core.filters import config_from_dict

# Datasets whose evaluation joints only partly map onto the 21-joint order (their layouts).
PARTIAL_LAYOUTS = {'nyu': 'nyu14', 'icvl': 'icvl'}


def build_parser():
    from hand_pose_ros.core.camera import CAMERA_PRESETS
    from hand_pose_ros.core.datasets import READERS

    parser = argparse.ArgumentParser(
        prog='hand_pose_evaluate',
        description='Evaluate a hand pose model, or the hand localiser, on labelled depth '
                    'frames (see hand_pose_ros.core.evaluation for the metric definitions).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--dataset', required=True, choices=sorted(READERS),
                        help='dataset format; synthetic without --root renders a held-out '
                             'set on the fly')
    parser.add_argument('--root', help='dataset folder (required except for synthetic)')
    parser.add_argument('--option', action='append', default=[], metavar='KEY=VALUE',
                        help='dataset reader option, repeatable (e.g. '
                             'labels=test_seq_1.txt,test_seq_2.txt, kinect=1, subjects=P0,P1)')
    parser.add_argument('--model', default='default', help='model name or model card path')
    parser.add_argument('--center', choices=evaluation.CENTER_MODES, default='oracle',
                        help='oracle: crop at the ground-truth joint centroid; detect: find '
                             'hands with the localiser')
    parser.add_argument('--backend', default='auto', help='inference backend')
    parser.add_argument('--precision', default='auto', choices=PRECISIONS,
                        help="network precision (auto: onnxruntime on the CPU runs the card's "
                             'INT8 copy when it has one)')
    parser.add_argument('--frames', type=int, default=None,
                        help='number of frames (evenly spaced over a dataset; synthetic '
                             'default 2000)')
    parser.add_argument('--seed', type=int, default=1000,
                        help='seed of the synthetic test set (training uses seeds < 1000)')
    parser.add_argument('--camera', default='sr300', choices=sorted(CAMERA_PRESETS),
                        help='simulated camera of the synthetic test set')
    parser.add_argument('--scene', default='default', choices=evaluation.SYNTHETIC_SCENES,
                        help='synthetic test scenes: default (clutter, bodies, tables, '
                             'objects, sometimes two hands), single_hand, hand_only, motion '
                             '(one hand moving, 150-frame sequences in order)')
    parser.add_argument('--max-hands', type=int, default=2, help='hands per image (detect)')
    parser.add_argument('--match-radius-mm', type=float, default=50.0,
                        help='a hand is detected when a found centre lies this close to the '
                             'ground-truth centroid')
    parser.add_argument('--localizer-only', action='store_true',
                        help="evaluate only the model's hand localiser (its card's localiser "
                             'settings and finder; no network runs)')
    parser.add_argument('--no-finder', action='store_true',
                        help="use the geometric localiser alone, not fused with the model's "
                             'learned hand finder')
    parser.add_argument('--views', type=int, default=None, choices=sorted(VIEW_SETS),
                        help='test-time views per crop, merged by confidence '
                             "(default: the model card's)")
    parser.add_argument('--refine-passes', type=int, default=None,
                        help='detect: re-centring passes per found hand (default: the model '
                             "card's)")
    parser.add_argument('--redetect-interval', type=int, default=1,
                        help='detect, frames in order (--scene motion, recorded sequences): '
                             'follow the hands with a HandTracker that searches for them '
                             'every N frames, as hand_pose_node does (default 1: search every '
                             'frame)')
    parser.add_argument('--filter', action='store_true',
                        help='detect, frames in order: score the hands hand_filter_node '
                             'publishes (the estimates through the temporal and anatomical '
                             'filter, 30 Hz) instead of the raw estimates')
    parser.add_argument('--filter-param', action='append', default=[], metavar='NAME=VALUE',
                        help='with --filter: a filter parameter without its "filter." prefix '
                             '(e.g. tracking.min_detections=1), repeatable')
    parser.add_argument('--min-hand-score', type=float, default=DEFAULT_MIN_HAND_SCORE,
                        help='detect: drop localised hands whose hand score is lower')
    parser.add_argument('--fit-hand-score', action='store_true',
                        help="fit the model's localiser fusion (when it has a finder) and "
                             'then its hand score on these frames (use a seed other than the '
                             "evaluation's) and write them into the model card")
    parser.add_argument('--json', dest='json_path', help='write the results as JSON here')
    parser.add_argument('--plot', help='write the success-frame curve PNG here')
    parser.add_argument('--verbose', action='store_true', help='log at INFO level')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        check_output_file('--json', args.json_path)
        check_output_file('--plot', args.plot)
        result = run(args)
        print(format_result(result))
        write_outputs(args, result)
    except (ValueError, OSError, RuntimeError) as error:
        return fail('hand_pose_evaluate', error)
    return 0


def write_outputs(args, result):
    """Write the --json and --plot files the arguments ask for."""
    if args.json_path:
        with open(args.json_path, 'w', encoding='utf-8') as handle:
            json.dump(result, handle, indent=2)
        print(f'wrote {args.json_path}')
    if args.plot and 'success_curve' in result:
        curve = result['success_curve']
        label = f'{result["model"]} ({result["center_mode"]})'
        evaluation.draw_success_curves(
            {label: (curve['thresholds_mm'], curve['fraction'])}, args.plot)
        print(f'wrote {args.plot}')


def run(args):
    """Evaluate as the parsed arguments ask and return the result dict."""
    if args.frames is not None:
        check_at_least('--frames', args.frames, 1)
    check_at_least('--redetect-interval', args.redetect_interval, 1)
    check_positive('--match-radius-mm', args.match_radius_mm)
    parse_options(args.option, args.dataset)  # bad reader options fail before the run
    radius_m = args.match_radius_mm / 1000.0
    synthetic = args.dataset == 'synthetic' and args.root is None
    source = {'dataset': args.dataset, 'root': args.root,
              'seed': args.seed if synthetic else None,
              'scene': args.scene if synthetic else None}
    if args.fit_hand_score:
        return {**source, **fit_hand_score(args, radius_m)}
    if args.localizer_only:
        result = evaluation.evaluate_localizer(model_localizer(args), frames_of(args),
                                               max_hands=args.max_hands,
                                               match_radius_m=radius_m)
        return {**source, 'evaluated': 'localizer', 'model': args.model,
                'finder': not args.no_finder, **result}
    from hand_pose_ros.core.estimator import HandTracker, load_estimator

    if args.redetect_interval != 1 and args.center != 'detect':
        raise ValueError('--redetect-interval needs --center detect (it follows found hands)')
    if (args.filter or args.filter_param) and (args.center != 'detect' or not args.filter):
        raise ValueError('--filter needs --center detect (the filter follows found hands), '
                         'and --filter-param needs --filter')
    estimator = load_estimator(args.model, backend=args.backend, max_hands=args.max_hands,
                               min_hand_score=args.min_hand_score,
                               use_finder=not args.no_finder, views=args.views,
                               refine_passes=args.refine_passes, precision=args.precision)
    views, color = estimator.views, 'color' in estimator.input_names
    precision = running_precision(estimator, args)
    # Given centres (oracle) are used as they are: only found hands are re-centred.
    refine_passes = estimator.refine_passes if args.center == 'detect' else 0
    if args.redetect_interval != 1:
        estimator = HandTracker(estimator, args.redetect_interval)
    filter_params = dict(parse_assignment(item, '--filter-param') for item in args.filter_param)
    if args.filter:
        estimator = evaluation.FilteredEstimator(estimator, config_from_dict(filter_params))
    result = evaluation.evaluate_estimator(estimator, frames_of(args, color), args.center,
                                           match_radius_m=radius_m)
    return {**source, 'evaluated': 'filtered hands' if args.filter else 'estimator',
            'model': args.model, 'backend': args.backend, 'precision': precision,
            'finder': not args.no_finder, 'views': views, 'refine_passes': refine_passes,
            'redetect_interval': args.redetect_interval,
            'filter_params': filter_params if args.filter else None, **result}


def frames_of(args, color=False):
    """
    Return the labelled frames the arguments name (a new iterable on each call).

    :param color: with colour images, for a network with a colour input.
    """
    return evaluation.labelled_frames(args.dataset, args.root, args.frames, seed=args.seed,
                                      camera=args.camera, scene=args.scene,
                                      reader_options=parse_options(args.option, args.dataset),
                                      color=color)


def model_localizer(args):
    """Return the localiser of the --model card (fused with its finder unless --no-finder)."""
    from hand_pose_ros.core import model_io
    from hand_pose_ros.core.estimator import card_localizer, resolve_card
    from hand_pose_ros.core.localizer import LocalizerConfig

    card_path = resolve_card(args.model)
    card = model_io.read_card(card_path)
    return card_localizer(card_path, card, LocalizerConfig(**card.get('localizer', {})),
                          use_finder=not args.no_finder)


def fit_hand_score(args, radius_m):
    """
    Fit the model's localiser fusion (when it has a finder) and hand score; write both.

    The fusion is fitted first, so the hand score learns from the candidates the fitted
    localiser ranks first.
    """
    from hand_pose_ros.core import model_io
    from hand_pose_ros.core.estimator import load_estimator, resolve_card, SPARE_CANDIDATES
    from hand_pose_ros.core.hand_finder import FUSION_FEATURES

    card_path = resolve_card(args.model)
    card = model_io.read_card(card_path)
    fitted_on = {'dataset': args.dataset, 'root': args.root, 'seed': args.seed,
                 'scene': args.scene, 'frames': args.frames,
                 'match_radius_mm': args.match_radius_mm}
    result = {'evaluated': 'hand score', 'card': str(card_path)}
    if 'finder' in card and not args.no_finder:
        weights, counts = evaluation.fit_fusion(model_localizer(args), frames_of(args),
                                                radius_m)
        card['finder']['fusion_weights'] = [float(w) for w in weights]
        card['finder']['fusion_fitted_on'] = {**fitted_on, **counts}
        model_io.write_card(card_path, card)
        result['fusion'] = dict(zip(FUSION_FEATURES, card['finder']['fusion_weights']))
    # Learn from the localiser's own scores, on every candidate a scored estimator sees, and
    # from one view: the estimator scores hands before it runs their other views.
    estimator = load_estimator(card_path, backend=args.backend,
                               max_hands=args.max_hands + SPARE_CANDIDATES, min_hand_score=0.0,
                               use_finder=not args.no_finder, views=1,
                               precision=args.precision)
    estimator.hand_score = None
    score, counts = evaluation.fit_hand_score(estimator,
                                              frames_of(args, 'color' in estimator.input_names),
                                              radius_m)
    card = model_io.read_card(card_path)
    # The precision matters: an INT8 copy's confidences sit a little below the float ones.
    precision = running_precision(estimator, args)
    card['hand_score'] = {**dataclasses.asdict(score),
                          'fitted_on': {**fitted_on, **counts, 'precision': precision}}
    model_io.write_card(card_path, card)
    return {**result, 'hand_score': card['hand_score']}


def format_breakdown(breakdown):
    """Return the lines that say where the error is (see ``evaluation.error_breakdown``)."""
    if not breakdown:
        return []

    def group(values):
        return f'{mm(values["mean_mm"])} ({values["hands"]})'

    def bins(rows, unit):
        return ', '.join(f'{low:g}{"+" if high is None else f"-{high:g}"}{unit} {group(row)}'
                         for row in rows for low, high in [row['range']])

    lines = [f'error by hand distance (hands): {bins(breakdown["by_distance_m"], " m")}',
             f'hands cut by the image border {group(breakdown["cut_by_border"])}, inside '
             f'{group(breakdown["inside_image"])}']
    if breakdown['worst_share_of_error'] is not None:
        without = breakdown['mean_without_worst_mm']
        lines.append(f'worst {breakdown["worst_fraction"]:.0%} of the hands hold '
                     f'{breakdown["worst_share_of_error"]:.0%} of the error'
                     + (f'; without them {without:.2f} mm' if without is not None else ''))
    if 'visible_joints_mm' in breakdown:
        lines.append(
            f'visible joints {mm(breakdown["visible_joints_mm"])}, hidden joints '
            f'{mm(breakdown["hidden_joints_mm"])} '
            f'({breakdown["hidden_joint_fraction"]:.0%} hidden); by visible share: '
            f'{bins(breakdown["by_visible_fraction"], "")}')
    return lines


def running_precision(estimator, args):
    """Return the precision the estimator's network runs in (what ``--precision`` became)."""
    return getattr(estimator.backend, 'precision', args.precision)


def parse_options(items, dataset=None):
    """
    Turn ['key=value', ...] into reader keyword arguments (see :func:`parse_assignment`).

    :param dataset: a reader name: options that reader does not take are refused.
    :raises ValueError: naming the bad item, or the options the reader takes.
    """
    options = dict(parse_assignment(item, '--option') for item in items)
    if dataset is not None:
        from hand_pose_ros.core.datasets import READERS

        accepted = list(inspect.signature(READERS[dataset]).parameters)[1:]  # after root
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f'--option {", ".join(unknown)}: the {dataset} reader takes '
                             f'{", ".join(accepted) or "no options"}')
    return options


def mm(value):
    """Return a length in millimetres as text ('n/a' for None)."""
    return 'n/a' if value is None else f'{value:.2f} mm'


def format_result(result):
    """Return a short human-readable summary of a result dict."""
    if result['evaluated'] == 'hand score':
        fitted = result['hand_score']
        fusion = ', '.join(f'{k} {v:.3f}' for k, v in result.get('fusion', {}).items())
        return ((f'localiser fusion fitted: {fusion}\n' if fusion else '')
                + f'hand score fitted on {fitted["fitted_on"]["hands"]} hands and '
                f'{fitted["fitted_on"]["false_hands"]} false hands: bias {fitted["bias"]:.3f}, '
                f'localizer_weight {fitted["localizer_weight"]:.3f}, joint_weight '
                f'{fitted["joint_weight"]:.3f}; wrote {result["card"]}')
    lines = [f'{result["evaluated"]} on {result["dataset"]}: {result["frames"]} frames']
    rate = result.get('detection_rate')
    lines.append('detection rate: ' + ('n/a' if rate is None else f'{rate * 100:.2f} %')
                 + f' (match radius {result["match_radius_mm"]:.0f} mm), '
                 f'false positives: {result["false_positives"]}')
    if result.get('hands_skipped_outside_image'):
        lines.append(f'hands not counted (unlabelled, or centre outside the image): '
                     f'{result["hands_skipped_outside_image"]}'
                     + (f', {result["found_skipped_hands"]} of them found (not counted as '
                        f'false positives)' if result.get('found_skipped_hands') else ''))
    if result.get('detection_rate_mostly_visible') is not None:
        lines.append(f'detection rate, hands with >= half their joints visible: '
                     f'{result["detection_rate_mostly_visible"] * 100:.2f} % '
                     f'({result["hands_mostly_visible"]} hands)')
    center = result.get('center_error_mm')
    if center:
        lines.append(f'centre error: mean {mm(center["mean"])}, median {mm(center["median"])},'
                     f' p90 {mm(center["p90"])}')
    if result.get('redetect_interval', 1) != 1:
        lines.append(f'hands followed, searched for every {result["redetect_interval"]} '
                     f'frames: localiser run on {result["localized_fraction"] * 100:.1f} % of '
                     f'the frames')
    if result['evaluated'] == 'filtered hands':
        lines.append('hands published by the filter'
                     + ''.join(f', {k}={v}' for k, v in result['filter_params'].items()))
    if result['evaluated'] in ('estimator', 'filtered hands'):
        lines.append(f'mean 3D error: {mm(result["mean_mm"])} (median '
                     f'{mm(result["median_mm"])}), center {result["center_mode"]}, '
                     f'{result["views"]} view(s), {result["refine_passes"]} re-centring '
                     f'pass(es), {result["precision"]}')
        if result['dataset'] in PARTIAL_LAYOUTS:
            layout = skeleton.LAYOUTS[PARTIAL_LAYOUTS[result['dataset']]]
            lines.append(f'(over the {int(layout.canonical_mask.sum())} of its '
                         f'{layout.num_joints} evaluation joints that have a place in the '
                         f'21-joint order: not the {layout.num_joints}-joint mean papers '
                         f'report)')
        curve = result['success_curve']
        at = dict(zip(curve['thresholds_mm'], curve['fraction']))
        lines.append('success frames: ' + ', '.join(
            f'{t:g} mm {at[t] * 100:.1f} %' for t in (20.0, 40.0, 80.0) if at.get(t) is not None))
        lines.extend(format_breakdown(result['breakdown']))
        lines.append('timings (ms): ' + ', '.join(
            f'{k} {v:.2f}' for k, v in result['timings_ms'].items() if v is not None))
    else:
        lines.append(f'locate: mean {result["locate_ms"]["mean"]:.2f} ms'
                     if result.get('locate_ms') else 'locate: n/a')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
