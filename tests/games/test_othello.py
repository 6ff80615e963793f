"""Othello engine, tokenizer and labels against a small independent reference engine."""

import numpy as np
import pytest

from boardlens.games.othello import tokenizer
from boardlens.games.othello.engine import bits_to_bool, play_random, replay
from boardlens.games.othello.labels import FAMILIES, label_games

DIRS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


class RefBoard:
    """Plain-Python Othello on an 8x8 list: 0 empty, 1 black, 2 white."""

    def __init__(self):
        self.b = [[0] * 8 for _ in range(8)]
        self.b[3][3] = self.b[4][4] = 2
        self.b[3][4] = self.b[4][3] = 1
        self.turn = 1

    def _flips(self, r, c, me):
        if self.b[r][c]:
            return []
        out = []
        for dr, dc in DIRS:
            line, rr, cc = [], r + dr, c + dc
            while 0 <= rr < 8 and 0 <= cc < 8 and self.b[rr][cc] == 3 - me:
                line.append((rr, cc))
                rr, cc = rr + dr, cc + dc
            if line and 0 <= rr < 8 and 0 <= cc < 8 and self.b[rr][cc] == me:
                out += line
        return out

    def legal(self, me):
        return sorted(8 * r + c for r in range(8) for c in range(8) if self._flips(r, c, me))

    def play(self, sq):
        r, c = divmod(sq, 8)
        f = self._flips(r, c, self.turn)
        assert f, f"illegal {sq}"
        self.b[r][c] = self.turn
        for rr, cc in f:
            self.b[rr][cc] = self.turn
        nxt = 3 - self.turn
        if self.legal(nxt):
            self.turn = nxt
        elif not self.legal(self.turn):
            self.turn = 0  # over


def test_start_position_and_first_move():
    rec = replay(np.array([[19]]))  # d3-style opening: black plays row 2 col 3
    assert rec.lengths[0] == 1
    black = set(np.flatnonzero(bits_to_bool(rec.black[0, 0])))
    white = set(np.flatnonzero(bits_to_bool(rec.white[0, 0])))
    assert black == {19, 27, 28, 35} and white == {36}
    assert set(np.flatnonzero(bits_to_bool(rec.legal[0, 0]))) == {18, 20, 34}
    assert rec.to_move[0, 0] == 1


def test_random_games_match_reference():
    rec = play_random(60, seed=1)
    for g in range(60):
        ref = RefBoard()
        for i in range(rec.lengths[g]):
            sq = int(rec.moves[g, i])
            mover = ref.turn
            assert sq in ref.legal(mover)
            ref.play(sq)
            grid = np.array(ref.b).reshape(64)
            assert (bits_to_bool(rec.black[g, i]) == (grid == 1)).all()
            assert (bits_to_bool(rec.white[g, i]) == (grid == 2)).all()
            to_move = -1 if ref.turn == 0 else ref.turn - 1
            assert rec.to_move[g, i] == to_move
            want_legal = ref.legal(ref.turn) if ref.turn else []
            assert sorted(np.flatnonzero(bits_to_bool(rec.legal[g, i]))) == want_legal
        assert ref.turn == 0, "a random game only stops when nobody can move"


def test_invariants_over_many_games():
    rec = play_random(2000, seed=2)
    black, white = bits_to_bool(rec.black), bits_to_bool(rec.white)
    assert not (black & white).any()
    n = np.arange(60)[None, :]
    played = n < rec.lengths[:, None]
    stones = (black | white).sum(-1)
    assert (stones[played] == np.broadcast_to(n + 5, stones.shape)[played]).all()
    assert (rec.moves[~played] == -1).all() and (rec.moves[played] >= 0).all()
    assert set(np.unique(rec.moves[played])).isdisjoint(tokenizer.CENTRE)
    assert rec.lengths.min() >= 9  # the shortest possible Othello game has 9 moves


