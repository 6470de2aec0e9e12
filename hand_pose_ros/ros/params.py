"""
Parameter specs: one table per node drives declaration, validation, YAML and README.

Each :class:`ParamSpec` becomes a ROS parameter with a ``ParameterDescriptor`` (description,
range or choices in the description, read-only flag), so rqt shows sliders and rclpy rejects
out-of-range values. Pure functions turn the declared values into core config objects and are
tested without ROS.
"""

from dataclasses import dataclass
import math
from pathlib import Path
import re

from hand_pose_ros.core.backends.base import PRECISIONS
from hand_pose_ros.core.estimator import DEFAULT_MIN_HAND_SCORE, DEFAULT_REDETECT_INTERVAL
from hand_pose_ros.core.filters.config import config_fields as filter_config_fields


@dataclass(frozen=True)
class ParamSpec:
    """
    One node parameter.

    :param name: dotted parameter name, e.g. ``localizer.max_depth_m``.
    :param default: default value; its Python type fixes the parameter type.
    :param description: one line for the descriptor and the README.
    :param value_range: (min, max) for numbers, or None.
    :param choices: allowed values (strings, or numbers without a range), or None.
    :param dynamic: True when the parameter may change at run time.
    """

    name: str
    default: object
    description: str
    value_range: tuple = None
    choices: tuple = None
    dynamic: bool = False

    def check(self, value):
        """Raise ValueError when ``value`` is outside this parameter's range or choices."""
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise ValueError(f'{self.name} must be a bool, got {value!r}')
            return
        if isinstance(self.default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'{self.name} must be a number, got {value!r}')
            if isinstance(self.default, int) and not isinstance(self.default, bool) \
                    and int(value) != value:
                raise ValueError(f'{self.name} must be an integer, got {value!r}')
            if not math.isfinite(value):
                raise ValueError(f'{self.name} must be finite, got {value!r}')
            low, high = self.value_range or (-math.inf, math.inf)
            if not low <= value <= high:
                raise ValueError(f'{self.name}={value} is outside [{low}, {high}]')
            if self.choices is not None and value not in self.choices:
                raise ValueError(f'{self.name}={value} is not one of {list(self.choices)}')
            return
        if not isinstance(value, str):
            raise ValueError(f'{self.name} must be a string, got {value!r}')
        if self.choices is not None and value not in self.choices:
            raise ValueError(f'{self.name}={value!r} is not one of {list(self.choices)}')

    @property
    def constraint_text(self):
        """Return the range or choices as README/descriptor text."""
        if self.value_range is not None:
            return f'[{self.value_range[0]}, {self.value_range[1]}]'
        if self.choices is not None:
            return ', '.join(str(c) for c in self.choices)
        return ''


RELIABILITY = ('best_effort', 'reliable')

COMMON_PARAMS = (
    ParamSpec('diagnostics.period_s', 1.0, 'Period of /diagnostics updates (s).', (0.1, 60.0)),
    ParamSpec('diagnostics.stale_timeout_s', 2.0,
              'Input silence after which diagnostics report ERROR (s).', (0.1, 600.0), None,
              True),
    ParamSpec('input.reliability', 'best_effort',
              'QoS reliability of input subscriptions (best_effort matches both kinds of '
              'publisher).', None, RELIABILITY),
    ParamSpec('input.history_depth', 1, 'QoS history depth of input subscriptions.', (1, 100)),
    ParamSpec('log_throttle_s', 5.0, 'Minimum period between repeated warnings of one kind (s).',
              (0.1, 600.0), None, True),
)

