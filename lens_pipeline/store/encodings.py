"""Pattern encodings: how a cache stores attention weights, and the largest error each one brings.

Below the cache format (store/cache.py, which encodes and decodes with them) and the settings'
names (store/settings_text.py, which writes an encoding with its error)."""

from __future__ import annotations

import numpy as np

# Fixed-point encodings store round(p * levels) as unsigned integers: a bounded absolute error
# of half a step, and small weights become small integers that zstd packs tightly.
PATTERN_ENCODINGS: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "q16": np.dtype(np.uint16),
    "q12": np.dtype(np.uint16),
    "q8": np.dtype(np.uint8),
}
FIXED_POINT_LEVELS = {"q16": 65535, "q12": 4095, "q8": 255}
BYTE_PLANE_ENCODINGS = ("q16", "q12")  # stored as [H, 2, ...] uint8: low bytes, high bytes
DEFAULT_PATTERN_ENCODING = "q12"
# Largest absolute error per attention weight each encoding introduces: half a step, plus the
# float32 rounding of p * levels and of the decoding division (2**-23 covers both); for float16,
# half an ulp just below 1.0.
PATTERN_MAX_ERROR: dict[str, float] = {
    "float32": 0.0,
    "float16": 2.0**-12,
    **{name: 0.5 / levels + 2.0**-23 for name, levels in FIXED_POINT_LEVELS.items()},
}
