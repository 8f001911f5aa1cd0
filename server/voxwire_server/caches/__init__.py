"""Caches that keep repeated work off the models: synthesis phrases and template prefixes."""