HAND_POSE_NODE_PARAMS = COMMON_PARAMS + (
    ParamSpec('model.name', 'default',
              "Model card: 'default' (shipped), a card name in models/, or a path to a .yaml."),
    ParamSpec('model.backend', 'auto', 'Inference runtime.', None,
              ('auto', 'onnxruntime', 'torch', 'tensorrt')),
    ParamSpec('model.threads', 0, 'CPU threads for the runtime (0 = runtime default).',
              (0, 64)),
    ParamSpec('model.precision', 'auto',
              "'auto': onnxruntime on a CPU runs the card's INT8 copy when it has one (the "
              'default model does), tensorrt and torch on a GPU run fp16; fp32, fp16 (GPU) or '
              'int8 to choose.', None, PRECISIONS),
    ParamSpec('model.views', 0,
              'Test-time views per hand crop (turned and mirrored), merged by confidence: 0 = the '
              "model card's choice (default model: 8), 1 = fastest.", None, (0, 1, 2, 4, 8)),
    ParamSpec('model.refine_passes', -1,
              'Re-centring passes per found hand, each cropping again at the joint centroid '
              "of the last: -1 = the model card's choice (default model: 2), 0 = fastest.",
              (-1, 5)),
    ParamSpec('model.cache_dir', '', 'TensorRT engine cache (empty = '
              '$XDG_CACHE_HOME/hand_pose_ros/engines, ~/.cache when unset).'),
    ParamSpec('model.force_engine_rebuild', False, 'Rebuild the TensorRT engine at start-up.'),
    ParamSpec('localizer.max_hands', 2, 'Largest number of hands reported per frame.', (1, 8),
              None, True),
    ParamSpec('localizer.min_hand_score', DEFAULT_MIN_HAND_SCORE,
              "Drop found hands whose hand score (model card's hand_score) is lower.",
              (0.0, 1.0), None, True),
    ParamSpec('localizer.redetect_interval', DEFAULT_REDETECT_INTERVAL,
              'Frames from one hand search to the next while hands are followed (each '
              'followed hand is cropped where it was, and searched for at once when its hand '
              'score fails); 1 = search every frame.', (1, 1000), None, True),
    ParamSpec('localizer.use_finder', True,
              "Fuse the model's learned hand finder (card section finder) with the geometric "
              'localiser; false: geometric localiser alone.'),
    ParamSpec('localizer.min_depth_m', 0.15, 'Nearest depth searched for hands (m).',
              (0.05, 5.0), None, True),
    ParamSpec('localizer.max_depth_m', 1.6, 'Farthest depth searched for hands (m).',
              (0.1, 10.0), None, True),
    ParamSpec('input.max_pixels', 4096 * 2160, 'Largest accepted image (width x height).',
              (1, 10 ** 8)),
    ParamSpec('camera_info.max_stamp_diff_s', 0.0,
              'Largest stamp difference for pairing image and camera_info (0 = exact); '
              'otherwise the latest info is used.', (0.0, 1.0), None, True),
    ParamSpec('color.max_stamp_diff_s', 0.02,
              'Largest stamp difference for pairing a depth image with its colour image '
              '(models with a colour input only); frames without one are skipped.',
              (0.0, 1.0), None, True),
    ParamSpec('color.wait_s', 0.1,
              'Longest wait for the colour image of a depth frame that arrived first (s).',
              (0.0, 1.0), None, True),
    ParamSpec('debug_image.scale', 1.0, 'Scale of the debug overlay image.', (0.1, 2.0), None,
              True),
)

SYNTHETIC_CAMERA_PARAMS = (
    ParamSpec('rate_hz', 30.0, 'Publishing rate (Hz).', (0.1, 240.0)),
    ParamSpec('camera', 'sr300', 'Camera model preset.', None,
              ('sr300', 'nyu', 'icvl', 'msra', 'd435_640x480', 'd435_848x480')),
    ParamSpec('frame_id', 'camera_depth_optical_frame', 'frame_id of published images.'),
    ParamSpec('seed', 0, 'Random seed of the synthetic scene and motion.', (0, 2 ** 31 - 1)),
    ParamSpec('sequence_frames', 300, 'Frames per synthetic motion sequence before it loops.',
              (2, 100000)),
    ParamSpec('publish_color', False, 'Also publish color/image_raw (rgb8).'),
    ParamSpec('max_speed_m_s', 1.5, 'Highest hand speed of the synthetic motion (m/s).',
              (0.0, 5.0)),
)

# How hand_filter_node names its TF frames (see messages.hand_frame_labels).
TF_NAMES = ('id', 'side')

