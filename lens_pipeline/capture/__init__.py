"""Capture: prompts and models in, per-prompt arrays out (one batch at a time)."""
