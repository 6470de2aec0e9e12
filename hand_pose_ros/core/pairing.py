"""
Pairing of depth images with camera infos or colour images by stamp.

(``message_filters`` is not needed.)
"""

from collections import deque
import threading


class StampPairer:
    """
    Keep recent messages (camera infos, colour images) to pair depth images with by stamp.

    A message with the same stamp (within ``max_stamp_diff_ns``) wins; when the camera
    publishes its info unsynchronised, the most recently received info is the fallback
    (``match`` says which it returned). Messages arrive in a subscription callback while
    a worker thread pairs them, so every method holds the pairer's lock.

    :param max_stamp_diff_ns: largest stamp difference still counted as a match.
    :param history: number of messages kept.
    """

    def __init__(self, max_stamp_diff_ns=0, history=30):
        if max_stamp_diff_ns < 0 or history < 1:
            raise ValueError('max_stamp_diff_ns must be >= 0 and history >= 1')
        self.max_stamp_diff_ns = int(max_stamp_diff_ns)
        self._messages = deque(maxlen=int(history))
        self._arrived = threading.Condition()

    def add(self, stamp_ns, message):
        """Remember a message received with ``stamp_ns``."""
        with self._arrived:
            self._messages.append((int(stamp_ns), message))
            self._arrived.notify_all()

    def match(self, stamp_ns):
        """
        Return ``(message, exact)`` for an image stamp.

        :return: the message with the nearest stamp within the tolerance and ``True``, else
            the latest message and ``False``; ``(None, False)`` before any arrived.
        """
        with self._arrived:
            return self._match(stamp_ns)

    def wait_match(self, stamp_ns, timeout_s):
        """
        Return :meth:`match` once a message of the stamp is there or ``timeout_s`` passed.

        For streams whose messages of one stamp arrive in any order (a depth image before
        its colour image).
        """
        with self._arrived:
            self._arrived.wait_for(lambda: self._match(stamp_ns)[1], timeout=timeout_s)
            return self._match(stamp_ns)

    def _match(self, stamp_ns):
        if not self._messages:
            return None, False
        # Newest first, so that of several messages with the same stamp the latest wins.
        best = min(reversed(self._messages), key=lambda item: abs(item[0] - stamp_ns))
        if abs(best[0] - stamp_ns) <= self.max_stamp_diff_ns:
            return best[1], True
        return self._messages[-1][1], False

    def discard_after(self, stamp_ns):
        """Forget messages stamped after ``stamp_ns`` (the old loop after a jump back in time)."""
        with self._arrived:
            kept = [item for item in self._messages if item[0] <= stamp_ns]
            self._messages.clear()
            self._messages.extend(kept)
