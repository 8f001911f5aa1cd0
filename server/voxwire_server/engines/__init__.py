"""Blocking adapters around the model and media libraries; each owns its worker thread(s)."""
