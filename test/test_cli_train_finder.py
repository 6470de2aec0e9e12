"""hand_pose_train_finder --attach: a checkpoint exported, or another card's finder copied."""

import pytest

pytest.importorskip('torch')
from hand_pose_ros.cli import train_finder  # noqa: E402  (needs torch)
from hand_pose_ros.core import model_io  # noqa: E402


def test_attach_copies_a_cards_finder_and_names_what_is_wrong(bare_card, capsys):
    assert train_finder.main(['--attach', 'default', '--model', str(bare_card)]) == 0
    out = capsys.readouterr().out
    assert 'default_finder.onnx' in out and '--fit-hand-score' in out
    assert model_io.read_card(bare_card)['finder']['onnx'] == 'default_finder.onnx'

    assert train_finder.main(['--attach', str(bare_card), '--model', str(bare_card)]) == 2
    assert 'cannot take the finder from itself' in capsys.readouterr().err
    missing = bare_card.with_name('missing.pt')
    assert train_finder.main(['--attach', str(missing), '--model', str(bare_card)]) == 2
    assert 'missing.pt' in capsys.readouterr().err
    assert train_finder.main(['--attach', 'no_such_model', '--model', str(bare_card)]) == 2
    assert 'no_such_model' in capsys.readouterr().err


def test_attach_refuses_what_is_not_a_finder_checkpoint(bare_card, tmp_path, capsys):
    import torch

    before = bare_card.read_text()
    for name, content in (('dict.pt', {'model': {'w': torch.zeros(2)}, 'step': 1}),
                          ('other.pt', {'weights': 1})):
        torch.save(content, tmp_path / name)
    (tmp_path / 'text.pt').write_text('not a checkpoint')
    for name in ('dict.pt', 'other.pt', 'text.pt'):
        assert train_finder.main(['--attach', str(tmp_path / name),
                                  '--model', str(bare_card)]) == 2
        err = capsys.readouterr().err
        assert err == f'hand_pose_train_finder: error: {tmp_path / name}: not a finder ' \
                      f'checkpoint (hand_pose_train_finder writes them as ' \
                      f'<output-dir>/checkpoint.pt)\n'
    assert bare_card.read_text() == before


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / 'run'
    assert train_finder.main(['--output-dir', str(out), '--resume', '--steps', '1']) == 2
    assert f'cannot resume: no checkpoint {out / "checkpoint.pt"}' in capsys.readouterr().err
    assert not out.exists()  # refused before anything was rendered


def test_without_torch_the_tool_says_what_to_install(monkeypatch, capsys):
    import sys

    from hand_pose_ros.cli import train_finder

    # As in a ROS workspace install, which has no torch: the import of torch fails.
    monkeypatch.setitem(sys.modules, 'torch', None)
    import hand_pose_ros.core

    monkeypatch.delitem(sys.modules, 'hand_pose_ros.core.finder_training', raising=False)
    monkeypatch.delattr(hand_pose_ros.core, 'finder_training', raising=False)
    with pytest.raises(SystemExit) as stop:
        train_finder.main(['--help'])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('hand_pose_train_finder: error: needs PyTorch')
    assert 'pip install torch onnx' in err and 'Traceback' not in err
