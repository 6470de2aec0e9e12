"""Where an installed hand_pose_ros keeps its shared files (models, config, launch)."""

import os
from pathlib import Path
import sys
import sysconfig


def share_dirs():
    """
    Return the installed share directories of the package, most specific first.

    The ament index's (a colcon workspace, a ROS install) when one is found, then
    ``share/hand_pose_ros`` under each place ``pip install .`` may put the data files of
    ``setup.py``: the running Python's prefix, its install scheme's data directory (on
    Debian and Ubuntu ``/usr/local`` for the system Python) and the user scheme's
    (``pip install --user``). The source tree's own folders are not among them.
    """
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory('hand_pose_ros', print_warning=False)))
    except (ImportError, LookupError, OSError, ValueError):
        pass
    roots = [sys.prefix, sysconfig.get_path('data')]
    try:
        roots.append(sysconfig.get_path('data', f'{os.name}_user'))
    except KeyError:
        pass
    for root in roots:
        share = Path(root) / 'share' / 'hand_pose_ros'
        if root and share not in dirs:
            dirs.append(share)
    return dirs
