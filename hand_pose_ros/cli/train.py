"""
hand_pose_train: train a depth hand pose network, resume a run, or ship a checkpoint.

Examples::

    hand_pose_train --config config/train_default.yaml            # start (or --resume)
    hand_pose_train --config config/train_default.yaml --steps 500 --set model_cfg.width=0.5
    hand_pose_train --config config/train_default.yaml --benchmark   # throughput figures
    # a checkpoint as a model: safetensors + model card + ONNX (--overwrite replaces a card)
    hand_pose_train --write-model runs/default/checkpoint_best.pt --model-dir runs/cand --name mine
"""

import argparse
import logging
import signal
import sys

from hand_pose_ros.cli.options import fail, parse_assignment
from hand_pose_ros.core import training
from hand_pose_ros.core.crop import VIEW_SETS

# Flags that override top-level config fields: (flag, field, type).
OVERRIDES = (
    ('--output-dir', 'output_dir', str),
    ('--model', 'model', str),
    ('--steps', 'steps', int),
    ('--batch-size', 'batch_size', int),
    ('--lr', 'lr', float),
    ('--seed', 'seed', int),
    ('--device', 'device', str),
    ('--render-workers', 'render_workers', int),
    ('--augment-workers', 'augment_workers', int),
    ('--pool-size', 'pool_size', int),
    ('--checkpoint-every', 'checkpoint_every', int),
    ('--eval-frames', 'eval_frames', int),
    ('--num-threads', 'num_threads', int),
)


def build_parser():
    """Return the argument parser."""
    parser = argparse.ArgumentParser(
        prog='hand_pose_train', description=__doc__.strip().split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', help='training config YAML (fields of TrainConfig)')
    for flag, name, kind in OVERRIDES:
        parser.add_argument(flag, dest=name, type=kind, help=f'override config {name}')
    parser.add_argument('--set', dest='assignments', action='append', default=[],
                        metavar='KEY=VALUE',
                        help='override any config field; dotted keys reach into mappings '
                             '(e.g. model_cfg.width=0.5, crop.input_size=128); VALUE is YAML')
    parser.add_argument('--resume', action='store_true',
                        help='continue from <output_dir>/checkpoint_last.pt')
    parser.add_argument('--write-model', metavar='CHECKPOINT',
                        help='instead of training, ship CHECKPOINT as a model '
                             '(safetensors + model card + ONNX)')
    parser.add_argument('--model-dir', default='models', help='output folder of --write-model')
    parser.add_argument('--name', default='default', help='model name of --write-model')
    parser.add_argument('--views', type=int, default=1, choices=sorted(VIEW_SETS),
                        help='test-time views the written model uses by default '
                             '(card inference.views)')
    parser.add_argument('--refine-passes', type=int, default=1,
                        help='re-centring passes per found hand the written model makes by '
                             'default (card inference.refine_passes)')
    parser.add_argument('--overwrite', action='store_true',
                        help='let --write-model replace an existing card of that name (the '
                             'defaults name the shipped models/default.yaml)')
    parser.add_argument('--no-onnx', action='store_true', help='skip the ONNX export')
    parser.add_argument('--benchmark', action='store_true',
                        help='instead of training, print render, augmentation and training '
                             'throughput of the config on this machine')
    return parser


def apply_assignment(values, assignment):
    """Apply one ``key.sub=value`` override (value parsed as YAML) to a config dict."""
    key, value = parse_assignment(assignment, '--set')
    parts = key.split('.')
    if not all(parts):
        raise ValueError(f'--set key {key!r} is malformed')
    target = values
    for part in parts[:-1]:
        current = target.get(part)
        if current is None:
            current = {}
        elif not isinstance(current, dict):
            raise ValueError(f'--set {key}: {part!r} is not a mapping')
        target[part] = dict(current)
        target = target[part]
    target[parts[-1]] = value


def config_from_args(args):
    """Build the :class:`TrainConfig` of the parsed arguments."""
    values = training.TrainConfig().to_dict()
    if args.config:
        values.update(training.TrainConfig.from_yaml(args.config).to_dict())
    for _, name, _ in OVERRIDES:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    for assignment in args.assignments:
        apply_assignment(values, assignment)
    return training.TrainConfig.from_dict(values)


def main(argv=None):
    """Run the command line tool; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    # `kill PID` stops like Ctrl-C: render workers are shut down, the last checkpoint stays.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.write_model:
            card = training.write_model(args.write_model, args.model_dir, args.name,
                                        export_onnx=not args.no_onnx, views=args.views,
                                        refine_passes=args.refine_passes,
                                        overwrite=args.overwrite)
            print(f'wrote model card {card}')
            return 0
        config = config_from_args(args)
        if args.benchmark:
            figures = training.benchmark(config)
            print(f"render {figures['render_crops_per_s']:.1f} context crops/s (1 process), "
                  f"augment {figures['augment_ms_per_batch']:.1f} ms/batch, train step "
                  f"{figures['train_step_ms']:.1f} ms = {figures['train_samples_per_s']:.1f} "
                  f"samples/s on {figures['device']} (batch {config.batch_size})")
            return 0
        print(f'training {config.model} {config.model_cfg} on {config.data["type"]} data '
              f'into {config.output_dir} ({config.steps} steps, batch {config.batch_size})',
              file=sys.stderr)
        metrics = training.train(config, resume=args.resume)
    except ValueError as error:
        return fail('hand_pose_train', error)
    except KeyboardInterrupt:
        print('\nhand_pose_train: interrupted; continue with --resume', file=sys.stderr)
        return 130
    if metrics:
        print(f'held-out mean 3D error {metrics["mean_mm"]:.2f} mm '
              f'(median {metrics["median_mm"]:.2f} mm)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
