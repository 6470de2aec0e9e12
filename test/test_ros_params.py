"""Parameter specs, generated YAML/README, and the launch file checked statically."""

import ast
from importlib.metadata import distribution
from pathlib import Path

import pytest
import yaml

from hand_pose_ros.ros.params import (check_values, defaults, group, markdown_document,
                                      NODE_PARAMS, ParamSpec, yaml_document)

ROOT = Path(__file__).resolve().parents[1]


def test_spec_check_rejects_bad_values():
    spec = ParamSpec('filter.one_euro.beta', 3.0, 'x', (0.0, 100.0))
    spec.check(4)
    for bad, message in ((-1.0, 'outside'), ('x', 'number'), (float('nan'), 'finite'),
                         (True, 'number')):
        with pytest.raises(ValueError, match=message):
            spec.check(bad)
    choice = ParamSpec('model.backend', 'auto', 'x', None, ('auto', 'torch'))
    with pytest.raises(ValueError, match='not one of'):
        choice.check('cuda')
    with pytest.raises(ValueError, match='integer'):
        ParamSpec('n', 2, 'x', (1, 8)).check(2.5)
    with pytest.raises(ValueError, match='unknown parameter'):
        check_values(NODE_PARAMS['hand_pose_node'], {'nope': 1})


def test_defaults_are_valid_and_groups_split():
    for specs in NODE_PARAMS.values():
        check_values(specs, defaults(specs))
        names = [s.name for s in specs]
        assert len(names) == len(set(names))
    values = defaults(NODE_PARAMS['hand_filter_node'])
    assert group(values, 'filter')['one_euro.min_cutoff_hz'] > 0


def test_config_yaml_is_generated_from_specs():
    assert (ROOT / 'config' / 'hand_pose.yaml').read_text() == yaml_document()
    document = yaml.safe_load(yaml_document())
    assert set(document) == {f'/**/{node}' for node in NODE_PARAMS}


def test_the_yaml_applies_to_nodes_in_any_namespace(ros_context, tmp_path):
    from hand_pose_ros.ros.hand_filter_node import HandFilterNode

    document = yaml.safe_load(yaml_document())
    section = document['/**/hand_filter_node']['ros__parameters']
    section['output']['tf_prefix'] = 'left/'
    section['filter']['one_euro']['beta'] = 7.5
    path = tmp_path / 'params.yaml'
    path.write_text(yaml.safe_dump(document))
    for namespace in ('', 'cam1', 'robot/left'):
        node = HandFilterNode(context=ros_context, namespace=namespace,
                              cli_args=['--ros-args', '--params-file', str(path)])
        try:
            assert node.get_parameter('output.tf_prefix').value == 'left/', namespace
            assert node.get_parameter('filter.one_euro.beta').value == 7.5, namespace
        finally:
            node.destroy_node()


def test_readme_parameter_tables_are_generated_from_specs():
    assert markdown_document() in (ROOT / 'README.md').read_text()


def launch_nodes():
    tree = ast.parse((ROOT / 'launch' / 'pose.launch.py').read_text())
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', None) == 'Node':
            yield {kw.arg: kw.value for kw in call.keywords}


def launch_overrides():
    """Return {executable: parameter} of the launch arguments that override a parameter."""
    tree = ast.parse((ROOT / 'launch' / 'pose.launch.py').read_text())
    overrides = {}
    for node in launch_nodes():
        value = node.get('parameters')
        if isinstance(value, ast.Call) and getattr(value.func, 'id', None) == 'parameters':
            overrides[ast.literal_eval(node['executable'])] = ast.literal_eval(value.args[3])
    assert any(isinstance(item, ast.FunctionDef) and item.name == 'parameters'
               for item in tree.body)
    return overrides


def test_launch_file_composes_existing_scripts_and_parameters():
    scripts = {ep.name for ep in distribution('hand_pose_ros').entry_points
               if ep.group == 'console_scripts'}
    seen = set()
    for node in launch_nodes():
        package = ast.literal_eval(node['package'])
        executable = ast.literal_eval(node['executable'])
        if package == 'rviz2':
            continue
        assert package == 'hand_pose_ros'
        assert executable in scripts, executable
        seen.add(executable)
    assert {'hand_pose_node', 'hand_filter_node', 'synthetic_camera_node'} <= seen
    # The parameters launch arguments set, when given (backend, tf_prefix), exist in the
    # node they are given to.
    overrides = launch_overrides()
    assert overrides == {'hand_pose_node': 'model.backend',
                         'hand_filter_node': 'output.tf_prefix'}
    for executable, name in overrides.items():
        assert name in {s.name for s in NODE_PARAMS[executable]}, (executable, name)
    # Every node, RViz included, follows the use_sim_time argument.
    for node in launch_nodes():
        given = node['parameters']
        if isinstance(given, ast.Call):   # parameters(...), which adds use_sim_time
            continue
        keys = {ast.literal_eval(key) for item in given.elts if isinstance(item, ast.Dict)
                for key in item.keys}
        assert 'use_sim_time' in keys, ast.literal_eval(node['executable'])
    tree = ast.parse((ROOT / 'launch' / 'pose.launch.py').read_text())
    helper = next(item for item in tree.body
                  if isinstance(item, ast.FunctionDef) and item.name == 'parameters')
    assert "'use_sim_time'" in ast.unparse(helper)


