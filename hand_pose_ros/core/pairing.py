"""Pairing of depth images with camera info by stamp (``message_filters`` is not needed)."""

from collections import deque


class StampPairer:
    """
    Keep recent camera infos and pair each image with the info of its stamp.

    An info with the same stamp (within ``max_stamp_diff_ns``) wins; when the camera
    publishes its info unsynchronised, the most recently received info is the fallback.

    :param max_stamp_diff_ns: largest stamp difference still counted as a match.
    :param history: number of infos kept.
    """

    def __init__(self, max_stamp_diff_ns=0, history=30):
        if max_stamp_diff_ns < 0 or history < 1:
            raise ValueError('max_stamp_diff_ns must be >= 0 and history >= 1')
        self.max_stamp_diff_ns = int(max_stamp_diff_ns)
        self._infos = deque(maxlen=int(history))

    def add(self, stamp_ns, info):
        """Remember an info received with ``stamp_ns``."""
        self._infos.append((int(stamp_ns), info))

    def match(self, stamp_ns):
        """
        Return ``(info, exact)`` for an image stamp.

        :return: the info with the nearest stamp within the tolerance and ``True``, else the
            latest info and ``False``; ``(None, False)`` before any info arrived.
        """
        if not self._infos:
            return None, False
        # Newest first, so that of several infos with the same stamp the latest wins.
        best = min(reversed(self._infos), key=lambda item: abs(item[0] - stamp_ns))
        if abs(best[0] - stamp_ns) <= self.max_stamp_diff_ns:
            return best[1], True
        return self._infos[-1][1], False

    def discard_after(self, stamp_ns):
        """Forget infos stamped after ``stamp_ns`` (the old loop after a jump back in time)."""
        kept = [item for item in self._infos if item[0] <= stamp_ns]
        self._infos.clear()
        self._infos.extend(kept)