OUTPUT_PARAMS = (
    ParamSpec('output.tf_prefix', '', 'Prefix of published TF frames (<prefix>hand_<id>...); '
              'give each camera its own (e.g. cam1/) when several publish on one /tf.'),
    ParamSpec('output.publish_tf', True, 'Publish a TF frame per hand and joint on /tf.', None,
              None, True),
    ParamSpec('output.tf_names', 'id',
              'TF frame names: id (<prefix>hand_<id>, a new name for each new track) or side '
              '(<prefix>left_hand, <prefix>right_hand for the hands joint_states names by side, '
              'hand_<id> for others: stable names, e.g. with filter.handedness.assume).', None,
              TF_NAMES, True),
    ParamSpec('output.marker_lifetime_s', 0.5,
              'Lifetime of markers, so they vanish if the node stops (s); 0 keeps them until '
              'the node deletes them (a lost hand), also after it stops.', (0.0, 60.0), None,
              True),
)


def _filter_specs():
    specs = []
    for name, default, description, low, high, choices in filter_config_fields():
        value_range = (low, high) if low is not None else None
        specs.append(ParamSpec(f'filter.{name}', default, description, value_range,
                               tuple(choices) if choices else None, True))
    return tuple(specs)


HAND_FILTER_NODE_PARAMS = COMMON_PARAMS + OUTPUT_PARAMS + _filter_specs()

# Parameters every rclpy node has, which a parameter file may set for any node.
RCLPY_PARAMETERS = ('use_sim_time', 'start_type_description_service')

NODE_PARAMS = {
    'hand_pose_node': HAND_POSE_NODE_PARAMS,
    'hand_filter_node': HAND_FILTER_NODE_PARAMS,
    'synthetic_camera_node': SYNTHETIC_CAMERA_PARAMS,
}


def defaults(specs):
    """Return {name: default} for a spec table."""
    return {spec.name: spec.default for spec in specs}


def check_values(specs, values):
    """Validate a {name: value} dict against a spec table; raise ValueError if one is bad."""
    by_name = {spec.name: spec for spec in specs}
    for name, value in values.items():
        if name not in by_name:
            raise ValueError(f'unknown parameter {name!r}')
        by_name[name].check(value)


def values_from_file(path, node, namespace=''):
    """
    Return ``node``'s parameter values as a ROS parameter file sets them (defaults elsewhere).

    For tools that read the nodes' file without running the nodes (``hand_pose_process``).
    Sections apply as rcl applies them to a node of that name in ``namespace`` (``''``: the
    root): ``/**``, ``/*/<node>``, ``/**/<node>``, ``<node>`` or ``<namespace>/<node>``, flat
    or nested, later sections over earlier ones. As in rclpy, a value must have its
    parameter's type (``2`` for a float parameter is refused: write ``2.0``); a key the node
    does not declare is refused too, as a typo would be lost otherwise (``use_sim_time``,
    QoS overrides and other rclpy parameters aside).

    :raises ValueError: for an unreadable file, an unknown key or a bad value, naming it.
    """
    import yaml

    specs = NODE_PARAMS[node]
    by_name = {spec.name: spec for spec in specs}
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f'parameter file {path}: {error}') from None
    if not isinstance(document, dict):
        raise ValueError(f'parameter file {path}: not a mapping of node sections')
    namespace = namespace.strip('/')
    full_name = f'/{namespace}/{node}' if namespace else f'/{node}'
    values = defaults(specs)
    for key, section in _node_sections(document):
        key = key.lstrip('/')
        given = section.get('ros__parameters') if isinstance(section, dict) else None
        if not isinstance(given, dict):   # rcl refuses the whole file
            raise ValueError(f'parameter file {path}: section {key} has no ros__parameters '
                             f'mapping')
        if not _section_matches(key, full_name):
            continue
        for name, value in _flatten(given).items():
            if name in RCLPY_PARAMETERS or name.startswith('qos_overrides.'):
                continue
            spec = by_name.get(name)
            try:
                if spec is None:
                    raise ValueError(f'unknown parameter {name!r}')
                if isinstance(spec.default, float) and isinstance(value, str):
                    value = _yaml_float(value)   # 1e-1: a string to PyYAML, a double to rcl
                if isinstance(spec.default, float) and not isinstance(value, float) or \
                        type(spec.default) is int and type(value) is not int:
                    kind = ('a float (2.0, not 2)' if isinstance(spec.default, float)
                            else 'an integer')
                    raise ValueError(f'{name} must be {kind}, as the node declares it, got '
                                     f'{value!r}')
                spec.check(value)
            except ValueError as error:
                raise ValueError(f'parameter file {path}, {key}: {error}') from None
            values[name] = value
    return values


