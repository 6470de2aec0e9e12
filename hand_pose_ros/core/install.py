"""Where an installed hand_pose_ros keeps its shared files (models, config, launch)."""

from pathlib import Path
import sys


def share_dirs():
    """
    Return the installed share directories of the package, most specific first.

    The ament index's (a colcon workspace, a ROS install) when one is found, then
    ``<prefix>/share/hand_pose_ros`` of the running Python, where ``pip install .`` puts the
    data files of ``setup.py``. The source tree's own folders are not among them.
    """
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(Path(get_package_share_directory('hand_pose_ros', print_warning=False)))
    except (ImportError, LookupError, OSError, ValueError):
        pass
    prefix_share = Path(sys.prefix) / 'share' / 'hand_pose_ros'
    if prefix_share not in dirs:
        dirs.append(prefix_share)
    return dirs
