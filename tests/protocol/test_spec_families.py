"""SPEC.md's table of the built-in games' label families is the code's: names, board shapes,
class names of multi-class families and masked classes, in the games' order."""

import re
from pathlib import Path

from boardlens.registry import GAMES

SPEC = Path(__file__).resolve().parents[2] / "protocol" / "SPEC.md"


def _rows():
    text = SPEC.read_text().split("<!-- families:")[1].split("<!-- /families -->")[0]
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith("`"):
            yield cells


def test_the_spec_lists_every_family_of_the_built_in_games_as_the_code_defines_it():
    rows = list(_rows())
    want = [(g, f) for g in ("othello", "chess") for f in GAMES[g].families()]
    assert [(r[0], r[1].strip("`")) for r in rows] == [(g, f.name) for g, f in want]
    for (_, fam), (_, _, shape, classes, masked) in zip(want, rows, strict=True):
        assert shape == f"{fam.shape[0]} x {fam.shape[1]}", fam.name
        assert masked == ", ".join(map(str, fam.masked_classes)), fam.name
        if fam.class_names:  # every class value with its name, in order
            named = re.findall(r"(\d+) (\w+)", classes)
            assert [(int(v), n) for v, n in named][: fam.num_classes] == list(enumerate(fam.class_names)), fam.name
        else:
            assert fam.num_classes == 2 and classes.startswith("1: "), fam.name
