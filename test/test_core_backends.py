"""Backends: ONNX Runtime vs PyTorch, batched vs single, export checks, selection."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from hand_pose_ros.core import export, model_io
from hand_pose_ros.core.backends import (
    BACKENDS, create_backend, OnnxRuntimeBackend, resolve_backend_name, TorchBackend)
from hand_pose_ros.core.backends.tensorrt_backend import tensorrt_available
from hand_pose_ros.core.models import build_model, MODEL_NAMES

torch.set_num_threads(1)

TINY = {
    'a2j': {'backbone': 'resnet18', 'width': 0.125, 'input_size': 64, 'head_channels': 16},
    'crossinfonet': {'width': 0.125, 'input_size': 48, 'fc_dim': 32},
    'a2j_grouped': {'backbone': 'resnet18', 'width': 0.125, 'input_size': 64,
                    'head_channels': 16},
    'joint_groups_rgb': {'width': 0.125, 'input_size': 64},
}
TOLERANCE = 1e-4


def perturb(model, seed):
    """Give the network non-trivial weights and BN statistics (sharp softmaxes, offsets)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


@pytest.fixture(scope='module')
def cards(tmp_path_factory):
    directory = tmp_path_factory.mktemp('models')
    out = {}
    for seed, name in enumerate(MODEL_NAMES):
        torch.manual_seed(seed)
        model = perturb(build_model(name, **TINY[name]), seed)
        card = model_io.save_model(model, directory, name)
        results = export.export_card(card, static_batch_sizes=(2,) if name == 'a2j' else ())
        assert all(r.within_tolerance for r in results), [r.summary() for r in results]
        out[name] = (card, model)
    return out


def crops(model, batch, seed=3):
    inputs = export.example_inputs(model, batch, seed)
    return inputs if len(inputs) > 1 else inputs[model.input_names[0]]


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_onnxruntime_matches_torch_batched_and_single(cards, name):
    card, model = cards[name]
    ort_backend = create_backend('onnxruntime', card, threads=1)
    torch_backend = create_backend('torch', card, device='cpu')
    assert ort_backend.precision == torch_backend.precision == 'fp32'  # what each runs
    batch = crops(model, 3)
    ort_out = ort_backend(batch)
    torch_out = torch_backend(batch)
    for key in ('joints', 'confidence'):
        assert ort_out[key].dtype == np.float32
        np.testing.assert_allclose(ort_out[key], torch_out[key], atol=TOLERANCE)
    # The model is not degenerate: joints differ between crops.
    assert np.abs(ort_out['joints'][0] - ort_out['joints'][1]).max() > 1e-3
    for index in range(3):
        if isinstance(batch, dict):
            single = {k: v[index:index + 1] for k, v in batch.items()}
        else:
            single = batch[index:index + 1]
        single_out = ort_backend(single)
        np.testing.assert_allclose(single_out['joints'][0], ort_out['joints'][index],
                                   atol=TOLERANCE)
        np.testing.assert_allclose(torch_backend(single)['joints'][0],
                                   torch_out['joints'][index], atol=TOLERANCE)


def test_static_batch_export_runs_any_batch(cards):
    card, model = cards['a2j']
    static = OnnxRuntimeBackend(card.parent / 'a2j_b2.onnx', threads=1)
    dynamic = OnnxRuntimeBackend(card, threads=1)
    assert static.fixed_batch == 2 and dynamic.fixed_batch is None
    batch = crops(model, 5)
    np.testing.assert_allclose(static(batch)['joints'], dynamic(batch)['joints'],
                               atol=TOLERANCE)
    assert static(batch)['joints'].shape == (5, 21, 3)


def test_exported_graph_outputs_only_joints_and_confidence(cards):
    import onnx

    card, _ = cards['a2j']
    graph = onnx.load(str(card.parent / 'a2j.onnx')).graph
    assert [o.name for o in graph.output] == ['joints', 'confidence']
    assert [i.name for i in graph.input] == ['depth']
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert model_io.read_card(card)['onnx'] == 'a2j.onnx'
    # Grouped models carry their fixed joint assignment as constants, not ArgMax/OneHot.
    grouped_card, _ = cards['a2j_grouped']
    grouped = onnx.load(str(grouped_card.parent / 'a2j_grouped.onnx')).graph
    assert not {node.op_type for node in grouped.node} & {'ArgMax', 'OneHot', 'RandomUniform'}


