"""Shared node plumbing: parameters from specs, QoS, publishing, diagnostics, ``main``."""

import collections
import copy
import functools
import os
import sys
import threading
import time
import traceback

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message

from hand_pose_ros.core.backends.base import BackendUnavailableError
from hand_pose_ros.ros.messages import encoding_matches_rclpy
from hand_pose_ros.ros.params import check_values


def descriptor(spec):
    """Return the ``ParameterDescriptor`` of a :class:`ParamSpec`."""
    text = spec.description
    if spec.choices is not None:
        text += f' Choices: {spec.constraint_text}.'
    desc = ParameterDescriptor(description=text, read_only=not spec.dynamic)
    if spec.value_range is not None and not isinstance(spec.default, bool):
        low, high = spec.value_range
        if isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
        else:
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(low), to_value=float(high), step=0.0)]
    return desc


def declare_parameters(node, specs, on_change=None):
    """
    Declare every spec on ``node`` and return the current values.

    :param on_change: called with the full {name: value} dict after a valid dynamic update;
        it may raise ValueError to reject the update (the core's own validation).
    :return: {name: value} of all parameters, as given at start-up.
    :raises ValueError: when a start-up value (from YAML or the command line) is invalid.
    """
    values = {}
    for spec in specs:
        param = node.declare_parameter(spec.name, spec.default, descriptor(spec))
        values[spec.name] = param.value
    check_values(specs, values)
    state = {'values': values}

    def callback(params):
        ours = {p.name: p.value for p in params if p.name in state['values']}
        if not ours:   # rclpy's own (use_sim_time, the QoS overrides declared later)
            return SetParametersResult(successful=True)
        update = {**state['values'], **ours}
        try:
            check_values(specs, update)
            if on_change is not None:
                on_change(update)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        state['values'] = update
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)
    return values


def input_qos(values):
    """Return the input QoS from ``input.reliability`` and ``input.history_depth``."""
    reliability = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
                   'reliable': ReliabilityPolicy.RELIABLE}[values['input.reliability']]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=values['input.history_depth'],
                      reliability=reliability)


OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                        reliability=ReliabilityPolicy.RELIABLE)


def diagnostic_status(name, hardware_id, level, message, values):
    """Return a ``diagnostic_msgs/DiagnosticStatus`` with key/value pairs."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


@functools.lru_cache(maxsize=1)
def _publish_bytes():
    """Return whether encoded messages go out as bytes (see :func:`publish_encoded`)."""
    if encoding_matches_rclpy():
        return True
    get_logger('hand_pose_ros').warning(
        'this ROS installation serialises messages differently from hand_pose_ros; '
        'outputs are published as message objects (slower)')
    return False


def create_output_publisher(node, msg_type, topic):
    """
    Return an output publisher: ``OUTPUT_QOS``, which ROS's QoS overrides may change.

    ``qos_overrides.<resolved topic>.publisher.<reliability|durability|history|depth>`` in
    the node's parameters (read at start-up; the topic with the node's namespace, e.g.
    ``/cam1/hand_pose/keypoints``) sets the policy, e.g. ``best_effort`` over a lossy link.
    """
    from rclpy.qos_overriding_options import QoSOverridingOptions, QoSPolicyKind

    # rclpy applies the overrides to the profile it is given: each publisher gets its own.
    overrides = QoSOverridingOptions([QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH,
                                      QoSPolicyKind.RELIABILITY, QoSPolicyKind.DURABILITY])
    return node.create_publisher(msg_type, topic, copy.copy(OUTPUT_QOS),
                                 qos_overriding_options=overrides)


def create_encoded_publisher(node, msg_type, topic):
    """
    Return an output publisher (:func:`create_output_publisher`) for encoded messages.

    The check behind :func:`publish_encoded` runs here, at start-up, rather than in the
    first frame's callback.
    """
    _publish_bytes()
    return create_output_publisher(node, msg_type, topic)


def publish_encoded(publisher, data, as_bytes=None):
    """
    Publish a message encoded by :mod:`~hand_pose_ros.ros.messages` (CDR bytes).

    :param as_bytes: publish the bytes as they are (True) or the message rclpy reads from
        them (False); None: bytes where this ROS installation writes every output the same
        way (checked once per process), else the message, with one warning.
    """
    if as_bytes is None:
        as_bytes = _publish_bytes()
    publisher.publish(data if as_bytes else deserialize_message(data, publisher.msg_type))


def start_diagnostics(node, period_s, status):
    """Publish ``status()`` (a ``DiagnosticStatus``) on ``/diagnostics`` every ``period_s``."""
    from diagnostic_msgs.msg import DiagnosticArray

    publisher = node.create_publisher(DiagnosticArray, '/diagnostics', OUTPUT_QOS)

    def publish():
        msg = DiagnosticArray()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.status = [status()]
        publisher.publish(msg)

    return node.create_timer(period_s, publish)


class LogThrottle:
    """
    Throttle repeated log messages per kind, with a period that may change at run time.

    rclpy's own ``throttle_duration_sec`` fixes a call site's period at its first message
    and raises ``ValueError`` when a later call passes another, so it cannot follow the
    dynamic ``log_throttle_s`` parameter; it also throttles by call site, so one frequent
    warning would hide every other one logged from the same line. The caller logs what
    :meth:`message` returns, each severity from a line of its own: rclpy remembers the
    severity of each line that logs and raises when it changes.

    :param clock: ``callable() -> seconds`` (monotonic).
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._last = {}
        self._held = collections.Counter()

    def message(self, key, text, period_s):
        """Return ``text`` to log (saying how many were held back since), or None to hold it."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < period_s:
                self._held[key] += 1
                return None
            self._last[key] = now
            held = self._held.pop(key, 0)
        return f'{text} ({held} more held back)' if held else text


def stamp_ns(header):
    """Return a header's stamp in integer nanoseconds."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


