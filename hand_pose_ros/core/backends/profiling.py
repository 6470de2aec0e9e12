"""
Parameter counts and per-crop latency of the networks on each available backend.

Figures for model selection, independent of trained weights (latency does not depend on
weight values): each configuration is built, saved, exported to ONNX (on the CPU also its
INT8 copy, calibrated on a few rendered crops: its speed, not its accuracy, is what counts
here) and timed on the chosen runtime variants with a seeded random batch; a call's time
includes copying the batch to the device and the joints back. The command is
``hand_pose_bench --networks [--device cuda]``.
"""

import math
import tempfile
import time

import numpy as np

from hand_pose_ros.core import export, model_io

# label -> (registry name, build config)
PROFILE_CONFIGS = {
    'a2j_r18_176': ('a2j', {'backbone': 'resnet18', 'input_size': 176}),
    'a2j_r50_176': ('a2j', {'backbone': 'resnet50', 'input_size': 176}),
    'a2j_r18_w0.5_128': ('a2j', {'backbone': 'resnet18', 'width': 0.5, 'input_size': 128,
                                 'head_channels': 64}),
    'a2j_r18_w0.5_96': ('a2j', {'backbone': 'resnet18', 'width': 0.5, 'input_size': 96,
                                'head_channels': 64}),
    'crossinfonet_96': ('crossinfonet', {'input_size': 96}),
    'a2j_grouped_r18_w0.5_128': ('a2j_grouped', {'backbone': 'resnet18', 'width': 0.5,
                                                 'input_size': 128, 'head_channels': 64}),
}

# variant -> (backend name, backend options): CPU runtimes, compared for the same model.
CPU_VARIANTS = {
    'onnxruntime': ('onnxruntime', {'device': 'cpu', 'precision': 'fp32'}),
    'onnxruntime_int8': ('onnxruntime', {'device': 'cpu', 'precision': 'int8'}),
    'torch': ('torch', {'device': 'cpu'}),
}
# Rendered crops that calibrate (and check) the INT8 copies timed here.
_CALIBRATION_CROPS, _CHECK_CROPS = 16, 4
# GPU runtimes; :func:`gpu_variants` keeps the ones this machine has.
GPU_VARIANTS = {
    'torch_fp32': ('torch', {'device': 'cuda', 'precision': 'fp32', 'cuda_graphs': False}),
    'torch_fp16': ('torch', {'device': 'cuda', 'precision': 'fp16', 'cuda_graphs': False}),
    'torch_fp16_graphs': ('torch', {'device': 'cuda', 'precision': 'fp16', 'cuda_graphs': True}),
    'onnxruntime_cuda': ('onnxruntime', {'device': 'cuda'}),
    'tensorrt_fp16': ('tensorrt', {'precision': 'fp16'}),
}


def gpu_variants():
    """Return the :data:`GPU_VARIANTS` that can run here (empty without a CUDA device)."""
    import onnxruntime
    import torch

    from hand_pose_ros.core.backends.tensorrt_backend import tensorrt_available

    if not torch.cuda.is_available():
        return {}
    missing = set()
    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        missing.add('onnxruntime_cuda')
    if not tensorrt_available()[0]:
        missing.add('tensorrt_fp16')
    return {name: v for name, v in GPU_VARIANTS.items() if name not in missing}


def time_call(function, inputs, warmup, iterations):
    """Return (median, p99, best) milliseconds of ``function(inputs)``."""
    for _ in range(warmup):
        function(inputs)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        function(inputs)
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples)), float(np.percentile(samples, 99)), float(min(samples))


def profile_model(label, variants=None, batch=1, threads=None, warmup=3, iterations=20,
                  workdir=None):
    """
    Measure one configuration of :data:`PROFILE_CONFIGS`.

    :param variants: {name: (backend, options)} (default :data:`CPU_VARIANTS`).
    :return: dict with label, network, params, input_size, batch and, per variant,
        ``<name>_ms`` (median per call), ``<name>_p99_ms``, ``<name>_best_ms``,
        ``<name>_ms_per_crop`` (median / batch) and ``<name>_fps`` (crops per second);
        NaN and ``<name>_error`` (the message) where that runtime failed.
    """
    import torch

    from hand_pose_ros.core.backends import create_backend
    from hand_pose_ros.core.crop import CropSpec
    from hand_pose_ros.core.models import build_model

    if label not in PROFILE_CONFIGS:
        raise ValueError(f'unknown profile config {label!r}; choose from {list(PROFILE_CONFIGS)}')
    network, cfg = PROFILE_CONFIGS[label]
    torch.manual_seed(0)
    model = build_model(network, **cfg).eval()
    row = {'label': label, 'network': network, 'input_size': model.input_size, 'batch': batch,
           'params_m': sum(p.numel() for p in model.parameters()) / 1e6}
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        card = model_io.save_model(model, directory, label.replace('.', '_'), extra={
            'crop': CropSpec(input_size=model.input_size).to_dict()})
        export.export_card(card)
        if any(options.get('precision') == 'int8'
               for _, options in (variants or CPU_VARIANTS).values()):
            export.quantize_card(card, calibration_crops=_CALIBRATION_CROPS,
                                 check_crops=_CHECK_CROPS)
        inputs = export.example_inputs(model, batch)
        if len(inputs) == 1:
            inputs = next(iter(inputs.values()))
        for name, (backend_name, options) in (variants or CPU_VARIANTS).items():
            try:
                backend = create_backend(backend_name, card, threads=threads,
                                         cache_dir=directory, **options)
                median, p99, best = time_call(backend, inputs, warmup, iterations)
            except (RuntimeError, ValueError) as error:  # one broken runtime spoils no row
                row[f'{name}_error'] = f'{type(error).__name__}: {error}'
                median = p99 = best = math.nan
            row[f'{name}_ms'] = median
            row[f'{name}_p99_ms'] = p99
            row[f'{name}_best_ms'] = best
            row[f'{name}_ms_per_crop'] = median / batch
            row[f'{name}_fps'] = 1000.0 * batch / median
    return row


def format_rows(rows, variants):
    """Return a Markdown table of profile rows (ms per crop, p50 and best, per variant)."""
    header = '| model | input | params (M) | batch | ' + ' | '.join(
        f'{b} ms/crop p50 (best)' for b in variants) + ' |'
    lines = [header, '|' + ' --- |' * (4 + len(variants))]
    for row in rows:
        cells = [row['label'], str(row['input_size']), f'{row["params_m"]:.2f}',
                 str(row['batch'])]
        cells += ['failed' if f'{b}_error' in row else
                  f'{row[f"{b}_ms_per_crop"]:.2f} ({row[f"{b}_best_ms"] / row["batch"]:.2f})'
                  for b in variants]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
