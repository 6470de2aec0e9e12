"""Shared fixtures: a private rclpy context per test (localhost-only domain), model cards."""

import fcntl
import os
import shutil
import tempfile

from hypothesis import settings
import pytest

# The fuzz tests draw the same inputs on every run (a failure reproduces);
# `pytest --hypothesis-profile=default` draws new ones, as an exploration.
settings.register_profile('deterministic', derandomize=True, database=None)


def pytest_configure(config):
    """Load the deterministic fuzzing profile unless another one is asked for."""
    if not config.getoption('--hypothesis-profile'):
        settings.load_profile('deterministic')


def _reserve_domain_id():
    """
    Return the first ROS domain (from 101 down) that no other test run on this machine holds.

    The domain's lock file stays locked until this process ends; processes the tests start
    inherit the domain through ``ROS_DOMAIN_ID``.
    """
    for domain in range(101, 0, -1):
        path = os.path.join(tempfile.gettempdir(), f'hand_pose_ros_test_domain_{domain}.lock')
        try:
            handle = open(path, 'a')
        except OSError:   # another user's lock file
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _DOMAIN_LOCKS.append(handle)
        return domain
    raise RuntimeError('every ROS domain from 1 to 101 is held by another test run')


_DOMAIN_LOCKS = []
# Keep DDS discovery on this machine and away from other test runs.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_LOCALHOST_ONLY', '1')
if 'ROS_DOMAIN_ID' not in os.environ:
    os.environ['ROS_DOMAIN_ID'] = str(_reserve_domain_id())


@pytest.fixture
def ros_context():
    """Yield an initialised rclpy context, shut down after the test."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=int(os.environ['ROS_DOMAIN_ID']))
    try:
        yield context
    finally:
        context.try_shutdown()


class Spinner:
    """
    Spin nodes in the background; tests wait on conditions with a deadline.

    Each node spins on its own thread, as in the pipeline
    (:class:`~hand_pose_ros.ros.node_utils.NodeSpinner`).
    """

    def __init__(self, context):
        self.context = context
        self._spinners = {}

    def add(self, node):
        from hand_pose_ros.ros.node_utils import NodeSpinner

        self._spinners[node] = NodeSpinner([node], context=self.context)
        return node

    def spinning(self):
        """Return whether every node still spins: a callback that raised ends its thread."""
        return all(spinner.spinning() for spinner in self._spinners.values())

    def remove(self, node):
        """Destroy one node while the others keep spinning (no callback of it in flight)."""
        self._spinners.pop(node).stop()
        node.destroy_node()

    def wait_for(self, predicate, timeout_s=30.0):
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self):
        for spinner in self._spinners.values():
            spinner.stop()
        for node in self._spinners:
            node.destroy_node()


@pytest.fixture
def spinner(ros_context):
    """Yield a :class:`Spinner` on the test's context; nodes are destroyed afterwards."""
    spin = Spinner(ros_context)
    try:
        yield spin
    finally:
        spin.close()


class Recorder:
    """Collect messages of several topics on one probe node."""

    def __init__(self, node):
        self.node = node
        self.messages = {}

    def listen(self, msg_type, topic, qos=10):
        self.messages[topic] = []
        self.node.create_subscription(msg_type, topic, self.messages[topic].append, qos)
        return self.messages[topic]


@pytest.fixture(scope='session')
def tiny_model_card(tmp_path_factory):
    """
    Return the card of a tiny, untrained A2J (ONNX exported) for plumbing tests.

    Its outputs are real network outputs but not accurate poses: tests using it check
    behaviour (topics, headers, errors), never accuracy.
    """
    import torch

    from hand_pose_ros.core import export, model_io
    from hand_pose_ros.core.crop import CropSpec
    from hand_pose_ros.core.models import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model('a2j', backbone='resnet18', width=0.25, input_size=64,
                        head_channels=16).eval()
    spec = CropSpec(input_size=64, cube_size_m=(0.2, 0.2, 0.3))
    card = model_io.save_model(model, tmp_path_factory.mktemp('tiny_model'), 'tiny',
                               extra={'crop': spec.to_dict()})
    export.export_card(card)
    return card


@pytest.fixture
def bare_card(tmp_path):
    """Return a copy of the default card without its finder (as ``hand_pose_train`` writes)."""
    from hand_pose_ros.core import model_io
    from hand_pose_ros.core.estimator import PACKAGE_MODELS_DIR

    card = model_io.read_card(PACKAGE_MODELS_DIR / 'default.yaml', verify=False)
    for name in card['files']:
        if not name.endswith('_finder.onnx'):
            shutil.copy(PACKAGE_MODELS_DIR / name, tmp_path / name)
    card.pop('finder', None)
    card['files'] = {k: v for k, v in card['files'].items() if not k.endswith('_finder.onnx')}
    model_io.write_card(tmp_path / 'default.yaml', card)
    return tmp_path / 'default.yaml'
