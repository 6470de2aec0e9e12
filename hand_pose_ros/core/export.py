"""
Export networks to ONNX with the decode step inside the graph, and check the result.

The exported graph takes the model's inputs (``depth`` and/or ``color``, float32 NCHW) and
returns exactly ``joints`` (B, J, 3) and ``confidence`` (B, J), as defined by the model
contract in :mod:`hand_pose_ros.core.models`. Every export runs the ONNX checker and compares
ONNX Runtime with PyTorch on a seeded random batch; the maximum absolute error is reported.

An INT8 copy (:func:`quantize_onnx`) runs on ONNX Runtime's integer kernels on the CPU: the
convolutions, ReLUs, residual additions and pooling are quantised (weights per output
channel), calibrated on rendered crops of the card's training data; the in-graph decode
stays in float, and so do the convolutions that read a network input (:func:`input_convs`):
quantising the normalised depth crop itself to 8 bits cost most of the copy's error (stage-16
default model, 100 check crops: joints 0.0128 from the float ones with every convolution
quantised, 0.0038 with the first one in float). Activation ranges are the calibration crops'
extremes (min-max; with the 99.999th percentiles instead, the default model's joints moved
twice as far from the float ones on the check crops: mean 8.3e-3 against 4.1e-3). The copy
is compared with the float export on crops the calibration did not see.
"""

from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
import tempfile
import warnings

import numpy as np

from hand_pose_ros.core import model_io

LOGGER = logging.getLogger(__name__)

OPSET = 17
DEFAULT_TOLERANCE = 1e-3
# INT8: operators quantised, crops rendered for calibration (seed apart from the test,
# validation, hand-score and benchmark seeds) and, after them, crops for the comparison.
INT8_OPERATORS = ('Conv', 'Relu', 'Add', 'MaxPool')
CALIBRATION_SEED = 6000
CALIBRATION_CROPS = 200
INT8_CHECK_CROPS = 100
# Largest mean |INT8 - float| of any output (normalised crop units for the joints: 0.02 is
# 2.5 mm across a 0.25 m crop) for an INT8 copy to pass.
INT8_TOLERANCE = 0.02


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


@dataclass
class QuantizeResult:
    """
    What one INT8 quantisation produced.

    :param path: the INT8 ONNX file.
    :param mean_abs_error: per output, mean |INT8 - float| over the check crops.
    :param max_abs_error: per output, max |INT8 - float| over the check crops.
    :param mean_difference: per output, mean (INT8 - float): a bias, e.g. lower confidences.
    :param calibration: how it was calibrated (data, seed, crops) and checked (crops).
    :param float_nodes: names of the nodes left in float (the convolutions of the inputs).
    """

    path: Path
    mean_abs_error: dict
    max_abs_error: dict
    mean_difference: dict
    calibration: dict
    float_nodes: list

    @property
    def within_tolerance(self):
        """Return True when every output's mean error is within :data:`INT8_TOLERANCE`."""
        return all(error <= INT8_TOLERANCE for error in self.mean_abs_error.values())

    def summary(self):
        """Return a one-line human-readable report."""
        errors = ', '.join(f'{k} mean {self.mean_abs_error[k]:.2e} max {v:.2e} bias '
                           f'{self.mean_difference[k]:+.1e}'
                           for k, v in self.max_abs_error.items())
        verdict = 'OK' if self.within_tolerance else 'ABOVE TOLERANCE'
        return (f'{self.path} (INT8, {self.calibration["crops"]} calibration crops): '
                f'|INT8 - float| on {self.calibration["check_crops"]} other crops: {errors} '
                f'(mean tolerance {INT8_TOLERANCE}) {verdict}')


def calibration_inputs(card, count, seed=CALIBRATION_SEED):
    """
    Return {input name: (count, C, S, S) float32} crops rendered like the card's training data.

    :param card: a model card (its ``crop`` spec, ``training.data`` and inputs are used;
        synthetic data when the card records none).
    """
    from hand_pose_ros.core.crop import CropSpec
    from hand_pose_ros.core.training import make_eval_set, make_source

    names = model_io.card_input_names(card)
    source = make_source(_training_data(card), CropSpec.from_dict(card['crop']), seed,
                         color='color' in names)
    crops = make_eval_set(source, count)
    return {name: crops['patches' if name == 'depth' else 'colors'] for name in names}


def _training_data(card):
    """Return the card's training data description (synthetic when it records none)."""
    return card.get('training', {}).get('data') or {'type': 'synthetic'}


def _single_crops(inputs):
    """Return [{input name: (1, C, S, S)}], one feed per crop of {input name: (N, C, S, S)}."""
    count = len(next(iter(inputs.values())))
    return [{name: array[i:i + 1] for name, array in inputs.items()} for i in range(count)]


