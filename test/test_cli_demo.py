"""hand_pose_demo: bad options and start-up failures end with one line and exit status 2."""

from hand_pose_ros.cli.demo import main


def test_bad_input_gives_one_line(tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    out = str(tmp_path / 'out')
    cases = [
        (['--gif-frames', '0', '--out', out], '--gif-frames must be >= 1, got 0'),
        (['--duration', '0', '--out', out], '--duration must be > 0'),
        (['--out', str(a_file)], f'--out: cannot create folder {a_file}'),
        # These fail as the nodes start.
        (['--camera', 'bogus', '--out', out], "camera='bogus' is not one of"),
        (['--model', 'nope', '--out', out], "model 'nope'"),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith('hand_pose_demo: error: ') and message in err
        assert err.count('\n') == 1
