"""Style checks with ament's own linters (flake8 and pep257 configurations)."""

from pathlib import Path

from ament_flake8.main import main_with_errors
from ament_pep257.main import main as pep257_main

ROOT = Path(__file__).resolve().parents[1]
PATHS = [str(ROOT / p) for p in ('hand_pose_ros', 'test', 'launch', 'setup.py')]


def test_flake8():
    rc, errors = main_with_errors(argv=['--config', str(ROOT / 'setup.cfg'), *PATHS])
    assert rc == 0, f'{len(errors)} flake8 errors:\n' + '\n'.join(errors)


def test_pep257():
    rc = pep257_main(argv=[str(ROOT / 'hand_pose_ros'), str(ROOT / 'launch')])
    assert rc == 0, 'pep257 found docstring errors (see captured output)'
