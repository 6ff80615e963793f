"""Chess: ChessGPT transcripts and tokenizer (python-chess rules)."""
