"""Pictures of attention patterns: one head (fast pixel PNG, or labelled matplotlib), all heads
of a layer as a grid, and every layer x head of a prompt as one overview image.

Row = query position, column = key position, colour = attention weight on a fixed 0..1 scale,
so a colour means the same weight in every figure. The fast paths never touch matplotlib:
values are binned once per layer into colour indices (`colormap.to_index`) and each head is a
whole-number nearest-neighbour enlargement of those indices.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from lens_pipeline.draw import colormap
from lens_pipeline.draw.builtins.plotting import label_ticks, new_figure, title_for, token_labels
from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.store.cache import Cache

BACKGROUND = (255, 255, 255)
LABEL_COLOR = (40, 40, 40)

# Colour indices of the last layer used, per open cache: the stage draws a layer's heads in a
# row, so binning the [H, T, T] layer once serves every head. Weak keys: a closed, dropped cache
# frees its entry.
_layer_indices: "weakref.WeakKeyDictionary[Cache, tuple[int, np.ndarray]]" = weakref.WeakKeyDictionary()


def layer_color_indices(cache: Cache, layer: int) -> np.ndarray:
    """uint8 [H, T, T] colour indices of one layer's patterns (0..1 -> 0..255, matplotlib's binning)."""
    memo = _layer_indices.get(cache)
    if memo is None or memo[0] != layer:
        memo = (layer, colormap.to_index(cache.layer_patterns(layer)))
        _layer_indices[cache] = memo
    return memo[1]


def pixel_scale(n_tokens: int, side: int) -> int:
    """The whole-number enlargement that brings n_tokens cells closest to `side` pixels (at least 1).

    Closest rather than at-least: encoding time grows with the pixel count, and 100 tokens at 2 px
    (200 px) encodes ~2.5x faster than at 3 px (300 px)."""
    return max(1, round(side / max(n_tokens, 1)))


@register_figure(scope="head", formats="png")
def attention_heatmap(cache: Cache, layer: int, head: int, cmap: str = colormap.ATTENTION_CMAP, side: int = 200) -> Image.Image:
    """One head's attention as pixels (row = query, column = key; colour = weight on 0..1)."""
    index = layer_color_indices(cache, layer)[head]
    return colormap.indexed_image(colormap.upscale(index, pixel_scale(cache.n_tokens, side)), cmap)


@register_figure(scope="head", formats="png", default=False)  # matplotlib per head: opt-in
def attention_labeled(cache: Cache, layer: int, head: int, cmap: str = colormap.ATTENTION_CMAP, max_tokens: int = 40) -> Figure:
    """One head's attention with the tokens written along both axes (prompts up to max_tokens)."""
    n = cache.n_tokens
    if n > max_tokens:
        raise SkipFigure(f"{n} tokens: too many to label (max_tokens={max_tokens}); attention_heatmap draws every prompt")
    pattern = cache.pattern(layer, head)
    if cache.causal:  # keys after the query are impossible, not merely ignored: grey them out
        pattern = np.ma.masked_array(pattern, mask=np.triu(np.ones((n, n), dtype=bool), k=1))
    labels = token_labels(cache.tokens)
    side = max(4.0, 0.2 * n + 2.0)
    figure = new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    image = axes.imshow(pattern, cmap=_with_grey_bad(cmap), vmin=0.0, vmax=1.0, interpolation="nearest")
    label_ticks(axes, "x", labels)
    label_ticks(axes, "y", labels)
    axes.set_xlabel("key (attended to)")
    axes.set_ylabel("query (attending)")
    axes.set_title(title_for(cache, f"L{layer} H{head}"), fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    return figure


def _with_grey_bad(name: str) -> Colormap:
    """The colormap with masked cells (a causal model's future keys) in light grey."""
    colormap.lut(name)  # one clear error for an unknown name
    return matplotlib.colormaps[name].with_extremes(bad="#d9d9d9")


# --- several heads in one image --------------------------------------------------------------


@dataclass(frozen=True)
class TileLayout:
    """Where each tile of a grid image goes: tiles of `side` px, `gap` px apart, after margins."""

    side: int
    gap: int
    left: int  # margin for row labels
    top: int  # margin for column labels
    rows: int
    cols: int

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """(x, y) of a tile's top-left pixel."""
        return self.left + col * (self.side + self.gap), self.top + row * (self.side + self.gap)

    @property
    def size(self) -> tuple[int, int]:
        return (self.left + self.cols * (self.side + self.gap) - self.gap,
                self.top + self.rows * (self.side + self.gap) - self.gap)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=11)


