"""
``hand_pose_export``: write ONNX (static and dynamic batch) and optionally TensorRT engines.

Examples::

    hand_pose_export --card models/default.yaml               # ONNX next to the weights
    hand_pose_export --model-dir models --static-batch 1 4    # every card in a directory
    hand_pose_export --card models/default.yaml --int8             # + INT8 copy for the CPU
    hand_pose_export --card models/default.yaml --engine --precision fp16

Every export runs the ONNX checker and compares ONNX Runtime with PyTorch; the exit status
is 1 when an error is above ``--tolerance``. ``--int8`` also writes ``<name>_int8.onnx``,
calibrated on crops rendered like the card's training data (or on ``--calibration-crops``,
e.g. crops of the user's own recordings), and compares its outputs with the float export's
on other such crops (mean error within ``export.INT8_TOLERANCE``).
"""

import argparse
import logging
from pathlib import Path
import sys

from hand_pose_ros.cli.options import fail
from hand_pose_ros.core import export, model_io
from hand_pose_ros.core.backends.tensorrt_backend import DEFAULT_MAX_BATCH


def parse_args(argv=None):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(
        prog='hand_pose_export', description='Export hand pose models to ONNX / TensorRT.')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--card', type=Path, help='model card (<name>.yaml)')
    source.add_argument('--model-dir', type=Path, help='export every model card in DIR')
    parser.add_argument('--out', type=Path, default=None,
                        help='output directory (default: beside each card, and registered in '
                             'the card with its checksum)')
    parser.add_argument('--no-dynamic-batch', dest='dynamic_batch', action='store_false',
                        help='skip the dynamic-batch export')
    parser.add_argument('--static-batch', type=int, nargs='*', default=[], metavar='N',
                        help='also write static-batch exports <name>_b<N>.onnx')
    parser.add_argument('--tolerance', type=float, default=export.DEFAULT_TOLERANCE,
                        help='max abs error allowed between ONNX Runtime and PyTorch')
    parser.add_argument('--int8', action='store_true',
                        help='also write the INT8 copy ONNX Runtime runs on the CPU (beside '
                             'the card; a card with one gets it again on every export)')
    parser.add_argument('--engine', action='store_true',
                        help='build (or refresh) the TensorRT engine of the dynamic export')
    parser.add_argument('--precision', choices=('fp32', 'fp16', 'int8'), default='fp16')
    parser.add_argument('--max-batch', type=int, default=DEFAULT_MAX_BATCH,
                        help='engine max batch (crops)')
    parser.add_argument('--engine-cache', type=Path, default=None,
                        help='engine directory (default $XDG_CACHE_HOME/hand_pose_ros/engines, '
                             '~/.cache when unset)')
    parser.add_argument('--force-engine-rebuild', action='store_true')
    parser.add_argument('--calibration-crops', type=Path, default=None,
                        help='.npy array (N, C, S, S) of normalised crops that calibrate '
                             'the INT8 copy (--int8) and INT8 engines (default: crops rendered '
                             'like the training data)')
    return parser.parse_args(argv)


def load_calibration_crops(path):
    """Return the (N, C, S, S) normalised crops of a .npy file for INT8 engine calibration."""
    import numpy as np

    crops = np.load(path, allow_pickle=False)
    if crops.ndim != 4:
        raise ValueError(f'{path}: calibration crops must be (N, C, S, S), got {crops.shape}')
    return crops


def export_one(card_path, args):
    """Export one card; return True when every comparison is within tolerance."""
    crops = None
    if args.calibration_crops is not None:
        crops = load_calibration_crops(args.calibration_crops)
    results = export.export_card(card_path, args.out, args.dynamic_batch, args.static_batch,
                                 args.tolerance, args.int8, crops if args.int8 else None)
    for result in results:
        print(result.summary())
    if args.engine:
        from hand_pose_ros.core.backends import TensorRTBackend

        # Never from an export that failed its comparison (left as <name>.unchecked.onnx).
        dynamic = [r.path for r in results if isinstance(r, export.ExportResult)
                   and r.dynamic_batch and r.within_tolerance]
        if not dynamic:
            raise ValueError('--engine needs a dynamic-batch export within tolerance')
        # INT8 engines default to the crops the card's INT8 copy was calibrated on: through
        # the card when the export is the one it records (the engine the node builds), else
        # rendered from the card for the export written elsewhere.
        model, batches = dynamic[0], None
        if crops is not None:
            batches = export.calibration_batches(crops, args.max_batch)
        elif args.out is None or Path(args.out).resolve() == Path(card_path).parent.resolve():
            model = card_path
        elif args.precision == 'int8':
            batches = export.card_calibration_batches(card_path, args.max_batch)
        backend = TensorRTBackend(model, args.precision, args.max_batch, args.engine_cache,
                                  args.force_engine_rebuild, batches)
        print(f'TensorRT engine for {dynamic[0]}: {backend.cache_status} '
              f'({args.precision}, max batch {backend.max_batch})')
    return all(result.within_tolerance for result in results)


def main(argv=None):
    """Run the export command line; return the exit status."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    args = parse_args(argv)
    if args.model_dir is not None:
        cards = sorted(p for p in args.model_dir.glob(f'*{model_io.CARD_SUFFIX}'))
        if not cards:
            return fail('hand_pose_export', f'no model cards (*.yaml) in {args.model_dir}')
    else:
        cards = [args.card]
    try:
        # Export every card even when an earlier one is above tolerance.
        verdicts = [export_one(card, args) for card in cards]
    except (ValueError, RuntimeError, OSError) as error:
        return fail('hand_pose_export', error)
    return 0 if all(verdicts) else 1


if __name__ == '__main__':
    sys.exit(main())
