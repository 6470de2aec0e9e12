import threading

from hand_pose_ros.core.frame_slot import LatestFrameSlot


def test_drop_oldest_and_close():
    slot = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.dropped == 2
    assert slot.take(0.0) == 3
    assert slot.take(0.01) is None
    got = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    consumer.start()
    slot.put('frame')
    consumer.join(5.0)
    assert got == ['frame']
    slot.close()
    assert slot.closed and slot.take(5.0) is None
