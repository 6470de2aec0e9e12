"""
TensorRT backend: engine built from the exported ONNX, cached on disk, run on CUDA.

Written to the documented ``tensorrt`` Python API and handling the 8.x / 10.x differences:

- network creation: TensorRT 8 needs the EXPLICIT_BATCH flag, 10 has it always (flag 0);
- workspace: ``set_memory_pool_limit`` (8.4+) instead of ``max_workspace_size``;
- execution: the named-tensor API (``num_io_tensors``, ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``; 8.5+ and 10.x) or, on older 8.x, the
  binding API (``set_binding_shape`` and ``execute_async_v2``).

Device memory and the CUDA stream come from PyTorch (no pycuda needed). INT8 uses an
entropy calibrator fed by an iterator of crops (synthetic or recorded), with the
calibration cache kept beside the engine; the convolutions that read the input crop stay in
FP16 (:func:`pin_input_convs`). Engines live in the
:mod:`~hand_pose_ros.core.backends.engine_cache` (rebuilt once when the key changes).
Building takes minutes on a Jetson: do it offline (``hand_pose_export --engine``) or at node
configure time, never inside an image callback.
"""

import hashlib
import json
import logging
from pathlib import Path
import threading

import numpy as np

from hand_pose_ros.core import model_io
from hand_pose_ros.core.backends.base import (
    BackendUnavailableError, input_feeds, onnx_input_shapes, OUTPUT_NAMES, resolve_onnx,
    run_fixed_batch)
from hand_pose_ros.core.backends.engine_cache import EngineCache, EngineKey

LOGGER = logging.getLogger(__name__)
WORKSPACE_BYTES = 1 << 30
# Default largest batch of an engine: the extra test-time views of two hands (the default
# model merges 8 views, so 7 more crops each) go through in one call.
DEFAULT_MAX_BATCH = 16


