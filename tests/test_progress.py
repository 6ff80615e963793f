"""StatusLine: in place on a terminal, plain lines at most every every_s in a file."""

import io

from boardlens.progress import StatusLine


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_line_redrawn_and_a_file_gets_plain_lines():
    tty = _Tty()
    bar = StatusLine(tty)
    bar.show("a")
    bar.show("b")
    bar.end()
    assert tty.getvalue() == "\r\033[Ka\r\033[Kb\n"
    log = io.StringIO()
    bar = StatusLine(log, every_s=3600)
    for i in range(100):
        bar.show(f"step {i}")
    bar.end()
    assert log.getvalue() == "step 0\n"  # no escapes, no flood
    bar = StatusLine(log, every_s=0)
    bar.show("x")
    bar.show("y")
    assert log.getvalue().endswith("x\ny\n")
