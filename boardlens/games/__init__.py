"""Games: rules, tokenizers and board-state labellers, one subpackage per game, each
registering a `boardlens.games.base.Game` in `boardlens.registry.GAMES`."""
