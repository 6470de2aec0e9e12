"""Every module the package imports is declared where rosdep and pip look for it."""

import ast
from pathlib import Path
import sys
import xml.etree.ElementTree as ET

ROOT = Path(__file__).resolve().parents[1]

# Python modules whose rosdep key differs from the module name (keys checked against
# ros/rosdistro rosdep/python.yaml).
ROSDEP_KEYS = {
    'numpy': 'python3-numpy',
    'scipy': 'python3-scipy',
    'yaml': 'python3-yaml',
    'PIL': 'python3-pil',
    'onnxruntime': 'python3-onnxruntime-pip',
}
# Modules without a rosdep key: pip installs them (README, "Using it in a ROS 2 workspace"),
# or they come with another package: those of COMES_WITH with the package named there,
# tensorrt with JetPack or NVIDIA's TensorRT wheels.
COMES_WITH = {'google': 'onnx', 'apsw': 'rosbags'}
WITHOUT_KEY = {'safetensors', 'torch', 'onnx', 'rosbags', 'tensorrt', *COMES_WITH}


def imported_modules(paths):
    """Return the top-level names of the absolute imports in the given Python files."""
    modules = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split('.')[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split('.')[0])
    return modules - set(sys.stdlib_module_names) - {'hand_pose_ros'}


def declared(kind):
    """Return the package.xml entries of one dependency kind (e.g. 'exec_depend')."""
    root = ET.parse(ROOT / 'package.xml').getroot()
    return {element.text for element in root.iter(kind)}


def test_run_time_imports_have_a_rosdep_key_or_are_documented_pip_installs():
    code = [*(ROOT / 'hand_pose_ros').rglob('*.py'), *(ROOT / 'launch').glob('*.py')]
    exec_depends = declared('exec_depend')
    missing = sorted(
        module for module in imported_modules(code) - WITHOUT_KEY
        if ROSDEP_KEYS.get(module, module) not in exec_depends)
    assert not missing, f'imported but not an exec_depend of package.xml: {missing}'


def test_keyless_run_time_requirements_are_pip_requirements():
    setup = ast.parse((ROOT / 'setup.py').read_text())
    calls = [node for node in ast.walk(setup)
             if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'setup']
    keywords = {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords
                if k.arg in ('install_requires', 'extras_require')}
    pip_names = set(keywords['install_requires'])
    pip_names |= {name for extra in keywords['extras_require'].values() for name in extra}
    assert WITHOUT_KEY - {'tensorrt', *COMES_WITH} <= pip_names
    assert set(COMES_WITH.values()) <= pip_names
    assert {'onnxruntime', 'safetensors'} <= set(keywords['install_requires'])