def test_games_with_passes_are_handled():
    rec = play_random(5000, seed=3)
    mover_seq = rec.to_move[:, :-1]
    # A pass shows as the same side to move after two consecutive moves.
    passes = (mover_seq[:, 1:] == mover_seq[:, :-1]) & (mover_seq[:, 1:] >= 0)
    assert passes.any()
    assert (rec.lengths < 60).any()


def test_replay_rejects_illegal_and_late_moves():
    with pytest.raises(ValueError, match="illegal"):
        replay(np.array([[0]]))
    with pytest.raises(ValueError, match="0..63"):
        replay(np.array([[99]]))
    rec = play_random(200, seed=4)
    g = int(np.argmin(rec.lengths))
    assert rec.lengths[g] < 60
    late = rec.moves[g : g + 1].copy()
    late[0, rec.lengths[g]] = 0
    with pytest.raises(ValueError):
        replay(late)


def test_tokenizer_round_trip_and_vocab():
    squares = np.array([s for s in range(64) if s not in tokenizer.CENTRE])
    tokens = tokenizer.encode(squares)
    assert tokens.tolist() == list(range(1, 61))
    assert (tokenizer.decode(tokens) == squares).all()
    assert tokenizer.encode(np.array([-1]))[0] == tokenizer.PAD
    with pytest.raises(ValueError):
        tokenizer.encode(np.array([27]))
    with pytest.raises(ValueError):
        tokenizer.decode(np.array([61]))


def test_a_game_over_right_after_a_pass_labels_the_side_that_did_not_move_last_as_mine():
    """After a pass one side moves twice, so move parity names the wrong side as the one that
    did not move last (about 1 game in 1,024 ends so)."""
    rec = play_random(8000, seed=11)
    last = rec.lengths.astype(np.int64) - 1
    g_idx = np.arange(len(last))
    square = rec.moves[g_idx, last].astype(np.int64)
    black_last = ((rec.black[g_idx, last] >> square.astype(np.uint64)) & np.uint64(1)).astype(bool)
    made_last = np.where(black_last, 0, 1)  # the colour of the disc the last move put down
    by_parity = last % 2  # move i is black's by parity when i is even
    after_pass = np.flatnonzero((made_last != by_parity) & (rec.lengths <= 59))
    assert len(after_pass) > 0
    state = label_games(rec, 59)["mine_theirs_empty"]
    for g in after_pass:
        i = int(last[g])
        theirs = bits_to_bool(rec.black[g, i] if made_last[g] == 0 else rec.white[g, i]).reshape(8, 8)
        assert ((state[g, i] == 2) == theirs).all(), g  # the last mover's discs are theirs
        assert (state[g, 58] == state[g, i]).all()  # positions past the end keep the final label


def test_labels_mine_theirs_follow_the_side_to_move():
    rec = play_random(300, seed=5)
    labels = label_games(rec, 59)
    state, legal = labels["mine_theirs_empty"], labels["legal_moves"]
    assert state.shape == (300, 59, 8, 8) and legal.shape == (300, 59, 8, 8)
    for g in range(300):
        for i in range(min(59, rec.lengths[g])):
            black = bits_to_bool(rec.black[g, i]).reshape(8, 8)
            mover = rec.to_move[g, i]
            if mover < 0:  # over: the side that did not make the last move (whose disc is on its square)
                mover = 1 - int(black[divmod(int(rec.moves[g, i]), 8)] == 0)
            mine = black if mover == 0 else bits_to_bool(rec.white[g, i]).reshape(8, 8)
            assert ((state[g, i] == 1) == mine).all()
            assert ((legal[g, i] == 1) == bits_to_bool(rec.legal[g, i]).reshape(8, 8)).all()
            # A legal square is always empty.
            assert (state[g, i][legal[g, i] == 1] == 0).all()
    assert [f.num_bsps for f in FAMILIES] == [128, 64]
