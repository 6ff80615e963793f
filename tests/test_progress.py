"""Progress: a tqdm bar on a terminal, plain lines at most every every_s in a file."""

import io

from boardlens.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_file_gets_plain_lines():
    tty = _Tty()
    bar = Progress(100, "step", tty)
    bar.show(40, "loss 1.5")
    bar.close()
    drawn = tty.getvalue()
    assert "40/100" in drawn and "loss 1.5" in drawn and "\r" in drawn  # redrawn in place
    log = io.StringIO()
    bar = Progress(1000, "step", log, every_s=3600)
    for i in range(100):
        bar.show(i, f"loss {i}")
    bar.close()
    assert log.getvalue() == "0/1,000 steps | loss 0\n"  # no escapes, no flood
    log = io.StringIO()
    bar = Progress(None, "token", log, every_s=0)
    bar.show(5)
    bar.show(7, "x")
    assert log.getvalue() == "5 tokens\n7 tokens | x\n"
