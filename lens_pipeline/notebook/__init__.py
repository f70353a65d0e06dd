"""Notebook: the viewer's views as widgets, and a save path opened from Python."""
