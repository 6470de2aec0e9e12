"""hand_pose_soak: options checked first, node executables found, early stop when all die."""

import sys

from hand_pose_ros.cli import soak


def fake_nodes(folder, script='#!/bin/sh\nexit 3\n'):
    """Write executables named like the nodes (and the command) into ``folder``."""
    folder.mkdir(exist_ok=True)
    for name in (*soak.NODES, 'hand_pose_soak'):
        path = folder / name
        path.write_text(script)
        path.chmod(0o755)
    return folder / 'hand_pose_soak'


def test_bad_options_give_one_line_before_anything_starts(tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    log = ['--log', str(tmp_path / 'soak.log')]
    cases = [
        (['--report-s', '0', *log], '--report-s must be > 0, got 0.0'),
        (['--report-s', '-1', *log], '--report-s must be > 0'),
        (['--cameras', '0', *log], '--cameras must be >= 1, got 0'),
        (['--duration-s', '0', *log], '--duration-s must be > 0'),
        # One report at 60 s, the warm-up's: nothing to compare it with.
        (['--duration-s', '60', *log], 'no report after the one at the end of the warm-up (60 s)'),
        (['--duration-s', '80', '--warmup-s', '50', '--report-s', '40', *log],
         'warm-up (80 s) to measure memory growth and latency drift: give more than 80 s'),
        # No warm-up: the first report, at 60 s, is the reading the others are compared with.
        (['--duration-s', '60', '--warmup-s', '0', '--report-s', '60', *log],
         'warm-up (60 s)'),
        (['--params-file', str(tmp_path / 'none.yaml'), *log], 'none.yaml: file not found'),
        (['--log', str(a_file / 'soak.log')], f'cannot create folder {a_file}'),
    ]
    for args, message in cases:
        assert soak.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith('hand_pose_soak: error: ') and message in err
        assert err.count('\n') == 1
    assert not (tmp_path / 'soak.log').exists()


def test_node_executables_are_found_beside_the_command_or_on_path(tmp_path, monkeypatch,
                                                                  capsys):
    command = fake_nodes(tmp_path / 'lib')
    monkeypatch.setattr(sys, 'argv', [str(command)])
    assert soak.find_executable('hand_pose_node') == str(tmp_path / 'lib' / 'hand_pose_node')
    monkeypatch.setattr(sys, 'argv', [str(tmp_path / 'hand_pose_soak')])
    monkeypatch.setenv('PATH', str(tmp_path / 'lib'))
    assert soak.find_executable('hand_pose_node') == str(tmp_path / 'lib' / 'hand_pose_node')
    monkeypatch.setenv('PATH', str(tmp_path))
    assert soak.main(['--log', str(tmp_path / 'soak.log')]) == 2
    assert 'node executable synthetic_camera_node found neither in' in capsys.readouterr().err


def test_stops_early_when_every_process_has_died(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', [str(fake_nodes(tmp_path))])
    log = tmp_path / 'soak.log'
    # Without the early stop this would wait a minute and print a report row first.
    assert soak.main(['--duration-s', '120', '--report-s', '60', '--warmup-s', '0',
                      '--log', str(log)]) == 1
    captured = capsys.readouterr()
    assert 'every node process has exited' in captured.err
    assert '[' not in captured.out  # no report row: it stopped within the first period


def test_report_rows_name_every_node_in_full(capsys):
    camera = {'in': 30, 'out': 28, 'dropped': 1, 'bad': 0, 'p50_ms': 20.0, 'p99_ms': 40.0,
              'alive': 3, 'processes': {name: (100.0 + i, 1.0) for i, name in
                                        enumerate(soak.NODES)}}
    soak.print_row({'t_s': 1.0, 'cameras': {'cam0': camera}}, 30.0)
    out = capsys.readouterr().out
    assert 'hand_pose_node 101 MiB' in out and 'hand_filter_node 102 MiB' in out
    assert 'lost 1' in out