def _node_sections(document, prefix=''):
    """
    Yield (full key, section) of a parameter file's node sections.

    A mapping without ``ros__parameters`` whose entries are all mappings is a namespace
    (``cam1: {hand_pose_node: {ros__parameters: ...}}`` is ``cam1/hand_pose_node``).
    """
    for key, section in document.items():
        name = f'{prefix}/{str(key).strip("/")}'
        if isinstance(section, dict) and section and 'ros__parameters' not in section \
                and all(isinstance(value, dict) for value in section.values()):
            yield from _node_sections(section, name)
        else:
            yield name, section


def _section_matches(key, full_name):
    """Return whether a parameter-file section applies to the node ``full_name``, as rcl."""
    pattern = re.escape('/' + key.strip('/'))
    pattern = pattern.replace(re.escape('/**'), r'(/\w+)*').replace(re.escape('/*'), r'(/\w+)')
    return re.fullmatch(pattern, full_name) is not None


def _yaml_float(text):
    """Return ``text`` as a float where rcl's YAML parser reads a double (``1e-1``)."""
    try:
        return float(text)
    except ValueError:
        return text   # refused by the type check, naming the value


def _flatten(nested, prefix=''):
    flat = {}
    for name, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{name}.'))
        else:
            flat[f'{prefix}{name}'] = value
    return flat


def group(values, prefix):
    """Return {suffix: value} for the parameters under ``prefix.`` (dotted groups)."""
    start = prefix + '.'
    return {name[len(start):]: value for name, value in values.items() if name.startswith(start)}


def markdown_table(specs):
    """Return a README table of a spec table."""
    rows = ['| parameter | default | range / choices | dynamic | description |',
            '| --- | --- | --- | --- | --- |']
    for spec in specs:
        default = repr(spec.default) if isinstance(spec.default, str) else spec.default
        rows.append(f'| `{spec.name}` | `{default}` | {spec.constraint_text} | '
                    f"{'yes' if spec.dynamic else 'no'} | {spec.description} |")
    return '\n'.join(rows)


def yaml_document():
    """Return the ROS parameter YAML of every node's defaults (``config/hand_pose.yaml``)."""
    import yaml

    # '/**/' matches the node in any namespace; a bare name matches only the root one.
    document = {f'/**/{node}': {'ros__parameters': _nest(defaults(specs))}
                for node, specs in NODE_PARAMS.items()}
    header = ('# Default parameters of hand_pose_ros, generated from hand_pose_ros/ros/params.py\n'
              '# (python -m hand_pose_ros.ros.params --yaml). Used by pose.launch.py and\n'
              '# hand_pose_pipeline; copy and edit for your camera. The /**/ before each node\n'
              '# name applies its section in any namespace (namespace:=cam1 and the like).\n')
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def markdown_document():
    """Return the README parameter section: one table per node."""
    parts = []
    for node, specs in NODE_PARAMS.items():
        parts += [f'#### `{node}`', '', markdown_table(specs), '']
    return '\n'.join(parts)


def _nest(flat):
    nested = {}
    for name, value in flat.items():
        *groups, leaf = name.split('.')
        target = nested
        for part in groups:
            target = target.setdefault(part, {})
        target[leaf] = value
    return nested


def main(argv=None):
    """Print the generated YAML (``--yaml``) or README tables (``--markdown``)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument('--yaml', action='store_true')
    which.add_argument('--markdown', action='store_true')
    print(yaml_document() if parser.parse_args(argv).yaml else markdown_document(), end='')


if __name__ == '__main__':
    main()
