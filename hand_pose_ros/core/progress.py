"""A progress line for long command-line jobs (training, rendering, recordings)."""

import math
import sys
import time


class ProgressBar:
    """
    A progress line with live loss on stderr (redrawn on a TTY, periodic lines otherwise).

    :param total: total steps.
    :param stream: output stream.
    :param interval_s: minimum seconds between redraws (TTY) or lines (log files).
    """

    def __init__(self, total, stream=None, interval_s=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.interval_s = interval_s if interval_s is not None else (0.2 if self.tty else 30.0)
        self._last = -math.inf

    def update(self, step, text, force=False):
        """Show progress at ``step`` (1-based) with an extra status text."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s and step < self.total:
            return
        self._last = now
        filled = int(30 * step / self.total)
        line = f'[{"#" * filled}{"." * (30 - filled)}] {step}/{self.total} {text}'
        self.stream.write(('\r' + line + '\x1b[K') if self.tty else line + '\n')
        if self.tty and step >= self.total:
            self.stream.write('\n')
        self.stream.flush()
