"""Latent interpretation against the board's ground truth: descriptions, FADE-style scores,
causal checks (faithfulness, activation scaling) and the static feature browser."""
