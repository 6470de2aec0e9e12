import threading

import pytest

from hand_pose_ros.core.pairing import StampPairer


def test_exact_stamp_wins_over_latest():
    pairer = StampPairer()
    assert pairer.match(10) == (None, False)
    for stamp in (10, 20, 30):
        pairer.add(stamp, f'info{stamp}')
    assert pairer.match(20) == ('info20', True)
    assert pairer.match(25) == ('info30', False)   # unsynchronised: latest
    pairer.discard_after(20)                       # time jumped back to 20
    assert pairer.match(25) == ('info20', False)
    pairer.discard_after(0)
    assert pairer.match(20) == (None, False)


def test_tolerance_and_history_bound():
    pairer = StampPairer(max_stamp_diff_ns=5, history=2)
    for stamp in (100, 200, 300):
        pairer.add(stamp, stamp)
    assert pairer.match(204) == (200, True)
    assert pairer.match(100) == (300, False)       # 100 fell out of the history
    with pytest.raises(ValueError):
        StampPairer(history=0)


def test_latest_info_wins_among_equal_stamps():
    pairer = StampPairer()
    pairer.add(50, 'broken')
    pairer.add(50, 'fixed')
    assert pairer.match(50) == ('fixed', True)


def test_waiting_for_a_message_of_the_stamp():
    pairer = StampPairer()
    pairer.add(10, 'colour10')
    assert pairer.wait_match(10, 5.0) == ('colour10', True)   # there already: no wait
    assert pairer.wait_match(20, 0.05) == ('colour10', False)  # never comes: the timeout
    later = threading.Timer(0.05, pairer.add, (20, 'colour20'))
    later.start()
    assert pairer.wait_match(20, 5.0) == ('colour20', True)    # comes while waiting
    later.join()


def test_adding_while_another_thread_pairs():
    pairer = StampPairer(history=5)
    stop = threading.Event()

    def feed():
        stamp = 0
        while not stop.is_set():
            pairer.add(stamp, stamp)
            stamp += 1

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        for _ in range(20000):
            message, _ = pairer.match(-1)  # iterates over the history as it grows
            assert message is None or message >= 0
    finally:
        stop.set()
        feeder.join()
