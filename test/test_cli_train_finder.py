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
