r"""
hand_pose_train_finder: train the learned hand finder, or attach one to a model card.

Examples::

    hand_pose_train_finder --output-dir runs/hand_finder --steps 6000     # (or --resume)
    # export it beside the default model and list it in its card, then fit the fusion
    hand_pose_train_finder --attach runs/hand_finder/checkpoint.pt --model default
    hand_pose_evaluate --dataset synthetic --model default --fit-hand-score --seed 3000 \\
        --frames 1500
    # give a model you trained yourself the shipped finder, then fit its hand score
    hand_pose_train_finder --attach default --model runs/mine/mine.yaml
    hand_pose_evaluate --dataset synthetic --model runs/mine/mine.yaml --fit-hand-score \
        --seed 3000 --frames 1500
"""

import argparse
from dataclasses import fields
import logging
from pathlib import Path
import sys

from hand_pose_ros.cli.options import fail


def finder_training_module():
    """Return :mod:`hand_pose_ros.core.finder_training`, or exit with one line without torch."""
    try:
        from hand_pose_ros.core import finder_training
    except ImportError as error:
        raise SystemExit(fail('hand_pose_train_finder', f'needs PyTorch ({error}); install it '
                              'with pip install torch onnx (the [train] extra: pip '
                              "install '.[train]' in the package's checkout)")) from None
    return finder_training


def build_parser():
    """Return the argument parser."""
    finder_training = finder_training_module()
    parser = argparse.ArgumentParser(
        prog='hand_pose_train_finder', description=__doc__.strip().split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in fields(finder_training.FinderTrainConfig):
        parser.add_argument('--' + field.name.replace('_', '-'), dest=field.name,
                            type=type(field.default), default=field.default,
                            help=f'(default {field.default})')
    parser.add_argument('--resume', action='store_true',
                        help='continue from <output-dir>/checkpoint.pt')
    parser.add_argument('--attach', metavar='CHECKPOINT|CARD',
                        help='instead of training, export a finder checkpoint (.pt) beside '
                             'the --model card and record it there, or copy the finder of '
                             'another model card (a name or a .yaml path)')
    parser.add_argument('--model', default='default', help='model (name or card) of --attach')
    return parser


def main(argv=None):
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    args = build_parser().parse_args(argv)
    finder_training = finder_training_module()
    from hand_pose_ros.core.model_io import ModelFileError

    try:
        if args.attach:
            from hand_pose_ros.core.estimator import resolve_card

            card = resolve_card(args.model)
            if Path(args.attach).suffix == '.pt':
                path = finder_training.attach_finder(args.attach, card)
            else:
                path = finder_training.copy_finder(resolve_card(args.attach), card)
            print(f'wrote {path}; fit the fusion and hand score next: hand_pose_evaluate '
                  f'--dataset synthetic --model {args.model} --fit-hand-score --seed 3000 '
                  f'--frames 1500')
            return 0
        config = finder_training.FinderTrainConfig(**{
            f.name: getattr(args, f.name) for f in fields(finder_training.FinderTrainConfig)})
        path = finder_training.train_finder(config, resume=args.resume)
    except (ValueError, OSError, ModelFileError) as error:
        return fail('hand_pose_train_finder', error)
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