# Configuration errors at start-up, reported in one line: bad values (ours or rclpy's range
# and type checks on declared parameters), missing or corrupted model files.
STARTUP_ERRORS = (ValueError, OSError, ParameterException, BackendUnavailableError)


def exit_process(code):
    """
    End a node's process with ``code`` once everything of ours has stopped.

    rclpy's C++ state (its signal-handling thread, the DDS participants) is otherwise torn
    down by static destructors at interpreter exit; after a Ctrl-C that teardown races and
    can abort the process ("terminate called without an active exception", exit -6; see
    ros2/rclpy#1484). The nodes are destroyed and rclpy shut down by now, so the process
    flushes its output and leaves without it.
    """
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(node_class, args=None):
    """
    Run one node until shutdown (Humble-compatible ``main`` form).

    A configuration error at start-up (bad parameter, missing or corrupted model file)
    ends the program with one clear line and exit code 1 instead of a traceback.
    """
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = node_class()
        except STARTUP_ERRORS as error:
            print(f'{node_class.__name__}: error: {error}', file=sys.stderr)
            return 1
        # An error while it runs is a bug, not a configuration: its traceback is printed.
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


class NodeSpinner:
    """
    Spin several nodes in one process: each on its own single-threaded executor and thread.

    A node's callbacks run one at a time, as under ``ros2 run``, and the nodes run side by
    side, as separate processes would. Stopping is clean. rclpy's ``MultiThreadedExecutor``
    is not: its ``shutdown`` destroys its guard condition before the handlers still queued
    in its thread pool have started, and each of them then fails on it ("The following
    exception was never retrieved: cannot use Destroyable ..." at exit).

    :param nodes: nodes to spin (destroying them stays with the caller, after :meth:`stop`).
    :param context: their rclpy context (default: the global one).
    """

    def __init__(self, nodes, context=None):
        import threading

        from rclpy.executors import SingleThreadedExecutor

        self._running = True
        self.errors = []
        self._executors = []
        self._threads = []
        for node in nodes:
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            thread = threading.Thread(target=self._spin, args=(executor,),
                                      name=f'spin {node.get_name()}', daemon=True)
            self._executors.append(executor)
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def _spin(self, executor):
        try:
            while self._running and executor.context.ok():
                executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass
        except Exception:  # noqa: B902 - kept for wait()'s caller; the node stops spinning
            # A callback in flight when the context shuts down (Ctrl-C) fails to publish: that
            # is the shutdown, not an error of the node.
            if self._running and executor.context.ok():
                error = f'{threading.current_thread().name}: {traceback.format_exc()}'
                print(error, file=sys.stderr, flush=True)   # as an uncaught one would be
                self.errors.append(error)

    def spinning(self):
        """Return whether every node still spins: a callback that raised ends its thread."""
        return all(thread.is_alive() for thread in self._threads)

    def wait(self):
        """
        Block until the context shuts down (Ctrl-C), :meth:`stop` is called, or a node stops.

        A node stops when one of its callbacks raises; :attr:`errors` holds the traceback.
        """
        while self._threads and self.spinning():
            self._threads[0].join(timeout=0.2)

    def stop(self, timeout_s=10.0):
        """Stop spinning: callbacks in progress finish first; then shut the executors down."""
        self._running = False
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        for executor in self._executors:
            executor.shutdown()