def tensorrt_available():
    """Return (True, '') when tensorrt imports and CUDA is usable, else (False, reason)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as error:
        return False, f'tensorrt is not installed ({error})'
    # The backend also needs torch (CUDA buffers) and onnx (input shapes): a Jetson can
    # have TensorRT's system bindings without them.
    try:
        import onnx  # noqa: F401
        import torch
    except ImportError as error:
        return False, f'the tensorrt backend needs torch and onnx ({error})'
    if not torch.cuda.is_available():
        return False, 'no CUDA device visible to torch'
    return True, ''


def _major_version(trt):
    return int(trt.__version__.split('.')[0])


def _make_calibrator(trt, torch, batches, input_shapes, batch_size, cache_path):
    """Return an IInt8EntropyCalibrator2 fed from an iterator of crop batches."""

    class CropCalibrator(trt.IInt8EntropyCalibrator2):

        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.buffers = {name: torch.empty((batch_size, *chw), dtype=torch.float32,
                                              device='cuda')
                            for name, _, chw in input_shapes}
            self.count = 0
            self.error = None

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            # TensorRT's bindings swallow a Python exception here (calibration just ends):
            # it is kept and raised once the build returns (build_serialized_engine).
            try:
                batch = next(self.batches)
            except StopIteration:
                LOGGER.info('INT8 calibration used %d batches', self.count)
                return None
            except Exception as error:  # noqa: B902 - re-raised after the build
                self.error = error
                return None
            feeds, size = input_feeds(batch, input_shapes)
            if size > batch_size:
                self.error = ValueError(f'a calibration batch of {size} crops is larger than '
                                        f"the engine's max_batch {batch_size}")
                return None
            for name, array in feeds.items():
                if size < batch_size:
                    array = np.concatenate(
                        [array, np.repeat(array[-1:], batch_size - size, axis=0)])
                self.buffers[name].copy_(torch.from_numpy(array))
            self.count += 1
            return [int(self.buffers[name].data_ptr()) for name in names]

        def read_calibration_cache(self):
            if cache_path.is_file():
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            if self.error is not None:
                return   # scales of a calibration cut short: not for the next build
            try:
                model_io.write_atomic(cache_path, bytes(cache))
            except OSError as error:
                self.error = error

    return CropCalibrator()


def pin_input_convs(trt, network):
    """
    Keep the convolutions that read a network input in FP16; return their names.

    Quantising the normalised depth crop itself to 8 bits costs an INT8 copy most of its
    accuracy, so the ONNX Runtime copy keeps these convolutions in float too
    (:func:`~hand_pose_ros.core.export.input_convs`).
    """
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    pinned = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.CONVOLUTION and layer.get_input(0).name in inputs:
            layer.precision = trt.float16
            layer.set_output_type(0, trt.float16)
            pinned.append(layer.name)
    return pinned


def precision_flags(trt, precision):
    """
    Return the builder flags a precision needs ([] for fp32).

    :raises BackendUnavailableError: a TensorRT without them (TensorRT 11 builds strongly
        typed networks only: the precision comes from the ONNX file, not from flags).
    """
    if precision not in ('fp32', 'fp16', 'int8'):
        raise ValueError(f'TensorRT precision must be fp32, fp16 or int8, got {precision!r}')
    names = {'fp32': [], 'fp16': ['FP16'], 'int8': ['FP16', 'INT8']}[precision]
    missing = [name for name in names if not hasattr(trt.BuilderFlag, name)]
    if missing:
        raise BackendUnavailableError(
            f'TensorRT {trt.__version__} has no {"/".join(missing)} builder flag, so it cannot '
            f'build a {precision} engine from the float ONNX export: use precision fp32 or '
            f'the onnxruntime backend')
    return [getattr(trt.BuilderFlag, name) for name in names]


def build_serialized_engine(onnx_path, key, calibration_batches=None, calibration_cache=None,
                            workspace_bytes=WORKSPACE_BYTES):
    """
    Build a serialized TensorRT engine for an ONNX file and an :class:`EngineKey`.

    :param calibration_batches: iterable of crop batches (arrays or dicts), needed for INT8.
    :param calibration_cache: path of the INT8 calibration cache file.
    :return: engine bytes.
    """
    import tensorrt as trt
    import torch

    flags_of_precision = precision_flags(trt, key.precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if _major_version(trt) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f'TensorRT cannot parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    if hasattr(config, 'set_memory_pool_limit'):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    else:
        config.max_workspace_size = workspace_bytes
    input_shapes = onnx_input_shapes(onnx_path)
    # Tuned for one crop per call (opt batch 1), valid up to max_batch crops.
    profile = builder.create_optimization_profile()
    for name, fixed, chw in input_shapes:
        low = fixed or 1
        high = fixed or key.max_batch
        profile.set_shape(name, (low, *chw), (low, *chw), (high, *chw))
    config.add_optimization_profile(profile)
    fast_fp16 = getattr(builder, 'platform_has_fast_fp16', True)  # deprecated in 10.x
    if key.precision in ('fp16', 'int8') and not fast_fp16:
        LOGGER.warning('this GPU has no fast FP16; TensorRT may fall back to FP32 layers')
    for flag in flags_of_precision:
        config.set_flag(flag)
    calibrator = None
    if key.precision == 'int8':
        if calibration_batches is None:
            raise ValueError('INT8 engines need calibration crops (calibration_batches)')
        pinned = pin_input_convs(trt, network)
        if not pinned:
            LOGGER.warning('INT8 engine: no convolution reads the input directly, so none is '
                           'kept in FP16; the INT8 engine may lose accuracy')
        # 8.2+ and 10.x; older 8.x names the same constraint STRICT_TYPES.
        config.set_flag(getattr(trt.BuilderFlag, 'PREFER_PRECISION_CONSTRAINTS', None)
                        or trt.BuilderFlag.STRICT_TYPES)
        LOGGER.info('INT8 engine: %s kept in FP16 (they read the input crop)', pinned)
        calibrator = _make_calibrator(trt, torch, calibration_batches, input_shapes,
                                      key.max_batch, Path(calibration_cache))
        config.int8_calibrator = calibrator
        # Calibration runs at the profile's opt shape: pin it to the calibrator's batch.
        calibration_profile = builder.create_optimization_profile()
        for name, _, chw in input_shapes:
            shape = (key.max_batch, *chw)
            calibration_profile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(calibration_profile)
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error
    if serialized is None:
        raise RuntimeError(f'TensorRT failed to build an engine for {onnx_path}')
    return bytes(serialized)


def calibration_source(model_path, precision, max_batch, calibration_batches=None):
    """
    Return (batches, fingerprint) of the crops an engine is calibrated on.

    Only INT8 engines are calibrated: other precisions give (None, ''). Given batches are read
    once (kept) and fingerprinted by their values. Without them, a model card's engine is
    calibrated on the crops its ONNX Runtime INT8 copy is (``export.card_calibration``),
    rendered only when the engine is built and fingerprinted by how they are rendered. The
    fingerprint is part of the engine's cache key, so other crops build another engine.

    :raises ValueError: an INT8 engine of an ONNX file without batches, or of a card whose
        INT8 copy was calibrated on crops given to ``hand_pose_export``.
    """
    if precision != 'int8':
        return None, ''
    digest = hashlib.sha256()
    if calibration_batches is not None:
        batches = list(calibration_batches)
        for batch in batches:
            for name, array in sorted(batch.items()) if isinstance(batch, dict) else [('', batch)]:
                digest.update(name.encode('utf-8'))
                digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return batches, f'crops {digest.hexdigest()}'
    if Path(model_path).suffix != model_io.CARD_SUFFIX:
        raise ValueError(f'an INT8 engine of {model_path} needs calibration crops '
                         '(calibration_batches)')
    from hand_pose_ros.core import export

    spec = export.card_calibration(model_io.read_card(model_path))
    digest.update(json.dumps(spec, sort_keys=True).encode('utf-8'))
    return export.card_calibration_batches(model_path, max_batch), f'rendered {digest.hexdigest()}'


class TensorRTBackend:
    """
    Run a model through a cached TensorRT engine.

    :param model_path: model card (``.yaml``, uses its ONNX export) or ``.onnx`` file.
    :param precision: 'fp32', 'fp16' or 'int8'; 'auto' is 'fp16'.
    :param max_batch: largest batch (crops per call) the engine accepts; larger batches
        are split.
    :param cache_dir: engine directory (default ``~/.cache/hand_pose_ros/engines``).
    :param force_rebuild: rebuild the engine even when the cached one matches.
    :param calibration_batches: iterable of crop batches for INT8 calibration (default for
        a card: :func:`calibration_source`).
    """

    name = 'tensorrt'

    def __init__(self, model_path, precision='fp16', max_batch=DEFAULT_MAX_BATCH, cache_dir=None,
                 force_rebuild=False, calibration_batches=None):
        available, reason = tensorrt_available()
        if not available:
            raise BackendUnavailableError(f'TensorRT backend unavailable: {reason}')
        import tensorrt as trt
        import torch

        if precision == 'auto':   # FP16 where this TensorRT builds it from flags (not 11)
            precision = 'fp16' if hasattr(trt.BuilderFlag, 'FP16') else 'fp32'
        precision_flags(trt, precision)   # before a cached engine could hide the lack
        self.onnx_path = resolve_onnx(model_path)
        self.input_shapes = onnx_input_shapes(self.onnx_path)
        fixed = self.input_shapes[0][1]
        self.max_batch = int(fixed or max_batch)
        self.fixed_batch = fixed
        batches, calibration = calibration_source(model_path, precision, self.max_batch,
                                                  calibration_batches)
        key = EngineKey(
            onnx_sha256=model_io.sha256_file(self.onnx_path),
            input_shapes=tuple((name, chw) for name, _, chw in self.input_shapes),
            max_batch=self.max_batch, precision=precision, trt_version=trt.__version__,
            gpu_name=torch.cuda.get_device_name(), calibration=calibration,
            gpu_capability='.'.join(map(str, torch.cuda.get_device_capability())),
            gpu_sm_count=int(torch.cuda.get_device_properties(
                torch.cuda.current_device()).multi_processor_count))
        cache = EngineCache(cache_dir)
        # Named for the ONNX file's place as well as its name: two models called 'default'
        # in different folders keep an engine each instead of rebuilding in turn.
        stem = (f'{self.onnx_path.stem}_'
                f'{hashlib.sha256(str(self.onnx_path.resolve()).encode()).hexdigest()[:8]}')
        calibration_cache = cache.calibration_path(stem, key, fresh=force_rebuild)

        def build():
            return build_serialized_engine(self.onnx_path, key, batches, calibration_cache)

        engine_bytes, self.cache_status = cache.load_or_build(stem, key, build, force_rebuild)
        # Keep the runtime alive as long as the engine it deserialized.
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)  # None if refused
        if self.engine is None and self.cache_status == 'hit':
            LOGGER.warning('TensorRT refused the cached engine for %s; building it again', stem)
            engine_bytes, self.cache_status = cache.load_or_build(stem, key, build, True)
            self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError(f'TensorRT could not deserialize the engine it built for {stem}')
        self.context = self.engine.create_execution_context()
        self.tensor_api = hasattr(self.engine, 'num_io_tensors')
        self.stream = torch.cuda.Stream()
        # The execution context holds the shapes and addresses of one call at a time.
        self._lock = threading.Lock()
        self.precision = precision
        LOGGER.info('tensorrt backend: %s, %s, max batch %d, engine %s (TensorRT %s, %s)',
                    self.onnx_path, precision, self.max_batch, self.cache_status,
                    trt.__version__, key.gpu_name)

    def __call__(self, batch):
        """Return {'joints': (B, J, 3), 'confidence': (B, J)} float32 for a batch of crops."""
        feeds, size = input_feeds(batch, self.input_shapes)
        if self.fixed_batch is not None:
            return run_fixed_batch(self._run, feeds, size, self.fixed_batch)
        outputs = []
        for start in range(0, size, self.max_batch):
            chunk = {name: array[start:start + self.max_batch] for name, array in feeds.items()}
            outputs.append(self._run(chunk))
        return {name: np.concatenate([o[name] for o in outputs]) for name in OUTPUT_NAMES}

    def _run(self, feeds):
        import torch

        with self._lock:
            with torch.cuda.stream(self.stream):
                inputs = {name: torch.from_numpy(array).cuda(non_blocking=False)
                          for name, array in feeds.items()}
                if self.tensor_api:
                    outputs = self._execute_tensors(inputs)
                else:
                    outputs = self._execute_bindings(inputs)
            self.stream.synchronize()
        return {name: outputs[name].float().cpu().numpy() for name in OUTPUT_NAMES}

    def _execute_tensors(self, inputs):
        import torch

        for name, tensor in inputs.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f'TensorRT engine refuses input {name} of shape '
                                 f'{tuple(tensor.shape)} (outside its optimisation profile)')
            self.context.set_tensor_address(name, int(tensor.data_ptr()))
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device='cuda')
            self.context.set_tensor_address(name, int(outputs[name].data_ptr()))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError('TensorRT execution failed')
        return outputs

    def _execute_bindings(self, inputs):
        import torch

        bindings = [0] * self.engine.num_bindings
        for name, tensor in inputs.items():
            index = self.engine.get_binding_index(name)
            self.context.set_binding_shape(index, tuple(tensor.shape))
            bindings[index] = int(tensor.data_ptr())
        outputs = {}
        for name in OUTPUT_NAMES:
            index = self.engine.get_binding_index(name)
            shape = tuple(self.context.get_binding_shape(index))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device='cuda')
            bindings[index] = int(outputs[name].data_ptr())
        if not self.context.execute_async_v2(bindings, self.stream.cuda_stream):
            raise RuntimeError('TensorRT execution failed')
        return outputs
