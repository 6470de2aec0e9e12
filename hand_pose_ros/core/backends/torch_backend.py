"""PyTorch backend: CPU or CUDA; FP16, channels-last, CUDA graphs, ``torch.compile`` on demand."""

import logging
import threading

import numpy as np

from hand_pose_ros.core import model_io
from hand_pose_ros.core.backends.base import input_feeds, log_once, OUTPUT_NAMES, PRECISIONS

LOGGER = logging.getLogger(__name__)
DEVICES = ('auto', 'cpu', 'cuda')


class TorchBackend:
    """
    Run a network with PyTorch.

    :param model_path: model card (``.yaml``); weights verified and loaded from safetensors.
    :param device: 'auto' (CUDA when available), 'cpu' or 'cuda'.
    :param precision: 'auto' (half precision weights and activations on CUDA, FP32 on the
        CPU), 'fp32' or 'fp16' (CUDA only); 'int8' has no PyTorch path here: logged, FP32.
    :param channels_last: NHWC memory format (default: True on CUDA, where it speeds up
        convolutions with tensor cores).
    :param torch_compile: wrap the network in ``torch.compile``.
    :param cuda_graphs: capture one CUDA graph per batch size on its first call and replay
        it after (default: True on CUDA; a batch then costs one launch instead of one per
        layer). CPU: not available.
    :param threads: CPU threads for torch (None: leave torch's setting alone).
    """

    name = 'torch'

    def __init__(self, model_path, device='auto', precision='auto', channels_last=None,
                 torch_compile=False, cuda_graphs=None, threads=None):
        import torch

        if device not in DEVICES:
            raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        cuda = torch.cuda.is_available()
        if device == 'cuda' and not cuda:
            raise ValueError('device cuda asked for, but torch sees no CUDA device')
        if device == 'auto' and not cuda:
            log_once(logging.INFO, 'torch backend: no CUDA device, running on CPU')
        self.device = torch.device('cuda' if cuda and device != 'cpu' else 'cpu')
        on_gpu = self.device.type == 'cuda'
        if precision == 'fp16' and not on_gpu:
            raise ValueError('fp16 needs a CUDA device; the CPU path runs float32')
        if precision == 'int8':
            log_once(logging.WARNING, 'torch backend: no int8 path (int8 is for onnxruntime '
                     'and tensorrt); running fp32')
        fp16 = precision == 'fp16' or (precision == 'auto' and on_gpu)
        self.dtype = torch.float16 if fp16 else torch.float32
        self.precision = 'fp16' if self.dtype == torch.float16 else 'fp32'  # what runs
        if cuda_graphs and not on_gpu:
            raise ValueError('cuda_graphs needs a CUDA device')
        self.cuda_graphs = on_gpu if cuda_graphs is None else bool(cuda_graphs)
        self._graphs = {}  # input shapes -> (graph, static inputs, static outputs)
        self._graph_lock = threading.Lock()
        use_channels_last = on_gpu if channels_last is None else bool(channels_last)
        self.memory_format = torch.channels_last if use_channels_last else torch.contiguous_format
        if threads is not None:
            torch.set_num_threads(int(threads))
        model, card = model_io.load_model(model_path, device=self.device)
        model = model.to(dtype=self.dtype, memory_format=self.memory_format).eval()
        self.module = model
        self.network = torch.compile(model) if torch_compile else model
        size = model.input_size
        channels = {'depth': 1, 'color': 3}
        self.input_shapes = [(name, None, (channels[name], size, size))
                             for name in model.input_names]
        LOGGER.info('torch backend: %s on %s, %s, %s%s%s', card.get('name'), self.device,
                    str(self.dtype).replace('torch.', ''),
                    'channels-last' if use_channels_last else 'NCHW',
                    ', torch.compile' if torch_compile else '',
                    ', CUDA graphs' if self.cuda_graphs else '')

    def _replay(self, tensors):
        """Run the network through the CUDA graph captured for these input shapes."""
        import torch

        key = tuple(tuple(t.shape) for t in tensors)
        if key not in self._graphs:
            static = [t.clone(memory_format=self.memory_format) for t in tensors]
            # Warm up on a side stream (lazy initialisation must not be captured).
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.network(*static)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self.network(*static)
            self._graphs[key] = (graph, static, outputs)
            LOGGER.info('torch backend: captured a CUDA graph for inputs %s', key)
        graph, static, outputs = self._graphs[key]
        for target, tensor in zip(static, tensors):
            target.copy_(tensor)
        graph.replay()
        return outputs

    def __call__(self, batch):
        """Return {'joints': (B, J, 3), 'confidence': (B, J)} float32 for a batch of crops."""
        import torch

        feeds, _ = input_feeds(batch, self.input_shapes)
        with torch.inference_mode():
            tensors = [torch.from_numpy(feeds[name]).to(self.device).to(
                dtype=self.dtype, memory_format=self.memory_format)
                for name, _, _ in self.input_shapes]
            if not self.cuda_graphs:
                return _numpy_outputs(self.network(*tensors))
            # A graph's static inputs and outputs are shared: one caller at a time.
            with self._graph_lock:
                return _numpy_outputs(self._replay(tensors))


def _numpy_outputs(outputs):
    return {name: outputs[name].float().cpu().numpy().astype(np.float32, copy=False)
            for name in OUTPUT_NAMES}
