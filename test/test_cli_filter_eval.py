"""Tests for the hand_pose_filter_eval command."""

import json

import numpy as np

from hand_pose_ros.cli import filter_eval
from hand_pose_ros.core.synth import generate_motion


def test_eval_runs_on_a_short_synthetic_sequence(tmp_path, capsys):
    out = tmp_path / 'figures.json'
    assert filter_eval.main(['--frames', '90', '--sequences', '1', '--json', str(out)]) == 0
    text = capsys.readouterr().out
    for word in ('raw', 'one_euro', 'kalman', 'offline', 'mean err mm', 'lag ms',
                 'outl. recall', 'gap err'):
        assert word in text
    results = json.loads(out.read_text())['results']
    raw, default = results['raw'], results['one_euro (default)']
    assert raw['outlier_recall'] == 0.0 and raw['lag_ms'] == 0.0
    assert 5.0 < raw['mean_error_mm'] < 40.0
    assert default['accel_error_mm_f2'] < 0.7 * raw['accel_error_mm_f2']
    assert default['mean_error_mm'] < raw['mean_error_mm']


def test_eval_on_model_predictions(tmp_path, capsys):
    motion = generate_motion(60, seed=3)
    rng = np.random.default_rng(0)
    pred = motion.joints_xyz + rng.normal(0.0, 0.006, motion.joints_xyz.shape)
    pred[30:33] = np.nan
    pred[10, 8] += 0.1
    path = tmp_path / 'pred.npz'
    np.savez(path, stamps_s=motion.stamps_s, pred=pred, gt=motion.joints_xyz)
    out = tmp_path / 'figures.json'
    assert filter_eval.main(['--predictions', str(path), '--json', str(out)]) == 0
    results = json.loads(out.read_text())['results']
    assert results['one_euro (default)']['outlier_recall'] == 1.0
    assert np.isfinite(results['offline (two-way)']['gap_error_mm'])
    assert 'predictions' in capsys.readouterr().out


def test_eval_rejects_bad_predictions(tmp_path, capsys):
    path = tmp_path / 'bad.npz'
    np.savez(path, stamps_s=np.arange(5.0), pred=np.zeros((5, 21, 3)))
    assert filter_eval.main(['--predictions', str(path)]) == 2
    assert 'gt' in capsys.readouterr().err


def test_eval_on_a_models_own_estimates(tmp_path, capsys):
    out = tmp_path / 'figures.json'
    assert filter_eval.main(['--model', 'default', '--frames', '20', '--sequences', '1',
                             '--rate', '15', '--json', str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures['source'].startswith('model default') and '15 Hz' in figures['source']
    raw = figures['results']['raw']
    # The shipped model finds the hand in these frames, some tens of millimetres off.
    assert raw['coverage'] > 0.5 and 3.0 < raw['mean_error_mm'] < 60.0
    assert filter_eval.main(['--model', 'no_such_model', '--frames', '20']) == 2
    assert 'no_such_model' in capsys.readouterr().err


def test_a_colour_models_estimates_use_rendered_colour(tmp_path):
    import torch

    from hand_pose_ros.core import export, model_io
    from hand_pose_ros.core.models import build_model

    torch.manual_seed(0)
    card = model_io.save_model(
        build_model('joint_groups_rgb', width=0.125, input_size=64).eval(), tmp_path, 'rgb',
        extra={'crop': {'input_size': 64, 'cube_size_m': [0.25, 0.25, 0.3]}})
    export.export_card(card)
    sequences = filter_eval._model_sequences(str(card), 4, 0, 1, 15.0)
    assert len(sequences) == 1 and sequences[0].observed.shape == (4, 21, 3)


def test_predictions_equal_to_the_truth_have_no_ratios(tmp_path, capsys):
    motion = generate_motion(30, seed=3)
    path = tmp_path / 'exact.npz'
    np.savez(path, stamps_s=motion.stamps_s, pred=motion.joints_xyz, gt=motion.joints_xyz)
    out = tmp_path / 'figures.json'
    assert filter_eval.main(['--predictions', str(path), '--json', str(out)]) == 0
    results = json.loads(out.read_text())['results']
    assert results['raw']['mean_error_mm'] == 0.0
    assert results['raw']['accel_error_mm_f2'] == 0.0
    for metrics in results.values():
        assert metrics['accel_change_pct'] is None and metrics['gap_ratio'] is None
    raw_row = next(line for line in capsys.readouterr().out.splitlines()
                   if line.startswith('raw '))
    assert raw_row.split()[3] == 'n/a'  # the 'accel vs raw %' column


def test_unwritable_json_is_refused_before_the_run(tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    assert filter_eval.main(['--frames', '90', '--sequences', '1',
                             '--json', str(a_file / 'figures.json')]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f'hand_pose_filter_eval: error: --json {a_file / "figures.json"}: '
                            f'cannot create folder {a_file} (File exists)\n')
    assert captured.out == ''  # no table: refused before the run
