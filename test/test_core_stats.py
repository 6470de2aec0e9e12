import math

from hand_pose_ros.core.stats import LatencyWindow, RateMeter


def test_rate_and_silence_outlive_the_window():
    meter = RateMeter(window_s=1.0)
    assert meter.silence_s(3.0, since_s=1.0) == 2.0          # nothing yet: since start
    for k in range(11):
        meter.tick(10.0 + 0.1 * k)
    assert abs(meter.rate_hz(11.0) - 10.0) < 1e-9
    assert meter.rate_hz(20.0) == 0.0                        # window emptied
    assert meter.silence_s(20.0, since_s=0.0) == 9.0         # still since the last frame


def test_latency_percentiles():
    window = LatencyWindow(size=3)
    assert math.isnan(window.percentile(50))
    for value in (5.0, 1.0, 2.0, 3.0):
        window.add(value)
    assert len(window) == 3 and window.percentile(50) == 2.0
