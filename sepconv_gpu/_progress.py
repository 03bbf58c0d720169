"""A dependency-free progress bar for long work (the main job, the benchmark runner).

On a terminal it redraws one line; elsewhere (CI logs) it prints a line now and then.
Nothing is shown for work that finishes within `delay` seconds.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total, label="", stream=None, delay=0.5, width=30, log_every=5.0):
        self.total, self.label, self.done = max(int(total), 1), label, 0
        self.stream = stream if stream is not None else sys.stderr
        self.delay, self.width, self.log_every = delay, width, log_every
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_log = self.start
        self._shown = False

    def update(self, n=1, note=""):
        self.done = min(self.done + n, self.total)
        now = time.perf_counter()
        elapsed = now - self.start
        if elapsed < self.delay and self.done < self.total:
            return
        if not self.tty and now - self._last_log < self.log_every and self.done < self.total:
            return
        self._last_log = now
        self._shown = True
        frac = self.done / self.total
        filled = int(round(frac * self.width))
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done}/{self.total} {elapsed:5.1f}s eta {eta:5.1f}s {note}")
        self.stream.write(("\r" + line[:120].ljust(120)) if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self._shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
