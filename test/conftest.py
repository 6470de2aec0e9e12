"""Shared fixtures: an isolated rclpy context per test on a private, localhost-only domain."""

import os
import random

import pytest

# Keep DDS discovery on this machine and away from other test runs.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_LOCALHOST_ONLY', '1')
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 100)))


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
