"""Per-point filter state arrays with a common reset (base of the point smoothers)."""

import numpy as np


class PointStateFilter:
    """
    A filter for N points whose state is a set of per-point arrays.

    Subclasses list their arrays in ``STATE`` as ``name: (trailing shape, reset value)``.

    :param config: the subclass's configuration.
    :param num_points: number of points N.
    """

    STATE = {}

    def __init__(self, config, num_points):
        self.config = config
        self.num_points = num_points
        self.reset()

    def reset(self, mask=None):
        """Forget the state of all points, or of the points where mask is True."""
        for name, (shape, value) in self.STATE.items():
            if mask is None:
                setattr(self, name, np.full((self.num_points, *shape), value))
            else:
                getattr(self, name)[mask] = value
