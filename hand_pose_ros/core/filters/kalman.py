"""
Constant-velocity Kalman filter for sets of 3D points, driven by stamps.

Each point has position and velocity; the three axes are independent and share one 2x2
covariance per point. The process model is a piecewise-constant white acceleration of
standard deviation ``process_noise_m_s2``, so the filter follows ramps without steady-state
lag and its uncertainty grows with the time since the last measurement (dropped frames,
gaps). The prediction also serves the motion gates and the gap filling of the hand filter.
"""

import numpy as np

from hand_pose_ros.core.filters.point_state import PointStateFilter


class ConstantVelocityKalman(PointStateFilter):
    """
    Independent constant-velocity Kalman filters for N points in 3D.

    :param config: KalmanConfig (process_noise_m_s2, measurement_noise_m, initial_speed_m_s).
    :param num_points: number of points N.
    """

    STATE = {'position': ((3,), np.nan), 'velocity': ((3,), 0.0),
             'covariance': ((2, 2), 0.0), 'stamp_s': ((), np.nan)}

    @property
    def initialised(self):
        """Return the (N,) bool mask of points that have a state."""
        return np.isfinite(self.stamp_s)

    def _propagate(self, stamp_s):
        """Return position and covariance predicted to stamp_s (state unchanged)."""
        dt = np.where(self.initialised, stamp_s - self.stamp_s, 0.0)
        dt = np.maximum(dt, 0.0)
        dt2 = dt ** 2
        position = self.position + self.velocity * dt[:, None]
        q = self.config.process_noise_m_s2 ** 2
        p = self.covariance
        covariance = np.empty_like(p)
        covariance[:, 0, 0] = (p[:, 0, 0] + dt * (p[:, 0, 1] + p[:, 1, 0]) + dt2 * p[:, 1, 1]
                               + q * dt ** 4 / 4.0)
        covariance[:, 0, 1] = p[:, 0, 1] + dt * p[:, 1, 1] + q * dt ** 3 / 2.0
        covariance[:, 1, 0] = covariance[:, 0, 1]
        covariance[:, 1, 1] = p[:, 1, 1] + q * dt2
        return position, covariance

    def predict(self, stamp_s):
        """
        Return predicted positions (N, 3) and per-axis position variances (N,) at stamp_s.

        The state is not changed; points without a state are NaN.
        """
        position, covariance = self._propagate(stamp_s)
        return position, covariance[:, 0, 0]

    def update(self, stamp_s, points, mask=None, measurement_std_m=None):
        """
        Advance all points to stamp_s and correct the masked ones with measurements.

        :param stamp_s: measurement time, seconds (not earlier than the last update).
        :param points: (N, 3) measured positions.
        :param mask: (N,) bool, points measured (default all finite points).
        :param measurement_std_m: (N,) or scalar per-axis noise, default from the config.
        :return: (N, 3) filtered positions (NaN for points never measured).
        """
        points = np.asarray(points, dtype=np.float64)
        finite = np.all(np.isfinite(points), axis=1)
        mask = finite if mask is None else np.asarray(mask, bool) & finite
        if measurement_std_m is None:
            measurement_std_m = self.config.measurement_noise_m
        r = np.broadcast_to(np.asarray(measurement_std_m, dtype=np.float64) ** 2,
                            (self.num_points,))
        initialised = self.initialised
        position, covariance = self._propagate(stamp_s)
        advance = initialised
        self.position[advance] = position[advance]
        self.covariance[advance] = covariance[advance]
        self.stamp_s[advance] = stamp_s
        new = mask & ~initialised
        self.position[new] = points[new]
        self.velocity[new] = 0.0
        self.covariance[new] = 0.0
        self.covariance[new, 0, 0] = r[new]
        self.covariance[new, 1, 1] = self.config.initial_speed_m_s ** 2
        self.stamp_s[new] = stamp_s
        correct = mask & initialised
        if np.any(correct):
            p = self.covariance[correct]
            innovation_var = p[:, 0, 0] + r[correct]
            gain = p[:, :, 0] / innovation_var[:, None]
            residual = points[correct] - self.position[correct]
            self.position[correct] += gain[:, 0, None] * residual
            self.velocity[correct] += gain[:, 1, None] * residual
            self.covariance[correct] = p - gain[:, :, None] * p[:, None, 0, :]
        return self.position.copy()
