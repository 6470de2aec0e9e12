"""
Inference backends behind one interface: ``backend(batch) -> {'joints', 'confidence'}``.

Each backend takes a model card (``.yaml``) or, for the ONNX based ones, an ``.onnx`` file;
``batch`` is a (B, C, S, S) float32 array of crops (or a dict of arrays for multi-input
models), B hands in one call. Outputs: 'joints' (B, J, 3) and 'confidence' (B, J) float32,
as defined by the model contract in :mod:`hand_pose_ros.core.models`.

``create_backend('auto', ...)`` picks TensorRT when it imports and CUDA is usable, else
ONNX Runtime (its CUDA provider when installed, else CPU), and logs the choice once.
Importing this package loads none of torch, onnxruntime or tensorrt.
"""

import inspect
import logging

from hand_pose_ros.core.backends.base import BackendUnavailableError, log_once
from hand_pose_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend
from hand_pose_ros.core.backends.tensorrt_backend import tensorrt_available, TensorRTBackend
from hand_pose_ros.core.backends.torch_backend import TorchBackend

LOGGER = logging.getLogger(__name__)

BACKENDS = {
    'onnxruntime': OnnxRuntimeBackend,
    'torch': TorchBackend,
    'tensorrt': TensorRTBackend,
}
BACKEND_NAMES = ('auto', *BACKENDS)
# The third-party packages each backend imports, and how to get them.
_PACKAGES = {'onnxruntime': ('onnxruntime', 'onnx'), 'torch': ('torch', 'onnx'),
             'tensorrt': ('tensorrt', 'torch', 'onnx')}
_INSTALL = {'onnxruntime': 'pip install onnxruntime onnx',
            'torch': "pip install torch onnx, the [train] extra of the package's setup.py",
            'tensorrt': "TensorRT's Python bindings come with JetPack or NVIDIA's wheels"}


def resolve_backend_name(name):
    """Return the concrete backend name for ``name`` ('auto' resolved, logged once)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f'unknown backend {name!r}; choose one of {list(BACKEND_NAMES)}')
    if name != 'auto':
        return name
    available, reason = tensorrt_available()
    if available:
        log_once(logging.INFO, 'backend auto: using tensorrt')
        return 'tensorrt'
    log_once(logging.INFO, 'backend auto: tensorrt not usable (%s); using onnxruntime', reason)
    return 'onnxruntime'


def create_backend(name, model_path, **options):
    """
    Create a backend by name.

    :param name: 'auto', 'onnxruntime', 'torch' or 'tensorrt'.
    :param model_path: model card (``.yaml``) or ONNX file (ONNX based backends).
    :param options: keyword options of the backend class (threads, device, precision,
        cache_dir, force_rebuild, ...). Options the chosen class does not take are dropped
        (logged once), so one option set (e.g. a node's parameters) serves every backend;
        an option no backend takes (a misspelling) raises ValueError.
    :return: a callable backend.
    """
    concrete = resolve_backend_name(name)
    known = set().union(*(inspect.signature(other.__init__).parameters
                          for other in BACKENDS.values())) - {'self', 'model_path'}
    unknown = sorted(set(options) - known)
    if unknown:   # a misspelt option (precison=) would otherwise be dropped unseen
        raise ValueError(f'unknown backend option(s) {unknown}; the backends take '
                         f'{sorted(known)}')
    try:
        return _construct(concrete, model_path, options)
    except BackendUnavailableError as error:
        if name != 'auto' or concrete == 'onnxruntime':
            raise
        # auto chose TensorRT because it imports; it may still be unable to build this
        # engine (a precision it lacks): ONNX Runtime runs the model instead.
        LOGGER.warning('backend auto: %s; using onnxruntime', error)
        return _construct('onnxruntime', model_path, options)


def _construct(concrete, model_path, options):
    """Return backend ``concrete`` built with the options it takes (others dropped)."""
    cls = BACKENDS[concrete]
    accepted = set(inspect.signature(cls.__init__).parameters)
    dropped = sorted(set(options) - accepted)
    if dropped:
        log_once(logging.INFO, 'backend %s ignores options %s', concrete, dropped)
    options = {k: v for k, v in options.items() if k in accepted}
    try:
        return cls(model_path, **options)
    except ImportError as error:
        if error.name not in _PACKAGES[concrete]:
            raise  # not a missing package of the backend: a bug to show whole
        raise BackendUnavailableError(
            f'backend {concrete} cannot run here: {error} ({_INSTALL[concrete]})') from error


__all__ = ['BACKEND_NAMES', 'BACKENDS', 'BackendUnavailableError', 'OnnxRuntimeBackend',
           'TensorRTBackend', 'TorchBackend', 'create_backend', 'resolve_backend_name']
