"""
One Euro filter (Casiez, Roussel and Vogel, CHI 2012) for sets of 3D points.

A first-order low-pass whose cutoff rises with the filtered speed: at rest it removes jitter
(cutoff ``min_cutoff_hz``), in fast motion it lets the signal through with little lag
(cutoff ``min_cutoff_hz + beta * speed``). Driven by message stamps, so a variable frame rate
and dropped frames only change the per-step smoothing factor.
"""

import numpy as np

from hand_pose_ros.core.filters.point_state import PointStateFilter


def smoothing_factor(dt_s, cutoff_hz):
    """Return the exponential smoothing factor of a first-order low-pass for a time step."""
    tau = 1.0 / (2.0 * np.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


class OneEuroFilter(PointStateFilter):
    """
    Independent One Euro filters for N points in 3D (speed = norm of the 3D velocity).

    :param config: OneEuroConfig (min_cutoff_hz, beta in Hz per m/s, d_cutoff_hz).
    :param num_points: number of points N.
    """

    STATE = {'value': ((3,), np.nan), 'velocity': ((3,), 0.0), 'stamp_s': ((), np.nan)}

    def update(self, stamp_s, points, mask=None):
        """
        Filter one sample.

        :param stamp_s: sample time, seconds.
        :param points: (N, 3) samples.
        :param mask: (N,) bool, points to update (default all); others keep their state.
        :return: (N, 3) filtered values (NaN for points never updated).
        """
        points = np.asarray(points, dtype=np.float64)
        mask = np.ones(self.num_points, bool) if mask is None else np.asarray(mask, bool)
        mask = mask & np.all(np.isfinite(points), axis=1)
        new = mask & np.isnan(self.stamp_s)
        self.value[new] = points[new]
        self.velocity[new] = 0.0
        self.stamp_s[new] = stamp_s
        dt = stamp_s - self.stamp_s
        step = mask & ~new & (dt > 0)
        if np.any(step):
            dt = dt[step, None]
            cfg = self.config
            raw_velocity = (points[step] - self.value[step]) / dt
            alpha_d = smoothing_factor(dt, cfg.d_cutoff_hz)
            velocity = self.velocity[step] + alpha_d * (raw_velocity - self.velocity[step])
            speed = np.linalg.norm(velocity, axis=1, keepdims=True)
            alpha = smoothing_factor(dt, cfg.min_cutoff_hz + cfg.beta * speed)
            self.value[step] += alpha * (points[step] - self.value[step])
            self.velocity[step] = velocity
            self.stamp_s[step] = stamp_s
        return self.value.copy()
