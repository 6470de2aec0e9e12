"""
ONNX Runtime backend (CPU; CUDA when the GPU build of onnxruntime is installed).

On the CPU it runs a card's INT8 copy when the card has one (``hand_pose_export --int8``;
the default model does): for the default model about 2.5 times faster than the float
export on the project's 2-core development CPU, for 0.04 mm of mean error (README,
"Speed"). ``precision='fp32'`` keeps the float export.
"""

import logging
from pathlib import Path

from hand_pose_ros.core.backends.base import (
    has_int8, input_feeds, log_once, OUTPUT_NAMES, PRECISIONS, resolve_onnx, run_fixed_batch)

LOGGER = logging.getLogger(__name__)
DEVICES = ('auto', 'cpu', 'cuda')


class OnnxRuntimeBackend:
    """
    Run an exported model with ONNX Runtime.

    :param model_path: model card (``.yaml``, uses its ONNX export) or ``.onnx`` file.
    :param device: 'auto' (CUDA provider when available, else CPU), 'cpu' or 'cuda'.
    :param threads: intra-op threads (None: ONNX Runtime's default, one per core).
    :param precision: 'auto' (the card's INT8 copy on the CPU when it has one, else the
        float export), 'fp32' (the float export) or 'int8' (the INT8 copy; an error when
        the card has none). 'fp16' is a GPU precision: logged, then as 'auto'. An ONNX
        file is run as given.
    """

    name = 'onnxruntime'

    def __init__(self, model_path, device='auto', threads=None, precision='auto'):
        import onnxruntime

        if device not in DEVICES:
            raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
        if threads is not None and int(threads) < 1:
            raise ValueError(f'threads must be at least 1, got {threads}')
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        available = onnxruntime.get_available_providers()
        has_cuda = 'CUDAExecutionProvider' in available
        if device == 'cuda' and not has_cuda:
            raise ValueError('device cuda asked for, but this onnxruntime build has no '
                             f'CUDAExecutionProvider (available: {available})')
        if device == 'auto' and not has_cuda:
            log_once(logging.INFO, 'onnxruntime: no CUDAExecutionProvider, running on CPU')
        use_cuda = has_cuda and device != 'cpu'
        if precision == 'fp16':
            log_once(logging.WARNING, 'onnxruntime: no fp16 export (fp16 is for the tensorrt '
                     'and torch backends on a GPU); choosing as with precision auto')
        if precision in ('auto', 'fp16'):
            int8 = not use_cuda and has_int8(model_path)
        else:
            int8 = precision == 'int8'
        self.onnx_path = resolve_onnx(model_path, int8)
        # What ran: the card's INT8 copy or float export, or an ONNX file as given.
        self.precision = ('int8' if int8 else 'fp32') if self.onnx_path != Path(
            model_path) else 'as exported'
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
        LOGGER.info('onnxruntime backend: %s (%s) on %s (%s), batch %s', self.onnx_path,
                    self.precision, self.device, ', '.join(self.session.get_providers()),
                    self.fixed_batch or 'dynamic')

    def _run(self, feeds):
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))

    def __call__(self, batch):
        """Return {'joints': (B, J, 3), 'confidence': (B, J)} float32 for a batch of crops."""
        feeds, size = input_feeds(batch, self.input_shapes)
        if self.fixed_batch is None:
            return self._run(feeds)
        return run_fixed_batch(self._run, feeds, size, self.fixed_batch)
