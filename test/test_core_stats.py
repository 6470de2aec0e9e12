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


def test_recording_and_reading_from_two_threads():
    # A node's worker ticks while its diagnostics timer (and a status call) read: nothing
    # may raise (unlocked, two threads trimming one deque popped it when it was empty).
    import sys
    import threading
    import time

    meter = RateMeter(window_s=1e-3)
    errors, done = [], threading.Event()

    def read():
        while not done.is_set():
            try:
                meter.rate_hz(1e9)            # far ahead: empties the window each time
            except IndexError as error:
                errors.append(error)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)              # switch threads as often as possible
    readers = [threading.Thread(target=read) for _ in range(3)]
    try:
        for reader in readers:
            reader.start()
        # About 2 s of ticks (the race showed within a second without the lock).
        deadline, k = time.monotonic() + 2.0, 0
        while time.monotonic() < deadline and not errors:
            meter.tick(k * 1e-4)
            k += 1
    except IndexError as error:
        errors.append(error)
    finally:
        done.set()
        for reader in readers:
            reader.join()
        sys.setswitchinterval(interval)
    assert errors == []
