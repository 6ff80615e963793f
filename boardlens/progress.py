"""Progress of long jobs: a tqdm bar on a terminal, plain periodic lines in a log file.

    bar = Progress(total=6000, unit="step")   # on stderr
    bar.show(n, "loss 2.31 2,400 tok/s")      # terminal: tqdm redraws; file or pipe: one line per every_s
    bar.write("step 500: held-out ...")       # a line of its own (above the bar on a terminal)
    bar.close()

tqdm's `\\r` redraws would turn a log file into one unreadable line of megabytes (it writes
them whatever the stream), so a stream that is not a terminal gets one plain line every
`every_s` seconds (and the first one at once) instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(self, total: int | None, unit: str, stream: TextIO | None = None, every_s: float = 30.0,
                 initial: int = 0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.unit, self.every_s = total, unit, every_s
        self._last = -float("inf")
        self._bar = None
        if bool(getattr(self.stream, "isatty", lambda: False)()):
            self._bar = tqdm(total=total, initial=initial, unit=unit, file=self.stream, dynamic_ncols=True,
                             mininterval=0.5)

    def show(self, n: int, text: str = "") -> None:
        """Position n (in units) and a short status text."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(n - self._bar.n)  # tqdm throttles the redraws
        elif time.monotonic() - self._last >= self.every_s:
            of = f"/{self.total:,}" if self.total else ""
            self.stream.write(f"{n:,}{of} {self.unit}s" + (f" | {text}" if text else "") + "\n")
            self.stream.flush()
            self._last = time.monotonic()

    def write(self, text: str, file: TextIO | None = None) -> None:
        """A line of its own on `file` (stdout): above the bar on a terminal."""
        if self._bar is not None:
            tqdm.write(text, file=file or sys.stdout)
        else:
            print(text, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