def test_bad_inputs_are_rejected(cards):
    card, model = cards['a2j']
    backend = create_backend('onnxruntime', card, threads=1)
    with pytest.raises(ValueError, match=r'shape \(B, 1, 64, 64\)'):
        backend(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match='B >= 1'):
        backend(np.zeros((0, 1, 64, 64), np.float32))
    rgb_card, rgb = cards['joint_groups_rgb']
    rgb_backend = create_backend('torch', rgb_card, device='cpu')
    with pytest.raises(ValueError, match='pass a dict'):
        rgb_backend(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match='same batch size'):
        rgb_backend({'color': np.zeros((2, 3, 64, 64), np.float32),
                     'depth': np.zeros((1, 1, 64, 64), np.float32)})
    with pytest.raises(ValueError, match='threads'):
        OnnxRuntimeBackend(card, threads=0)
    with pytest.raises(ValueError, match='fp16 needs a CUDA device'):
        TorchBackend(card, device='cpu', precision='fp16')
    with pytest.raises(ValueError, match='precision must be one of'):
        TorchBackend(card, device='cpu', precision='int4')
    assert TorchBackend(card, device='cpu', precision='int8').precision == 'fp32'  # logged
    with pytest.raises(ValueError, match='cuda_graphs needs a CUDA device'):
        TorchBackend(card, device='cpu', cuda_graphs=True)


def test_backend_selection_and_auto_fallback(cards, tmp_path):
    card, _ = cards['a2j']
    assert set(BACKENDS) == {'onnxruntime', 'torch', 'tensorrt'}
    with pytest.raises(ValueError, match='unknown backend'):
        create_backend('openvino', card)
    # An option of another backend is dropped; one of none (a misspelling) is refused.
    with pytest.raises(ValueError, match=r"unknown backend option\(s\) \['precison'\]"):
        create_backend('onnxruntime', card, precison='fp32')
    trt_ok, _ = tensorrt_available()
    expected = 'tensorrt' if trt_ok else 'onnxruntime'
    assert resolve_backend_name('auto') == expected
    if not trt_ok:
        backend = create_backend('auto', card, threads=1, precision='fp16', max_batch=2)
        assert isinstance(backend, OnnxRuntimeBackend)
        with pytest.raises(RuntimeError, match='TensorRT backend unavailable'):
            create_backend('tensorrt', card)
    bare = model_io.save_model(build_model('a2j', **TINY['a2j']), tmp_path, 'bare')
    with pytest.raises(model_io.ModelFileError, match='run hand_pose_export'):
        create_backend('onnxruntime', bare)


def test_a_missing_backend_package_is_a_clear_error_and_other_import_errors_stay(
        cards, monkeypatch):
    from hand_pose_ros.core.backends import BackendUnavailableError

    card, _ = cards['a2j']
    monkeypatch.setitem(sys.modules, 'torch', None)     # an install without torch
    with pytest.raises(BackendUnavailableError, match='pip install torch onnx'):
        create_backend('torch', card)
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise ImportError('cannot import name x', name='hand_pose_ros.core.somewhere')

    monkeypatch.setattr(OnnxRuntimeBackend, '__init__', broken)
    with pytest.raises(ImportError) as error:          # a bug, shown whole
        create_backend('onnxruntime', card)
    assert not isinstance(error.value, BackendUnavailableError)


def test_an_unreadable_onnx_file_is_named_in_the_error(tmp_path):
    # What the TensorRT backend reads first (ONNX Runtime names the file itself).
    from hand_pose_ros.core.backends.base import onnx_input_shapes

    broken = tmp_path / 'broken.onnx'
    broken.write_bytes(b'\x08\x07 not protobuf' * 40)
    with pytest.raises(model_io.ModelFileError, match=f'{broken}: not a readable ONNX file'):
        onnx_input_shapes(broken)


def test_tensorrt_bindings_without_onnx_fall_back_instead_of_crashing(monkeypatch):
    # TensorRT's bindings can come with the system (JetPack) while the Python packages the
    # backend also needs are missing: 'auto' must then choose ONNX Runtime.
    import types

    monkeypatch.setitem(sys.modules, 'tensorrt', types.ModuleType('tensorrt'))
    monkeypatch.setitem(sys.modules, 'onnx', None)      # import onnx raises ImportError
    available, reason = tensorrt_available()
    assert not available and 'needs torch and onnx' in reason
    assert resolve_backend_name('auto') == 'onnxruntime'