def calibration_batches(crops, batch_size):
    """
    Yield batches of calibration crops (e.g. for a TensorRT INT8 calibrator).

    :param crops: (N, C, S, S) array, or {input name: (N, C, S, S)} for several inputs.
    """
    count = len(next(iter(crops.values()))) if isinstance(crops, dict) else len(crops)
    for start in range(0, count, batch_size):
        if isinstance(crops, dict):
            yield {name: array[start:start + batch_size] for name, array in crops.items()}
        else:
            yield crops[start:start + batch_size]


def card_calibration(card):
    """
    Return how a card's INT8 calibration crops are rendered: {data, crop, crops, seed}.

    Those of its INT8 copy when it has one (:func:`quantize_card`'s record), else the
    defaults :func:`quantize_card` would use.

    :raises ValueError: the INT8 copy was calibrated on crops given to ``hand_pose_export``,
        which cannot be rendered again.
    """
    record = card.get('quantization', {}).get('calibration', {})
    if 'onnx_int8' in card and 'seed' not in record:
        raise ValueError(
            f'the INT8 copy of model {card.get("name")!r} was calibrated on '
            f'{record.get("data", "crops that were not recorded")}; give the same crops '
            '(hand_pose_export --calibration-crops, or calibration_batches)')
    return {'data': _training_data(card), 'crop': card['crop'],
            'crops': int(record.get('crops', CALIBRATION_CROPS)),
            'seed': int(record.get('seed', CALIBRATION_SEED))}


def card_calibration_batches(card_path, batch_size):
    """Yield batches of the crops of :func:`card_calibration` (rendered when asked)."""
    card = model_io.read_card(card_path)
    spec = card_calibration(card)
    yield from calibration_batches(calibration_inputs(card, spec['crops'], spec['seed']),
                                   batch_size)


def _session(onnx_path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])


def _run_crops(session, inputs):
    """Return {output: array} of a session over crops, one crop per call (as estimated)."""
    runs = [session.run(list(model_io.OUTPUT_NAMES), feed) for feed in _single_crops(inputs)]
    return {name: np.concatenate([run[k] for run in runs])
            for k, name in enumerate(model_io.OUTPUT_NAMES)}


def input_convs(graph):
    """Return the names of the Conv nodes of an ONNX graph that read one of its inputs."""
    inputs = {value.name for value in graph.input}
    return [node.name for node in graph.node if node.op_type == 'Conv' and node.input[0] in inputs]


