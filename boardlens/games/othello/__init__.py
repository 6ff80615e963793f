"""Othello: vectorised engine, OthelloGPT tokenizer, board-state labels."""
