"""ONNX Runtime backend (CPU; CUDA when the GPU build of onnxruntime is installed)."""

import logging

from hand_pose_ros.core.backends.base import (
    input_feeds, log_once, OUTPUT_NAMES, resolve_onnx, run_fixed_batch)

LOGGER = logging.getLogger(__name__)
DEVICES = ('auto', 'cpu', 'cuda')


class OnnxRuntimeBackend:
    """
    Run an exported model with ONNX Runtime.

    :param model_path: model card (``.yaml``, uses its ONNX export) or ``.onnx`` file.
    :param device: 'auto' (CUDA provider when available, else CPU), 'cpu' or 'cuda'.
    :param threads: intra-op threads (None: ONNX Runtime's default, one per core).
    """

    name = 'onnxruntime'

    def __init__(self, model_path, device='auto', threads=None):
        import onnxruntime

        if device not in DEVICES:
            raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
        if threads is not None and int(threads) < 1:
            raise ValueError(f'threads must be at least 1, got {threads}')
        self.onnx_path = resolve_onnx(model_path)
        available = onnxruntime.get_available_providers()
        has_cuda = 'CUDAExecutionProvider' in available
        if device == 'cuda' and not has_cuda:
            raise ValueError('device cuda asked for, but this onnxruntime build has no '
                             f'CUDAExecutionProvider (available: {available})')
        if device == 'auto' and not has_cuda:
            log_once(logging.INFO, 'onnxruntime: no CUDAExecutionProvider, running on CPU')
        use_cuda = has_cuda and device != 'cpu'
        providers = (['CUDAExecutionProvider'] if use_cuda else []) + ['CPUExecutionProvider']
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(self.onnx_path), sess_options=options, providers=providers)
        self.device = 'cuda' if use_cuda else 'cpu'
        self.input_shapes = []
        for node in self.session.get_inputs():
            fixed = node.shape[0] if isinstance(node.shape[0], int) else None
            self.input_shapes.append((node.name, fixed, tuple(node.shape[1:])))
        self.fixed_batch = self.input_shapes[0][1]
        LOGGER.info('onnxruntime backend: %s on %s (%s), batch %s', self.onnx_path,
                    self.device, ', '.join(self.session.get_providers()),
                    self.fixed_batch or 'dynamic')

    def _run(self, feeds):
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))

    def __call__(self, batch):
        """Return {'joints': (B, J, 3), 'confidence': (B, J)} float32 for a batch of crops."""
        feeds, size = input_feeds(batch, self.input_shapes)
        if self.fixed_batch is None:
            return self._run(feeds)
        return run_fixed_batch(self._run, feeds, size, self.fixed_batch)
