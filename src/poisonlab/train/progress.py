"""Progress of a training run as log lines, for output that is not a terminal.

A progress bar needs a terminal; piped into a file or a CI log it prints nothing for as long as the
run lasts. :class:`ProgressLines` logs one line at most every ``every`` seconds on the
``poisonlab.progress`` logger (the CLI shows it at INFO whatever ``-v`` says).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("poisonlab.progress")


class ProgressLines:
    """``step S/T (P%), loss L, N steps/s`` every ``every`` seconds and at the last step."""

    def __init__(self, total: int, first: int, every: float = 30.0, what: str = "train") -> None:
        self.total, self.first, self.every, self.what = total, first, every, what
        self.start = self.last = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and step < self.total:
            return
        self.last = now
        rate = (step - self.first) / (now - self.start) if now > self.start else 0.0
        log.info("%s: step %d/%d (%.0f%%), loss %.4f, %.2f steps/s", self.what, step, self.total,
                 100 * step / max(self.total, 1), loss, rate)
