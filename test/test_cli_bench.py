"""hand_pose_bench: per-stage figures of the per-frame path and network timings."""

import json
import math

import pytest
import torch

from hand_pose_ros.cli import bench
from hand_pose_ros.core.backends.profiling import CPU_VARIANTS, format_rows, profile_model


def test_pipeline_figures_cover_every_stage(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert bench.main(['--frames', '4', '--warmup', '1', '--backends', 'onnxruntime',
                       '--threads', '1', '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    figures = report['pipeline']['onnxruntime']
    assert set(bench.STAGES) <= set(figures)
    # Per frame, all-but-network <= total, so the same holds for their medians.
    assert 0 < figures['all_but_network']['p50_ms'] <= figures['total']['p50_ms']
    assert figures['infer']['p50_ms'] > 0 and figures['fps'] > 0
    assert figures['hand_detected_fraction'] == 1.0  # one visible hand in every frame
    # The hand is followed as in the node: searched for on frames 0 and 3 of 5 (the first
    # is warm-up), so on 1 of the 4 timed frames.
    assert figures['localized_fraction'] == 0.25
    assert report['device'] == 'cpu' and report['hardware']['cores'] >= 1
    printed = capsys.readouterr().out
    assert '| all_but_network |' in printed and 'frames/s' in printed


def test_without_ros_the_message_stages_are_left_out(tmp_path):
    out = tmp_path / 'bench.json'
    assert bench.main(['--frames', '3', '--warmup', '1', '--backends', 'torch', '--no-ros',
                       '--views', '2', '--threads', '1', '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    figures = report['pipeline']['torch']
    assert not report['ros_stages'] and figures['views'] == 2
    assert set(bench.STAGES) - set(figures) == set(bench.ROS_STAGES)
    assert figures['hand_detected_fraction'] == 1.0


def test_searching_every_frame(tmp_path):
    out = tmp_path / 'bench.json'
    assert bench.main(['--frames', '3', '--warmup', '1', '--backends', 'onnxruntime',
                       '--no-ros', '--views', '1', '--redetect-interval', '1',
                       '--json', str(out)]) == 0
    figures = json.loads(out.read_text())['pipeline']['onnxruntime']
    assert figures['localized_fraction'] == 1.0 and figures['find']['p50_ms'] > 0


def test_a_colour_model_gets_rendered_colour_frames(tmp_path):
    from hand_pose_ros.core import export, model_io
    from hand_pose_ros.core.crop import CropSpec
    from hand_pose_ros.core.models import build_model

    torch.manual_seed(0)
    model = build_model('joint_groups_rgb', width=0.125, input_size=64).eval()
    spec = CropSpec(input_size=64, cube_size_m=(0.25, 0.25, 0.3))
    card = model_io.save_model(model, tmp_path, 'rgb', extra={'crop': spec.to_dict()})
    export.export_card(card)
    assert bench.takes_color(str(card)) and not bench.takes_color('default')
    out = tmp_path / 'bench.json'
    assert bench.main(['--model', str(card), '--frames', '2', '--warmup', '1',
                       '--backends', 'onnxruntime', '--threads', '1', '--json', str(out)]) == 0
    figures = json.loads(out.read_text())['pipeline']['onnxruntime']
    assert figures['infer']['p50_ms'] > 0 and figures['decode_image']['p50_ms'] > 0


def test_network_rows_time_every_variant():
    row = profile_model('a2j_r18_w0.5_96', threads=1, warmup=1, iterations=2)
    for name in CPU_VARIANTS:
        assert 0 < row[f'{name}_best_ms'] <= row[f'{name}_ms'] <= row[f'{name}_p99_ms']
        assert row[f'{name}_fps'] == pytest.approx(1000.0 / row[f'{name}_ms'])
    assert 0.5 < row['params_m'] < 5
    table = format_rows([row], CPU_VARIANTS)
    assert table.count('\n') == 2 and 'a2j_r18_w0.5_96' in table
    with pytest.raises(ValueError, match='unknown profile config'):
        profile_model('a2j_r200')


def test_cuda_without_a_gpu_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip('this machine has a CUDA device')
    row = profile_model('a2j_r18_w0.5_96', {'gpu': ('torch', {'device': 'cuda'})},
                        iterations=1)
    assert 'no CUDA device' in row['gpu_error'] and math.isnan(row['gpu_fps'])
    assert 'failed' in format_rows([row], ['gpu'])
    assert bench.main(['--device', 'cuda', '--networks']) == 2
    assert 'no CUDA device' in capsys.readouterr().err


def test_bad_input_gives_one_line_before_the_run(tmp_path, capsys):
    from hand_pose_ros.core.backends.tensorrt_backend import tensorrt_available

    quick = ['--frames', '1', '--warmup', '0', '--no-ros']
    cases = [
        (['--frames', '0'], '--frames must be >= 1, got 0'),
        (['--warmup', '-1'], '--warmup must be >= 0, got -1'),
        (['--redetect-interval', '0'], '--redetect-interval must be >= 1'),
        (['--backends', 'bogus'], "unknown backend 'bogus'"),
        (['--json', str(tmp_path)], 'is a folder'),
        ([*quick, '--model', 'nope'], "model 'nope'"),
    ]
    if not tensorrt_available()[0]:
        cases.append(([*quick, '--backends', 'tensorrt'], 'TensorRT backend unavailable'))
    for args, message in cases:
        assert bench.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith('hand_pose_bench: error: ') and message in err
        assert err.count('\n') == 1
