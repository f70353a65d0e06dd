"""Pictures of attention patterns: one head (fast pixel PNG, or labelled matplotlib), all heads
of a layer as a grid, and every layer x head of a prompt as one overview image.

Row = query position, column = key position, colour = attention weight on a fixed 0..1 range,
so a colour means the same weight in every figure. Two options, on every attention figure and
written on it: `scale` (colormap.SCALES: linear, sqrt, log) and `skip_first` (leave out the first
token, whose "attention sink" takes most of the weight in late layers and would leave every
other cell dark). The defaults (sqrt, first token left out) keep late layers' structure visible.
The fast paths never touch matplotlib: values are binned once per layer into colour indices
(`colormap.to_index`) and each head is a whole-number nearest-neighbour enlargement of those.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from PIL import Image

from lens_pipeline.draw import canvas, colormap
from lens_pipeline.draw.builtins.plotting import label_ticks, new_figure, title_for, token_labels
from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.store.cache import Cache
from lens_pipeline.store.head_roles import role_text, roles_beside

BACKGROUND = (255, 255, 255)
LABEL_COLOR = (40, 40, 40)

# Colour indices of the last layer used, per open cache: the stage draws a layer's heads in a
# row, so binning the [H, T, T] layer once serves every head. Weak keys: a closed, dropped cache
# frees its entry.
_layer_indices: "weakref.WeakKeyDictionary[Cache, tuple[tuple, np.ndarray]]" = weakref.WeakKeyDictionary()


def first_shown(n_tokens: int, skip_first: bool) -> int:
    """The first token position drawn: 1 when the first token is left out (only if two or more remain)."""
    return 1 if skip_first and n_tokens > 2 else 0


def layer_color_indices(cache: Cache, layer: int, scale: str = colormap.DEFAULT_SCALE, skip_first: bool = False) -> np.ndarray:
    """uint8 [H, T', T'] colour indices of one layer's patterns under `scale` (matplotlib's binning of the
    scaled weight); T' = T - 1 without the first token's row and column."""
    start = first_shown(cache.n_tokens, skip_first)
    key = (layer, scale, start)
    memo = _layer_indices.get(cache)
    if memo is None or memo[0] != key:
        patterns = cache.layer_patterns(layer)[:, start:, start:]
        memo = (key, colormap.to_index(colormap.scaled(patterns, scale)))
        _layer_indices[cache] = memo
    return memo[1]


def statement(n_tokens: int, scale: str, skip_first: bool) -> str:
    """What a figure's colours mean, written on every attention figure."""
    first = "first token left out" if first_shown(n_tokens, skip_first) else "all tokens"
    return f"colour = attention weight, {scale} scale; {first}"


SCALE_TICKS = {"linear": (0.0, 0.25, 0.5, 0.75, 1.0), "sqrt": (0.0, 0.01, 0.05, 0.2, 0.5, 1.0),
               "log": (0.001, 0.01, 0.1, 1.0)}


@functools.lru_cache(maxsize=64)
def colour_key(cmap: str, scale: str, first: str, width: int) -> np.ndarray:
    """RGB strip under a multi-head figure: a horizontal colour bar with weight ticks placed by the
    scale, and a line saying the scale and whether the first token is shown. Drawn once per choice."""
    bar_w = min(260, width - 8)
    key = canvas.Canvas(max(width, bar_w + 8), 2 * canvas.line_height() + 18)
    positions = np.arange(bar_w) * colormap.N_COLORS // bar_w
    key.image.paste(Image.fromarray(np.repeat(colormap.lut(cmap)[positions][None], 10, axis=0)), (4, 2))
    for weight in SCALE_TICKS.get(scale, SCALE_TICKS["linear"]):
        x = 4 + float(colormap.scaled(np.float32(weight), scale)) * (bar_w - 1)
        key.draw.line((x, 12, x, 15), fill=canvas.TEXT)
        key.text(x, 15, f"{weight:g}", anchor="mt")
    key.text(4, 16 + canvas.line_height(), f"colour = attention weight ({scale} scale); {first}", color=canvas.MUTED)
    return np.asarray(key.image)


def pixel_scale(n_tokens: int, side: int) -> int:
    """The whole-number enlargement that brings n_tokens cells closest to `side` pixels (at least 1).

    Closest rather than at-least: encoding time grows with the pixel count, and 100 tokens at 2 px
    (200 px) encodes ~2.5x faster than at 3 px (300 px)."""
    return max(1, round(side / max(n_tokens, 1)))


