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
    assert set(document) == set(NODE_PARAMS)


def test_readme_parameter_tables_are_generated_from_specs():
    assert markdown_document() in (ROOT / 'README.md').read_text()


def launch_nodes():
    tree = ast.parse((ROOT / 'launch' / 'pose.launch.py').read_text())
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', None) == 'Node':
            yield {kw.arg: kw.value for kw in call.keywords}


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
        names = {s.name for s in NODE_PARAMS[executable]}
        for item in node['parameters'].elts:
            if isinstance(item, ast.Dict):
                for key in item.keys:
                    assert ast.literal_eval(key) in names
    assert {'hand_pose_node', 'hand_filter_node', 'synthetic_camera_node'} <= seen