def test_readme_lists_every_launch_argument():
    tree = ast.parse((ROOT / 'launch' / 'pose.launch.py').read_text())
    declared = {ast.literal_eval(call.args[0]) for call in ast.walk(tree)
                if isinstance(call, ast.Call)
                and getattr(call.func, 'id', None) == 'DeclareLaunchArgument'}
    readme = (ROOT / 'README.md').read_text()
    table = readme[readme.index('| argument | default | meaning |'):]
    table = table[:table.index('\n\n')]
    listed = {line.split('`')[1] for line in table.splitlines()[2:]}
    assert declared == listed


def test_a_parameter_file_is_read_for_one_node_as_ros_applies_it(tmp_path):
    from hand_pose_ros.ros.params import values_from_file

    path = tmp_path / 'params.yaml'
    path.write_text(
        '/**:\n  ros__parameters:\n    log_throttle_s: 2.5\n    use_sim_time: true\n'
        '/**/hand_pose_node:\n  ros__parameters:\n    localizer:\n      max_hands: 1\n'
        '/cam1/hand_filter_node:\n  ros__parameters:\n    output:\n      tf_prefix: c1/\n')
    pose = values_from_file(path, 'hand_pose_node')
    assert pose['localizer.max_hands'] == 1 and pose['log_throttle_s'] == 2.5
    assert pose['model.name'] == 'default' and 'use_sim_time' not in pose
    # A namespaced section is that namespace's node's only.
    filtered = values_from_file(path, 'hand_filter_node')
    assert filtered['output.tf_prefix'] == '' and filtered['log_throttle_s'] == 2.5
    assert values_from_file(path, 'hand_filter_node', 'cam1')['output.tf_prefix'] == 'c1/'
    assert values_from_file(path, 'hand_filter_node', '/cam2')['output.tf_prefix'] == ''
    # The shipped file gives the defaults.
    assert values_from_file(ROOT / 'config' / 'hand_pose.yaml', 'hand_pose_node') == \
        {spec.name: spec.default for spec in NODE_PARAMS['hand_pose_node']}
    for text, message in (
            ('hand_pose_node:\n  ros__parameters:\n    localizer:\n      max_hands: 0\n',
             r'hand_pose_node: localizer.max_hands=0 is outside'),
            ('hand_pose_node:\n  ros__parameters:\n    model_name: x\n',
             "unknown parameter 'model_name'"),
            ('hand_pose_node: 3\n', 'section hand_pose_node has no ros__parameters'),
            ('hand_pose_node:\n  ros_parameters:\n    log_throttle_s: 1.0\n',
             'section hand_pose_node/ros_parameters has no ros__parameters'),
            # Types as rclpy takes them: an integer parameter refuses 1.0, a float one 2.
            ('hand_pose_node:\n  ros__parameters:\n    localizer:\n      max_hands: 1.0\n',
             'localizer.max_hands must be an integer, as the node declares it, got 1.0'),
            ('hand_pose_node:\n  ros__parameters:\n    log_throttle_s: 2\n',
             r'log_throttle_s must be a float \(2.0, not 2\), as the node declares it, got 2'),
            ('[1, 2]\n', 'not a mapping of node sections')):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            values_from_file(path, 'hand_pose_node')
    with pytest.raises(ValueError, match='missing.yaml'):
        values_from_file(tmp_path / 'missing.yaml', 'hand_pose_node')
    # What rclpy takes as well: QoS overrides, 1e-1 for a float (a string to PyYAML), and
    # sections by namespace pattern.
    path.write_text(
        '/*/hand_filter_node:\n  ros__parameters:\n    log_throttle_s: 1e-1\n'
        '    qos_overrides:\n      /cam1/hand_pose/keypoints:\n        publisher:\n'
        '          reliability: best_effort\n'
        'cam1/hand_filter_node:\n  ros__parameters:\n    output:\n      tf_prefix: c1/\n')
    values = values_from_file(path, 'hand_filter_node', 'cam1')
    assert values['log_throttle_s'] == 0.1 and values['output.tf_prefix'] == 'c1/'
    assert values_from_file(path, 'hand_filter_node')['log_throttle_s'] == 5.0
    # Namespaces nested as mappings, as rcl reads them.
    path.write_text('robot:\n  cam1:\n    hand_filter_node:\n      ros__parameters:\n'
                    '        output:\n          tf_prefix: r1/\n')
    assert values_from_file(path, 'hand_filter_node', 'robot/cam1')['output.tf_prefix'] == 'r1/'
    assert values_from_file(path, 'hand_filter_node', 'cam1')['output.tf_prefix'] == ''


def test_the_rviz_config_shows_topics_the_nodes_publish():
    from hand_pose_ros.ros.hand_filter_node import OUTPUT_TOPICS

    config = yaml.safe_load((ROOT / 'config' / 'pose.rviz').read_text())
    displays = config['Visualization Manager']['Displays']
    shown = {d['Topic']['Value'] for d in displays if 'Topic' in d}
    published = set(OUTPUT_TOPICS.values()) | {'hand_pose/debug_image'}
    assert shown and shown <= published, shown - published
    assert {'hand_pose/keypoints', 'hand_pose/markers', 'hand_pose/palm_pose'} <= shown
