"""Colour lookup: a matplotlib colormap sampled once into 256 entries, applied by integer index.

Fast-path figures never call matplotlib per figure. Values are binned exactly as
`matplotlib.colormaps[name](value)` bins them (floor(v * 256), clipped to 0..255), so a pixel's
colour is the colormap's colour of the cached value. PNGs are written in palette mode: the
lookup table becomes the PNG palette and each pixel is one byte, which encodes ~4x faster than
RGB (measured by python -m scripts.bench.figures).
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

N_COLORS = 256
ATTENTION_CMAP = "viridis"  # perceptually uniform; 0 is dark, so the empty causal triangle recedes
SIGNED_CMAP = "RdBu_r"  # diverging, for values with a meaningful zero (neuron activations)
MASKED_COLOR = "#eceef2"  # no value at all: a causal model's future keys, a non-finite activation
TEXT_DARK, TEXT_LIGHT = "#000000", "#ffffff"  # text on a coloured cell: see text_color()


@functools.cache
def lut(name: str = ATTENTION_CMAP) -> np.ndarray:
    """[256, 3] uint8 RGB table of a matplotlib colormap (built once per name)."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name].resampled(N_COLORS)
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; any matplotlib colormap name works, e.g. viridis") from None
    table = cmap(np.arange(N_COLORS), bytes=True)[:, :3]
    table.flags.writeable = False  # shared between figures
    return table


@functools.cache
def palette(name: str = ATTENTION_CMAP) -> bytes:
    """The lookup table as the 768 bytes `PIL.Image.putpalette` takes."""
    return lut(name).tobytes()


def to_index(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Values -> uint8 colour indices, binned like matplotlib (below vmin -> 0, above vmax -> 255)."""
    span = np.float32(vmax - vmin) if vmax > vmin else np.float32(1.0)  # a constant row: one colour
    scaled = np.subtract(values, np.float32(vmin), dtype=np.float32)
    scaled *= np.float32(N_COLORS) / span
    np.fmax(scaled, 0, out=scaled)  # fmax/fmin also send NaN to 0 (matplotlib would draw it blank)
    np.fmin(scaled, N_COLORS - 1, out=scaled)
    return scaled.astype(np.uint8)


LOG_FLOOR = 1e-3  # the log scale's lowest weight: 0.001 and below share the darkest colour

# Attention colour scales: weight in 0..1 -> position on the colour map in 0..1. The table the
# figures use and the one the viewer receives (display.facts) both come from here.
SCALES: dict[str, str] = {
    "linear": "linear",
    "sqrt": "square root (shows small weights)",
    "log": f"log10 from {LOG_FLOOR:g} to 1 (shows very small weights)",
}
DEFAULT_SCALE = "sqrt"  # with the first token left out, late layers' spread-out weights stay visible


def scaled(values: np.ndarray, scale: str = DEFAULT_SCALE) -> np.ndarray:
    """Attention weights -> float32 positions 0..1 on the colour map under `scale` (SCALES)."""
    values = np.asarray(values, dtype=np.float32)
    if scale == "linear":
        return values
    if scale == "sqrt":
        return np.sqrt(np.maximum(values, 0, dtype=np.float32))
    if scale == "log":
        floor = np.float32(LOG_FLOOR)
        return (np.log10(np.maximum(values, floor)) - np.log10(floor)) / -np.log10(floor)
    raise ValueError(f"unknown colour scale {scale!r}; choose one of {', '.join(SCALES)}")


def scale_index_edges(scale: str) -> list[float]:
    """[257] weights where each colour index starts under `scale` (index i covers edges[i] <= w < edges[i+1]):
    the viewer bins a weight by these, so its colours are the figures' colours without the rule in JS."""
    positions = np.arange(N_COLORS + 1, dtype=np.float64) / N_COLORS
    if scale == "linear":
        weights = positions
    elif scale == "sqrt":
        weights = positions**2
    elif scale == "log":
        weights = LOG_FLOOR ** (1.0 - positions)
        weights[0] = 0.0
    else:
        raise ValueError(f"unknown colour scale {scale!r}; choose one of {', '.join(SCALES)}")
    return [float(w) for w in weights]


def upscale(index: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole number: each cell becomes scale x scale pixels."""
    if scale == 1:
        return index
    return np.repeat(np.repeat(index, scale, axis=0), scale, axis=1)


def indexed_image(index: np.ndarray, cmap: str = ATTENTION_CMAP) -> Image.Image:
    """A 2-D uint8 index array as a palette ("P") image coloured by `cmap`."""
    index = np.ascontiguousarray(index, dtype=np.uint8)
    image = Image.frombuffer("P", (index.shape[1], index.shape[0]), index, "raw", "P", 0, 1)
    image.putpalette(palette(cmap))
    return image


def png_bytes(image: Image.Image, compress_level: int = 1) -> bytes:
    """PNG-encode; level 1 because these images are re-made from the cache, not archived."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def hex_colors(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> list[str]:
    """One '#rrggbb' per value, for HTML; a non-finite value gets MASKED_COLOR."""
    table = lut(cmap)
    values = np.asarray(values)
    finite = np.isfinite(values).reshape(-1)
    return ["#%02x%02x%02x" % tuple(table[i]) if ok else MASKED_COLOR
            for i, ok in zip(to_index(values, vmin, vmax).reshape(-1), finite)]


@functools.lru_cache(maxsize=4096)  # backgrounds come from 256-entry tables: few distinct ones
def text_color(background_hex: str) -> str:
    """Black or white, whichever reads better on the background (WCAG relative luminance)."""
    r, g, b = (int(background_hex[i : i + 2], 16) / 255 for i in (1, 3, 5))
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return TEXT_DARK if luminance > 0.179 else TEXT_LIGHT
