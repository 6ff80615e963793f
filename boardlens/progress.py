"""One status line for long jobs: redrawn in place on a terminal, plain lines in a log file.

    bar = StatusLine()            # stderr
    bar.show("step 10/100 ...")   # terminal: overwrites the line; file or pipe: one line per every_s
    bar.end()                     # terminal: moves to a new line

`\\r` escapes in a log file turn it into one unreadable line of megabytes; a file gets one
line every `every_s` seconds (and the first one at once) instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class StatusLine:
    def __init__(self, stream: TextIO | None = None, every_s: float = 30.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._last = -float("inf")
        self._drawn = False

    def show(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self._drawn = True
        elif time.monotonic() - self._last >= self.every_s:
            self.stream.write(text + "\n")
            self._last = time.monotonic()
        else:
            return
        self.stream.flush()

    def end(self) -> None:
        """Finish the line on a terminal, so that the next output starts on its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
