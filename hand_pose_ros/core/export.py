"""
Export networks to ONNX with the decode step inside the graph, and check the result.

The exported graph takes the model's inputs (``depth`` and/or ``color``, float32 NCHW) and
returns exactly ``joints`` (B, J, 3) and ``confidence`` (B, J), as defined by the model
contract in :mod:`hand_pose_ros.core.models`. Every export runs the ONNX checker and compares
ONNX Runtime with PyTorch on a seeded random batch; the maximum absolute error is reported.
"""

from dataclasses import dataclass, field
import logging
from pathlib import Path
import warnings

import numpy as np

from hand_pose_ros.core import model_io

LOGGER = logging.getLogger(__name__)

OPSET = 17
DEFAULT_TOLERANCE = 1e-3


@dataclass
class ExportResult:
    """
    What one export produced.

    :param path: the ONNX file.
    :param dynamic_batch: whether the batch axis is dynamic.
    :param batch_size: the batch size used for tracing (the fixed one when static).
    :param max_abs_error: per output, max |ONNX Runtime - PyTorch| on the check batch.
    :param tolerance: the tolerance the comparison was judged against.
    """

    path: Path
    dynamic_batch: bool
    batch_size: int
    max_abs_error: dict = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def within_tolerance(self):
        """Return True when every output agrees within the tolerance."""
        return all(error <= self.tolerance for error in self.max_abs_error.values())

    def summary(self):
        """Return a one-line human-readable report."""
        errors = ', '.join(f'{k} {v:.2e}' for k, v in self.max_abs_error.items())
        batch = 'dynamic batch' if self.dynamic_batch else f'static batch {self.batch_size}'
        verdict = 'OK' if self.within_tolerance else 'ABOVE TOLERANCE'
        return (f'{self.path} ({batch}): max abs error ORT vs PyTorch {errors} '
                f'(tolerance {self.tolerance:.0e}) {verdict}')


def _inference_graph(model):
    """Wrap a network so it returns the (joints, confidence) tuple the export keeps."""
    import torch

    class InferenceGraph(torch.nn.Module):

        def __init__(self, network):
            super().__init__()
            self.network = network

        def forward(self, *inputs):
            outputs = self.network(*inputs)
            return outputs['joints'], outputs['confidence']

    return InferenceGraph(model).eval()


def example_inputs(model, batch_size, seed=0):
    """
    Return a dict of seeded float32 inputs shaped like real crops.

    Depth crops get a smooth random surface with a background (1.0) border region, colour
    crops uniform noise in [0, 1].
    """
    rng = np.random.default_rng(seed)
    size = model.input_size
    inputs = {}
    for name in model.input_names:
        if name == 'depth':
            surface = rng.uniform(-0.6, 0.6, (batch_size, 1, 1, 1)) + rng.normal(
                0.0, 0.2, (batch_size, 1, size, size))
            background = rng.random((batch_size, 1, size, size)) < 0.3
            inputs[name] = np.where(background, 1.0, np.clip(surface, -1.0, 1.0))
        else:
            inputs[name] = rng.random((batch_size, 3, size, size))
        inputs[name] = inputs[name].astype(np.float32)
    return inputs


def export_onnx(model, path, dynamic_batch=True, batch_size=1, tolerance=DEFAULT_TOLERANCE):
    """
    Export a network to ONNX (opset 17, legacy TorchScript exporter), check and compare.

    :param model: network from :func:`hand_pose_ros.core.models.build_model` (set to eval).
    :param path: output ``.onnx`` path.
    :param dynamic_batch: make the batch axis dynamic (several hands in one call).
    :param batch_size: batch for tracing; the fixed batch of a static export.
    :param tolerance: max abs error allowed between ONNX Runtime and PyTorch.
    :return: :class:`ExportResult`.
    """
    import onnx
    import torch

    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    graph = _inference_graph(model)
    tensors = tuple(torch.from_numpy(array) for array in
                    example_inputs(model, batch_size).values())
    names = list(model.input_names)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: 'batch'} for name in names + list(model_io.OUTPUT_NAMES)}
    # The TorchScript exporter (dynamo=False) is chosen on purpose: it traces the in-graph
    # decode into plain opset-17 ops that TensorRT 8.x parses; silence its deprecation notice
    # and the tracer's note on the grouped models' fixed assignment, a constant by design.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(graph, tensors, str(path), input_names=names,
                          output_names=list(model_io.OUTPUT_NAMES), opset_version=OPSET,
                          dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(str(path))
    # Compare on a batch other than the traced one when the batch axis is dynamic.
    check_batch = batch_size + 2 if dynamic_batch else batch_size
    result = ExportResult(path, dynamic_batch, batch_size,
                          compare_with_torch(model, path, check_batch), tolerance)
    LOGGER.info('%s', result.summary())
    return result


def compare_with_torch(model, onnx_path, batch_size=2, seed=1):
    """Return {output: max abs error} between ONNX Runtime (CPU) and PyTorch eval outputs."""
    import onnxruntime
    import torch

    inputs = example_inputs(model, batch_size, seed)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    onnx_outputs = dict(zip(model_io.OUTPUT_NAMES, session.run(list(model_io.OUTPUT_NAMES),
                                                               inputs)))
    model.eval()
    with torch.no_grad():
        torch_outputs = model(*(torch.from_numpy(array) for array in inputs.values()))
    return {name: float(np.max(np.abs(onnx_outputs[name] - torch_outputs[name].numpy())))
            for name in model_io.OUTPUT_NAMES}


def onnx_file_name(name, dynamic_batch, batch_size):
    """Return the ONNX file name for a model name and batch mode."""
    return f'{name}.onnx' if dynamic_batch else f'{name}_b{batch_size}.onnx'


def export_card(card_path, out_dir=None, dynamic_batch=True, static_batch_sizes=(),
                tolerance=DEFAULT_TOLERANCE):
    """
    Export a saved model (card + safetensors) to ONNX.

    Writes ``<name>.onnx`` (dynamic batch) and/or ``<name>_b<N>.onnx`` (static batch N).
    When the output directory is the card's own directory the files are registered in the
    card with their checksums, the dynamic one under the ``onnx`` field that the ONNX
    Runtime and TensorRT backends read.

    :param card_path: the model card (``<name>.yaml``).
    :param out_dir: output directory; default the card's directory.
    :param dynamic_batch: write the dynamic-batch export.
    :param static_batch_sizes: batch sizes of static exports to write as well.
    :return: list of :class:`ExportResult`.
    """
    card_path = Path(card_path)
    model, card = model_io.load_model(card_path)
    name = card.get('name', card_path.stem)
    out_dir = Path(out_dir) if out_dir is not None else card_path.parent
    jobs = [(True, 1)] if dynamic_batch else []
    jobs += [(False, int(n)) for n in static_batch_sizes]
    if not jobs:
        raise ValueError('nothing to export: ask for the dynamic batch or a static batch size')
    in_card_dir = out_dir.resolve() == card_path.parent.resolve()
    results = []
    for dynamic, batch in jobs:
        result = export_onnx(model, out_dir / onnx_file_name(name, dynamic, batch), dynamic,
                             batch, tolerance)
        if in_card_dir:
            model_io.register_file(card_path, result.path, 'onnx' if dynamic else None)
        results.append(result)
    return results
