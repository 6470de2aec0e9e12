"""
Parameter counts and per-crop latency of the networks on each available backend.

Figures for model selection, independent of trained weights (latency does not depend on
weight values): each configuration is built, saved, exported to ONNX and timed on the
chosen backends with a seeded random batch. The command is ``hand_pose_bench --networks``.
"""

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


def profile_model(label, backends=('onnxruntime', 'torch'), batch=1, threads=None,
                  warmup=3, iterations=20, workdir=None):
    """
    Measure one configuration of :data:`PROFILE_CONFIGS`.

    :return: dict with label, network, params, input_size, batch and, per backend,
        ``<backend>_ms`` (median per call), ``<backend>_p99_ms``, ``<backend>_best_ms`` and
        ``<backend>_ms_per_crop`` (median / batch).
    """
    import torch

    from hand_pose_ros.core.backends import create_backend
    from hand_pose_ros.core.models import build_model

    if label not in PROFILE_CONFIGS:
        raise ValueError(f'unknown profile config {label!r}; choose from {list(PROFILE_CONFIGS)}')
    network, cfg = PROFILE_CONFIGS[label]
    torch.manual_seed(0)
    model = build_model(network, **cfg).eval()
    row = {'label': label, 'network': network, 'input_size': model.input_size, 'batch': batch,
           'params_m': sum(p.numel() for p in model.parameters()) / 1e6}
    with tempfile.TemporaryDirectory(dir=workdir) as directory:
        card = model_io.save_model(model, directory, label.replace('.', '_'))
        export.export_card(card)
        inputs = export.example_inputs(model, batch)
        if len(inputs) == 1:
            inputs = next(iter(inputs.values()))
        options = {'threads': threads, 'device': 'cpu'}
        for name in backends:
            backend = create_backend(name, card, **options)
            median, p99, best = time_call(backend, inputs, warmup, iterations)
            row[f'{name}_ms'] = median
            row[f'{name}_p99_ms'] = p99
            row[f'{name}_best_ms'] = best
            row[f'{name}_ms_per_crop'] = median / batch
    return row


def format_rows(rows, backends):
    """Return a Markdown table of profile rows."""
    header = '| model | input | params (M) | batch | ' + ' | '.join(
        f'{b} ms/crop p50 (best)' for b in backends) + ' |'
    lines = [header, '|' + ' --- |' * (4 + len(backends))]
    for row in rows:
        cells = [row['label'], str(row['input_size']), f'{row["params_m"]:.2f}',
                 str(row['batch'])]
        cells += [f'{row[f"{b}_ms_per_crop"]:.1f} ({row[f"{b}_best_ms"] / row["batch"]:.1f})'
                  for b in backends]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