def head_name(cache: Cache, layer: int, head: int) -> str:
    """`L18 H6`, and the head's role where the model's head roles give it one: `L18 H6 · induction 0.83`."""
    text = role_text(roles_beside(cache.path), layer, head)
    return f"L{layer} H{head} · {text}" if text else f"L{layer} H{head}"


# Under a one-head picture: "L5 H3 · sqrt scale", the first-token choice and the head's role (blank without one).
CAPTION_LINES = 3


def tile_label(cache: Cache, layer: int, head: int, width: int) -> str:
    """`head_name` within `width` px (a tile and its gap, so not over the next label): its role's
    score left out first, then the role cut."""
    name = head_name(cache, layer, head)
    if canvas.text_width(name) > width and " · " in name:
        name = name.rsplit(" ", 1)[0]  # "L18 H6 · induction"
    return canvas.fit_text(name, width)


@register_figure(scope="head", formats="png")
def attention_heatmap(cache: Cache, layer: int, head: int, cmap: str = colormap.ATTENTION_CMAP, side: int = 200,
                      scale: str = colormap.DEFAULT_SCALE, skip_first: bool = True) -> Image.Image:
    """One head's attention as pixels (row = query, column = key; colour = weight on 0..1, scale and first token stated)."""
    index = layer_color_indices(cache, layer, scale, skip_first)[head]
    cells = colormap.upscale(index, pixel_scale(index.shape[0], side))
    # The caption is drawn in the colour map's own end colours, so the image stays one-byte palette PNG.
    width, line = max(cells.shape[1], 150), canvas.line_height()
    image = Image.new("P", (width, cells.shape[0] + CAPTION_LINES * line + 2), 0)
    image.putpalette(colormap.palette(cmap))
    image.paste(colormap.indexed_image(cells, cmap), (0, 0))
    first = "first token left out" if first_shown(cache.n_tokens, skip_first) else "all tokens"
    role = role_text(roles_beside(cache.path), layer, head)
    lines = [f"L{layer} H{head} · {scale} scale", first] + ([canvas.fit_text(f"role: {role}", width - 4)] if role else [])
    for row, text in enumerate(lines):
        image.paste(colormap.N_COLORS - 1, (2, cells.shape[0] + 1 + row * line), canvas.text_mask(text))
    return image


@register_figure(scope="head", formats="png", default=False)  # matplotlib per head: opt-in
def attention_labeled(cache: Cache, layer: int, head: int, cmap: str = colormap.ATTENTION_CMAP, max_tokens: int = 40,
                      scale: str = colormap.DEFAULT_SCALE, skip_first: bool = True) -> Figure:
    """One head's attention with the tokens written along both axes (prompts up to max_tokens; scale and first token stated)."""
    n = cache.n_tokens
    if n > max_tokens:
        raise SkipFigure(f"{n} tokens: too many to label (max_tokens={max_tokens}); attention_heatmap draws every prompt")
    start = first_shown(n, skip_first)
    pattern = colormap.scaled(cache.pattern(layer, head)[start:, start:], scale)
    if cache.causal:  # keys after the query are impossible, not merely ignored: grey them out
        pattern = np.ma.masked_array(pattern, mask=np.triu(np.ones(pattern.shape, dtype=bool), k=1))
    labels = token_labels(cache.tokens[start:])
    side = max(4.0, 0.2 * n + 2.0)
    figure = new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    image = axes.imshow(pattern, cmap=_with_grey_bad(cmap), vmin=0.0, vmax=1.0, interpolation="nearest")
    label_ticks(axes, "x", labels, fontsize=9)
    label_ticks(axes, "y", labels, fontsize=9)
    axes.set_xlabel("key (attended to)")
    axes.set_ylabel("query (attending)")
    axes.set_title(title_for(cache, head_name(cache, layer, head)) + "\n" + statement(n, scale, skip_first), fontsize=9)
    bar = figure.colorbar(image, ax=axes, shrink=0.8, label=f"attention weight ({scale} scale)")
    weights = SCALE_TICKS.get(scale, SCALE_TICKS["linear"])
    bar.set_ticks([float(colormap.scaled(np.float32(w), scale)) for w in weights], labels=[f"{w:g}" for w in weights])
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
    rows = padded[..., 0::factor, :].copy()  # strided maxima: much faster than .max over two inner axes
    for offset in range(1, factor):
        np.maximum(rows, padded[..., offset::factor, :], out=rows)
    pooled = rows[..., 0::factor].copy()
    for offset in range(1, factor):
        np.maximum(pooled, rows[..., offset::factor], out=pooled)
    return pooled


