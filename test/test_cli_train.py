"""hand_pose_train on a tiny config: train, resume, ship; shipped configs parse."""

import glob
import os

import pytest
from test_core_training import TINY_MODEL, write_hands2017_fixture
import torch
import yaml

from hand_pose_ros.cli import train as train_cli
from hand_pose_ros.core import model_io, training

torch.set_num_threads(1)
CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'config')


@pytest.fixture
def tiny_yaml(tmp_path):
    write_hands2017_fixture(str(tmp_path / 'data'), frames=4)
    values = {
        'output_dir': str(tmp_path / 'run'), 'model_cfg': TINY_MODEL,
        'crop': {'input_size': 32, 'cube_size_m': [0.2, 0.2, 0.3]},
        'data': {'type': 'hands2017', 'root': str(tmp_path / 'data')},
        'eval_frames': 3, 'pool_size': 8, 'min_pool': 4, 'chunk_size': 4,
        'render_workers': 0, 'steps': 100, 'batch_size': 4, 'checkpoint_every': 3,
        'log_every': 1, 'num_threads': 1}
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(values))
    return path


def test_cli_trains_resumes_and_ships(tiny_yaml, tmp_path, capsys):
    assert train_cli.main(['--config', str(tiny_yaml), '--steps', '3',
                           '--set', 'eval_data={type: hands2017, root: %s}' % (tmp_path / 'data'),
                           '--set', 'augment.noise_mm=1.0']) == 0
    captured = capsys.readouterr()
    assert 'held-out mean 3D error' in captured.out
    assert 'loss' in captured.err and '3/3' in captured.err
    assert training.load_checkpoint(str(tmp_path / 'run' / 'checkpoint_last.pt'))['step'] == 3
    assert train_cli.main(['--config', str(tiny_yaml), '--steps', '5', '--resume',
                           '--set', 'eval_data={type: hands2017, root: %s}' % (tmp_path / 'data'),
                           '--set', 'augment.noise_mm=1.0']) == 0
    checkpoint = training.load_checkpoint(str(tmp_path / 'run' / 'checkpoint_last.pt'))
    assert checkpoint['step'] == 5
    assert [r['step'] for r in training.read_csv(str(tmp_path / 'run' / 'train.csv'))] == \
        [1, 2, 3, 4, 5]
    assert train_cli.main(['--write-model', str(tmp_path / 'run' / 'checkpoint_best.pt'),
                           '--model-dir', str(tmp_path / 'models'), '--name', 'tiny',
                           '--views', '4', '--refine-passes', '2']) == 0
    card = model_io.read_card(tmp_path / 'models' / 'tiny.yaml')
    assert card['onnx'] == 'tiny.onnx' and card['training']['augment']['noise_mm'] == 1.0
    assert card['inference'] == {'views': 4, 'refine_passes': 2}


def test_cli_reports_bad_input(tiny_yaml, tmp_path, capsys):
    assert train_cli.main(['--config', str(tiny_yaml), '--set', 'model_cfg.backbone=vgg']) == 2
    assert 'error' in capsys.readouterr().err
    assert train_cli.main(['--config', str(tiny_yaml), '--resume',
                           '--output-dir', str(tmp_path / 'none')]) == 2
    assert 'checkpoint_last.pt' in capsys.readouterr().err
    assert train_cli.main(['--write-model', str(tmp_path / 'missing.pt')]) == 2
    with pytest.raises(ValueError, match='KEY=VALUE'):
        train_cli.apply_assignment({}, 'steps')


def test_assignments_reach_into_mappings():
    values = {'model_cfg': {'width': 1.0}}
    train_cli.apply_assignment(values, 'model_cfg.width=0.5')
    train_cli.apply_assignment(values, 'crop.cube_size_m=[0.25, 0.25, 0.3]')
    assert values == {'model_cfg': {'width': 0.5}, 'crop': {'cube_size_m': [0.25, 0.25, 0.3]}}


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(CONFIG_DIR, 'train_*.yaml'))))
def test_shipped_configs_are_valid(path):
    config = training.TrainConfig.from_yaml(path)
    model = training.build_training_model(config)
    assert model.input_size == config.crop_spec.input_size


def test_a2j_depth_loss_scale_follows_the_crop_cube():
    # tau2 = 3 mm in the depth loss: the millimetres come from cube_half_depth_mm.
    tiny = {'backbone': 'resnet18', 'width': 0.125, 'head_channels': 16}
    crop = {'input_size': 64, 'cube_size_m': [0.2, 0.2, 0.2]}
    config = training.TrainConfig(model='a2j', model_cfg=tiny, crop=crop)
    assert training.build_training_model(config).cube_half_depth_mm == 100.0
    config = training.TrainConfig(model='a2j', model_cfg={**tiny, 'cube_half_depth_mm': 150.0},
                                  crop=crop)
    with pytest.raises(ValueError, match='not half the crop cube depth'):
        training.build_training_model(config)


def test_cli_benchmark_prints_figures(tiny_yaml, tmp_path, capsys):
    assert train_cli.main(['--config', str(tiny_yaml), '--benchmark']) == 0
    out = capsys.readouterr().out
    assert 'context crops/s' in out and 'samples/s on cpu (batch 4)' in out
    assert not (tmp_path / 'run').exists()  # a benchmark writes no run folder


def test_ctrl_c_stops_the_run_and_its_workers_quietly(tiny_yaml, tmp_path):
    # Ctrl-C in a terminal interrupts the whole process group: render and augmentation
    # workers included. Only the trainer handles it; it stops the workers and keeps the
    # last checkpoint.
    import signal
    import subprocess
    import sys
    import time

    err_path = tmp_path / 'stderr.txt'
    with open(err_path, 'w') as err:
        process = subprocess.Popen(
            [sys.executable, '-m', 'hand_pose_ros.cli.train', '--config', str(tiny_yaml),
             '--steps', '100000', '--render-workers', '1', '--augment-workers', '2',
             '--set', 'eval_frames=0', '--set', 'checkpoint_every=5'],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            # A shell that starts the suite in the background (`make test &`) leaves SIGINT
            # ignored in it, and so in the trainer: give the trainer Ctrl-C as a terminal would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not os.path.isfile(tmp_path / 'run' / 'checkpoint_last.pt'):
            assert process.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        try:
            # The trainer gives its augmentation, then its render workers STOP_TIMEOUT_S each.
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            tree = subprocess.run(['ps', '-o', 'pid,stat,wchan:20,args', '-s', str(process.pid)],
                                  capture_output=True, text=True).stdout
            pytest.fail(f'no exit 60 s after Ctrl-C; processes:\n{tree}\n'
                        f'stderr:\n{err_path.read_text()}')
        assert code == 130, err_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    stderr = err_path.read_text()
    assert 'interrupted; continue with --resume' in stderr
    assert 'Traceback' not in stderr and 'KeyboardInterrupt' not in stderr, stderr
    assert training.load_checkpoint(str(tmp_path / 'run' / 'checkpoint_last.pt'))['step'] >= 5
    # Every process of the run's session exits (only exited ones may be left, unreaped).
    deadline = time.monotonic() + 30
    while True:
        states = subprocess.run(['ps', '-o', 'stat=,args=', '-s', str(process.pid)],
                                capture_output=True, text=True).stdout.splitlines()
        if all(state.startswith('Z') for state in states) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(state.startswith('Z') for state in states), states
