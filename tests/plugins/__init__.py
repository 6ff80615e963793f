"""Plugins the tests load through BOARDLENS_PLUGINS, as a user would load theirs."""