def fit_tile(n_tokens: int, cell: int) -> tuple[int, int]:
    """(enlarge, shrink): whole-number factors, one of them 1, that bring n_tokens pixels closest to `cell`."""
    if n_tokens <= cell:
        return max(1, round(cell / n_tokens)), 1
    return 1, max(1, round(n_tokens / cell))


LABEL_HEIGHT = canvas.line_height()  # px of text above a tile


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
    return TileLayout(side=side, gap=3, left=36, top=LABEL_HEIGHT + 2, rows=n_layers, cols=n_heads), enlarge, shrink


def _with_key(tiles_rgb: np.ndarray, cmap: str, scale: str, n_tokens: int, skip_first: bool) -> np.ndarray:
    first = "first token left out" if first_shown(n_tokens, skip_first) else "all tokens"
    key = colour_key(cmap, scale, first, tiles_rgb.shape[1])
    out = np.full((tiles_rgb.shape[0] + key.shape[0] + 4, max(tiles_rgb.shape[1], key.shape[1]), 3), 255, np.uint8)
    out[: tiles_rgb.shape[0], : tiles_rgb.shape[1]] = tiles_rgb
    out[tiles_rgb.shape[0] + 4 :, : key.shape[1]] = key
    return out


@register_figure(scope="layer", formats="png")
def attention_layer_grid(cache: Cache, layer: int, cmap: str = colormap.ATTENTION_CMAP, side: int = 128,
                         scale: str = colormap.DEFAULT_SCALE, skip_first: bool = True) -> Image.Image:
    """All heads of one layer in a grid, each labelled (pixels; colour = weight, scale and first token stated)."""
    indices = layer_color_indices(cache, layer, scale, skip_first)
    layout, scale_px = layer_grid_layout(indices.shape[-1], cache.n_heads, side)
    tiles = {divmod(head, layout.cols): colormap.upscale(indices[head], scale_px) for head in range(cache.n_heads)}
    picture = canvas.Canvas.from_array(_with_key(_paste_tiles(layout, tiles, cmap), cmap, scale, cache.n_tokens, skip_first))
    for head in range(cache.n_heads):
        x, y = layout.origin(*divmod(head, layout.cols))
        picture.text(x, y - LABEL_HEIGHT - 2, tile_label(cache, layer, head, layout.side + layout.gap - 4), color=LABEL_COLOR)
    picture.cmaps.add(cmap)
    return picture.finish()  # a palette PNG: a third of the bytes of RGB, and faster to encode


@register_figure(scope="prompt", formats="png")
def attention_overview(cache: Cache, cmap: str = colormap.ATTENTION_CMAP, cell: int = 48,
                       scale: str = colormap.DEFAULT_SCALE, skip_first: bool = True) -> Image.Image:
    """Every layer (rows) x head (columns) of a prompt in one image, like bertviz's model view.

    Each head becomes a tile of about `cell` px: short prompts are enlarged by a whole number,
    long ones shrunk by whole-number max-pooling (so a one-pixel diagonal stays visible).
    """
    n_shown = cache.n_tokens - first_shown(cache.n_tokens, skip_first)
    layout, enlarge, shrink = overview_layout(n_shown, cache.n_layers, cache.n_heads, cell)
    tiles = {}
    for layer in range(cache.n_layers):
        start = first_shown(cache.n_tokens, skip_first)
        # Pool the weights, then colour: the scale and binning never decrease, so the maximum commutes with them.
        pooled = colormap.to_index(colormap.scaled(_max_pool(cache.layer_patterns(layer)[:, start:, start:], shrink), scale))
        for head in range(cache.n_heads):
            tiles[(layer, head)] = colormap.upscale(pooled[head], enlarge)
    picture = canvas.Canvas.from_array(_with_key(_paste_tiles(layout, tiles, cmap), cmap, scale, cache.n_tokens, skip_first))
    for head in range(cache.n_heads):
        x, _ = layout.origin(0, head)
        picture.text(x, 1, f"H{head}", color=LABEL_COLOR)
    for layer in range(cache.n_layers):
        _, y = layout.origin(layer, 0)
        picture.text(2, y + layout.side / 2, f"L{layer}", color=LABEL_COLOR, anchor="lm")
    picture.cmaps.add(cmap)
    return picture.finish()  # a palette PNG: this image is large, and RGB encoding was most of its cost