def _paste_tiles(layout: TileLayout, tiles: dict[tuple[int, int], np.ndarray], cmap: str) -> np.ndarray:
    """RGB canvas with each uint8 index tile coloured through the lookup table."""
    width, height = layout.size
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    table = colormap.lut(cmap)
    for (row, col), index in tiles.items():
        x, y = layout.origin(row, col)
        canvas[y : y + index.shape[0], x : x + index.shape[1]] = table.take(index, axis=0)
    return canvas


def _max_pool(index: np.ndarray, factor: int) -> np.ndarray:
    """Shrink [..., T, T] by a whole number, keeping each block's maximum so thin lines survive."""
    if factor == 1:
        return index
    n = index.shape[-1]
    padded_n = -(-n // factor) * factor
    padded = np.zeros(index.shape[:-2] + (padded_n, padded_n), dtype=index.dtype)
    padded[..., :n, :n] = index
    blocks = padded.reshape(index.shape[:-2] + (padded_n // factor, factor, padded_n // factor, factor))
    return blocks.max(axis=(-3, -1))


def fit_tile(n_tokens: int, cell: int) -> tuple[int, int]:
    """(enlarge, shrink): whole-number factors, one of them 1, that bring n_tokens pixels closest to `cell`."""
    if n_tokens <= cell:
        return max(1, round(cell / n_tokens)), 1
    return 1, max(1, round(n_tokens / cell))


LABEL_HEIGHT = 14  # px of text above a tile


def layer_grid_layout(n_tokens: int, n_heads: int, side: int) -> tuple[TileLayout, int]:
    """Near-square grid of a layer's heads, in reading order, and the pixels per token."""
    scale = pixel_scale(n_tokens, side)
    cols = math.ceil(math.sqrt(n_heads))
    layout = TileLayout(side=n_tokens * scale, gap=LABEL_HEIGHT + 4, left=4, top=LABEL_HEIGHT + 4,
                        rows=math.ceil(n_heads / cols), cols=cols)
    return layout, scale


def overview_layout(n_tokens: int, n_layers: int, n_heads: int, cell: int) -> tuple[TileLayout, int, int]:
    """Layers as rows, heads as columns; returns the layout and the (enlarge, shrink) factors."""
    enlarge, shrink = fit_tile(n_tokens, cell)
    side = -(-n_tokens // shrink) * enlarge
    return TileLayout(side=side, gap=3, left=34, top=LABEL_HEIGHT + 2, rows=n_layers, cols=n_heads), enlarge, shrink


@register_figure(scope="layer", formats="png")
def attention_layer_grid(cache: Cache, layer: int, cmap: str = colormap.ATTENTION_CMAP, side: int = 128) -> Image.Image:
    """All heads of one layer in a grid, each labelled (pixels, colour = weight on 0..1)."""
    layout, scale = layer_grid_layout(cache.n_tokens, cache.n_heads, side)
    indices = layer_color_indices(cache, layer)
    tiles = {divmod(head, layout.cols): colormap.upscale(indices[head], scale) for head in range(cache.n_heads)}
    image = Image.fromarray(_paste_tiles(layout, tiles, cmap))
    draw, font = ImageDraw.Draw(image), _font()
    for head in range(cache.n_heads):
        x, y = layout.origin(*divmod(head, layout.cols))
        draw.text((x, y - LABEL_HEIGHT - 2), f"L{layer} H{head}", fill=LABEL_COLOR, font=font)
    return image


@register_figure(scope="prompt", formats="png")
def attention_overview(cache: Cache, cmap: str = colormap.ATTENTION_CMAP, cell: int = 64) -> Image.Image:
    """Every layer (rows) x head (columns) of a prompt in one image, like bertviz's model view.

    Each head becomes a tile of about `cell` px: short prompts are enlarged by a whole number,
    long ones shrunk by whole-number max-pooling (so a one-pixel diagonal stays visible).
    """
    layout, enlarge, shrink = overview_layout(cache.n_tokens, cache.n_layers, cache.n_heads, cell)
    tiles = {}
    for layer in range(cache.n_layers):
        pooled = _max_pool(layer_color_indices(cache, layer), shrink)
        for head in range(cache.n_heads):
            tiles[(layer, head)] = colormap.upscale(pooled[head], enlarge)
    image = Image.fromarray(_paste_tiles(layout, tiles, cmap))
    draw, font = ImageDraw.Draw(image), _font()
    for head in range(cache.n_heads):
        x, _ = layout.origin(0, head)
        draw.text((x, 1), f"H{head}", fill=LABEL_COLOR, font=font)
    for layer in range(cache.n_layers):
        _, y = layout.origin(layer, 0)
        draw.text((2, y + max(0, layout.side // 2 - 6)), f"L{layer}", fill=LABEL_COLOR, font=font)
    return image