def test_a_tensorrt_without_the_precision_s_flags_is_unavailable_and_auto_falls_back(
        cards, monkeypatch):
    from types import SimpleNamespace

    from hand_pose_ros.core import backends
    from hand_pose_ros.core.backends import BackendUnavailableError
    from hand_pose_ros.core.backends.tensorrt_backend import precision_flags

    # TensorRT 11 builds strongly typed networks: no FP16/INT8 builder flags (10.x has them).
    trt10 = SimpleNamespace(__version__='10.3.0',
                            BuilderFlag=SimpleNamespace(FP16='fp16 flag', INT8='int8 flag'))
    trt11 = SimpleNamespace(__version__='11.0.0', BuilderFlag=SimpleNamespace())
    assert precision_flags(trt10, 'int8') == ['fp16 flag', 'int8 flag']
    assert precision_flags(trt11, 'fp32') == []
    with pytest.raises(BackendUnavailableError, match='TensorRT 11.0.0 has no FP16 builder'):
        precision_flags(trt11, 'fp16')

    # 'auto' chose TensorRT (it imports) but it cannot build this engine: ONNX Runtime runs.
    class NoEngine:

        def __init__(self, model_path, precision='fp16'):
            precision_flags(trt11, precision)

    card, _ = cards['a2j']
    monkeypatch.setattr(backends, 'tensorrt_available', lambda: (True, ''))
    monkeypatch.setitem(backends.BACKENDS, 'tensorrt', NoEngine)
    assert isinstance(create_backend('auto', card, threads=1), OnnxRuntimeBackend)
    with pytest.raises(BackendUnavailableError, match='use precision fp32'):
        create_backend('tensorrt', card)


def test_export_result_tolerance_verdict(tmp_path):
    result = export.ExportResult(tmp_path / 'm.onnx', True, 1, {'joints': 2e-3}, 1e-3)
    assert not result.within_tolerance and 'ABOVE TOLERANCE' in result.summary()
    result.max_abs_error = {'joints': 1e-6, 'confidence': 0.0}
    assert result.within_tolerance


def test_backends_package_imports_no_runtime():
    code = ('import sys\n'
            'import hand_pose_ros.core.backends, hand_pose_ros.core.model_io\n'
            'import hand_pose_ros.core.export\n'
            "print(','.join(m for m in ('torch', 'onnxruntime', 'tensorrt', 'onnx') "
            'if m in sys.modules))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ''


def test_torch_cuda_fp16_channels_last_matches_cpu(cards):
    """GPU only: FP16 channels-last CUDA inference stays close to the FP32 CPU result."""
    if not torch.cuda.is_available():
        pytest.skip('needs a CUDA device')
    card, model = cards['a2j']
    batch = crops(model, 4)
    reference = create_backend('torch', card, device='cpu')(batch)
    gpu = create_backend('torch', card, device='cuda')
    assert gpu.dtype == torch.float16
    np.testing.assert_allclose(gpu(batch)['joints'], reference['joints'], atol=2e-2)


def test_torch_cuda_graphs_match_eager(cards):
    """GPU only: replayed CUDA graphs give eager results, for each batch size, every call."""
    if not torch.cuda.is_available():
        pytest.skip('needs a CUDA device')
    card, model = cards['a2j']
    eager = create_backend('torch', card, device='cuda', precision='fp32', cuda_graphs=False)
    graphs = create_backend('torch', card, device='cuda', precision='fp32')
    assert graphs.cuda_graphs
    for batch_size, seed in ((1, 1), (3, 2), (1, 3), (3, 4)):
        batch = export.example_inputs(model, batch_size, seed)['depth']
        np.testing.assert_allclose(graphs(batch)['joints'], eager(batch)['joints'], atol=1e-5)
    assert len(graphs._graphs) == 2  # one capture per batch size, replayed after


def test_fp16_keeps_the_default_models_accuracy():
    """GPU only: FP16 CUDA inference of the shipped model is as accurate as FP32 (100 frames)."""
    if not torch.cuda.is_available():
        pytest.skip('needs a CUDA device')
    from hand_pose_ros.core import load_estimator
    from hand_pose_ros.core.evaluation import evaluate_estimator, labelled_frames

    frames = list(labelled_frames('synthetic', num_frames=100, seed=1000))
    errors = {}
    for precision in ('fp32', 'fp16'):
        estimator = load_estimator('default', backend='torch', device='cuda',
                                   precision=precision, use_finder=False)
        errors[precision] = evaluate_estimator(estimator, frames)['mean_mm']
    print(f'default model, oracle centres, 100 frames: {errors}')
    assert errors['fp32'] < 25.0
    assert abs(errors['fp16'] - errors['fp32']) < 0.2
