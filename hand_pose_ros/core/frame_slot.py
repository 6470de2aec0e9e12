"""A one-frame hand-over buffer between a receiving callback and a processing thread."""

import threading


class LatestFrameSlot:
    """
    Hold only the newest unprocessed item (drop-oldest policy).

    A producer that outruns the consumer replaces the waiting item, which is counted as
    dropped, so the consumer never works on stale frames.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self._closed = False
        self.dropped = 0

    def put(self, item):
        """Offer an item; return True when it replaced (dropped) an unprocessed one."""
        with self._condition:
            replaced = self._item is not None
            self.dropped += int(replaced)
            self._item = item
            self._condition.notify()
            return replaced

    def take(self, timeout_s=None):
        """Return the waiting item (None on timeout or after ``close``)."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout_s)
            item, self._item = self._item, None
            return item

    def close(self):
        """Wake the consumer and make further ``take`` calls return at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self):
        """Return True after ``close``."""
        return self._closed