def quantize_onnx(onnx_path, out_path, calibration, check):
    """
    Write an INT8 copy of a float ONNX export (QDQ format) and compare it with the float one.

    :param onnx_path: the float export (dynamic or static batch).
    :param out_path: the INT8 ``.onnx`` to write.
    :param calibration: {input name: (N, C, S, S) float32} crops that set the activation
        ranges (as from :func:`calibration_inputs`).
    :param check: {input name: (M, C, S, S)} other crops for the comparison.
    :return: :class:`QuantizeResult` (its ``calibration`` holds the crop counts).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static, QuantType)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Crops(CalibrationDataReader):

        def __init__(self):
            self.feeds = iter(_single_crops(calibration))

        def get_next(self):
            return next(self.feeds, None)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        # The quantiser's own preparation: shapes inferred, constants folded (the biases
        # become initialisers it can quantise). ONNX's own shape inference: ONNX Runtime's
        # symbolic one gives up on CrossInfoNet's graph, dumping the model into the working
        # directory as it does.
        prepared = Path(directory) / 'prepared.onnx'
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        float_nodes = input_convs(onnx.load(str(prepared)).graph)
        quantize_static(str(prepared), str(out_path), Crops(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(INT8_OPERATORS), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=float_nodes)
    onnx.checker.check_model(str(out_path))
    reference = _run_crops(_session(onnx_path), check)
    quantized = _run_crops(_session(out_path), check)
    differences = {name: quantized[name] - reference[name] for name in reference}
    result = QuantizeResult(
        out_path, {name: float(np.abs(d).mean()) for name, d in differences.items()},
        {name: float(np.abs(d).max()) for name, d in differences.items()},
        {name: float(d.mean()) for name, d in differences.items()},
        {'crops': len(next(iter(calibration.values()))),
         'check_crops': len(next(iter(check.values())))}, float_nodes)
    LOGGER.info('%s', result.summary())
    return result


def quantize_card(card_path, crops=None, calibration_crops=CALIBRATION_CROPS,
                  check_crops=INT8_CHECK_CROPS, seed=CALIBRATION_SEED):
    """
    Add an INT8 copy of a card's ONNX export beside it (``<name>_int8.onnx``).

    The file is registered in the card (``onnx_int8``, with its checksum) and the card's
    ``quantization`` section records the calibration data and the comparison with the float
    export (mean and max absolute error of every output, in the network's output units).

    :param crops: the user's normalised crops, (N, C, S, S) for a one-input network or
        {input name: (N, C, S, S)} (e.g. crops of their own recordings, when the card's
        training data is not at hand): the first two thirds calibrate, the rest check.
        None renders ``calibration_crops`` + ``check_crops`` like the card's training data.
    :return: :class:`QuantizeResult`.
    :raises ModelFileError: a card without an ONNX export.
    :raises ValueError: crops that do not fit the network's inputs, or fewer than 3.
    """
    card_path = Path(card_path)
    # Only the float export is read: a damaged INT8 copy is what this writes again.
    card = model_io.read_card(card_path, verify=False)
    onnx_path = model_io.card_file(card_path, card, 'onnx')
    model_io.verify_card_files(card_path, card, [card['onnx']])
    if crops is None:
        crops = calibration_inputs(card, calibration_crops + check_crops, seed)
        data = {'data': _training_data(card), 'seed': seed}
    else:
        from hand_pose_ros.core.backends.base import input_feeds, onnx_input_shapes

        crops, count = input_feeds(crops, onnx_input_shapes(onnx_path))
        if count < 3:
            raise ValueError(f'give at least 3 calibration crops, got {count}')
        check_crops = count // 3
        calibration_crops = count - check_crops
        data = {'data': 'crops given to hand_pose_export (--calibration-crops)'}
    path = card_path.parent / f'{card.get("name", card_path.stem)}_int8.onnx'
    result = quantize_onnx(
        onnx_path, _unchecked(path),
        {name: array[:calibration_crops] for name, array in crops.items()},
        {name: array[calibration_crops:] for name, array in crops.items()})
    result.calibration.update(data)
    if not _install_checked(result, path):
        return result
    model_io.register_file(card_path, result.path, 'onnx_int8')
    card = model_io.read_card(card_path, verify=False)
    card['quantization'] = {
        'source': {'onnx': onnx_path.name, 'sha256': model_io.sha256_file(onnx_path)},
        'format': 'onnx qdq', 'operators': list(INT8_OPERATORS), 'weights': 'int8 per channel',
        'activations': 'uint8 per tensor, min-max ranges', 'float_nodes': result.float_nodes,
        'calibration': result.calibration, 'mean_abs_error': result.mean_abs_error,
        'max_abs_error': result.max_abs_error, 'mean_difference': result.mean_difference}
    model_io.write_card(card_path, card)
    return result


def _unchecked(path):
    """Return where an export is written until it passes its check (beside ``path``)."""
    return path.with_name(f'{path.stem}.unchecked{path.suffix}')


def _install_checked(result, path):
    """
    Move an export that passed its check to ``path``; return whether it did.

    One that failed stays at its ``.unchecked`` name for inspection, and whatever ``path``
    held (and its card entry) stays as it was: a card never points at a failed export.
    """
    if not result.within_tolerance:
        LOGGER.warning('%s failed its check against the reference and is not used: %s',
                       result.path, result.summary())
        return False
    os.replace(result.path, path)
    result.path = path
    return True


def export_card(card_path, out_dir=None, dynamic_batch=True, static_batch_sizes=(),
                tolerance=DEFAULT_TOLERANCE, int8=False, int8_crops=None):
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
    :param int8: also write the INT8 copy of the dynamic export (:func:`quantize_card`;
        beside the card only). A card that has one gets it again from the new export.
    :param int8_crops: the crops that calibrate it (see :func:`quantize_card`).
    :return: list of :class:`ExportResult`, then the :class:`QuantizeResult` if any. An
        export outside its tolerance is left at ``<name>.unchecked.onnx``, not registered,
        and the file it would have replaced stays (:func:`_install_checked`).
    """
    card_path = Path(card_path)
    # Only the weights are read: a damaged export of the card is what this writes again.
    model, card = model_io.load_model(card_path, verify='weights')
    name = card.get('name', card_path.stem)
    out_dir = Path(out_dir) if out_dir is not None else card_path.parent
    jobs = [(True, 1)] if dynamic_batch else []
    jobs += [(False, int(n)) for n in static_batch_sizes]
    if not jobs:
        raise ValueError('nothing to export: ask for the dynamic batch or a static batch size')
    in_card_dir = out_dir.resolve() == card_path.parent.resolve()
    if int8 and not (in_card_dir and dynamic_batch):
        raise ValueError('the INT8 copy is made from the dynamic-batch export beside the card')
    results = []
    for dynamic, batch in jobs:
        path = out_dir / onnx_file_name(name, dynamic, batch)
        result = export_onnx(model, _unchecked(path), dynamic, batch, tolerance)
        if _install_checked(result, path) and in_card_dir:
            model_io.register_file(card_path, result.path, 'onnx' if dynamic else None)
        results.append(result)
    if int8 or (in_card_dir and dynamic_batch and 'onnx_int8' in card):
        results.append(quantize_card(card_path, int8_crops))
    return results
