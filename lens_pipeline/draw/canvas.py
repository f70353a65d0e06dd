"""Fast static figures without matplotlib: a PIL canvas with labelled heatmaps, colour bars, bars,
legends and text rendered once per string.

Why: a matplotlib figure with a colour bar and a few hundred labels costs 0.3-2 s to lay out and
draw; the same picture composed from numpy blocks and cached glyph masks costs milliseconds, so
the figures stage is bound by PNG encoding rather than by text layout. `Canvas.finish` maps the
picture onto one fixed 8-bit palette (the colour maps it used, resampled, plus its text and line
colours), because a palette PNG encodes several times faster than RGB; a cell's colour is then
its colour map's colour at the nearest of those ~200 levels. Every size here is in
pixels of the written PNG (no dpi, no bbox trimming): `FONT_PX` is the smallest text on any
built-in figure, and figures are kept within `MAX_WIDTH` so the viewer shows them unscaled.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lens_pipeline.draw import colormap

FONT_PX = 12  # the smallest text size (em, px) on a built-in figure; DejaVu's capitals are then 9 px tall
TITLE_PX = 14
MAX_WIDTH = 880  # the viewer's large figure box: wider images would be shrunk
TEXT = (34, 34, 34)
MUTED = (90, 90, 90)
FRAME = (150, 150, 150)
WHITE = (255, 255, 255)


@functools.cache
def font(size: int = FONT_PX) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, so `plotting.token_label`'s glyph check holds) at `size` px."""
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)  # left-to-right labels: raqm's shaping only costs


@functools.lru_cache(maxsize=4096)
def glyph(char: str, size: int = FONT_PX) -> tuple[np.ndarray, float]:
    """One character rendered once: its coverage mask (line height tall, with room for overhang) and advance."""
    face = font(size)
    ascent, descent = face.getmetrics()
    advance = face.getlength(char)
    mask = Image.new("L", (math.ceil(advance) + 3, ascent + descent), 0)
    ImageDraw.Draw(mask).text((1, 0), char, fill=255, font=face)
    return np.asarray(mask), advance


@functools.lru_cache(maxsize=65536)
def text_mask(text: str, size: int = FONT_PX, vertical: bool = False) -> Image.Image:
    """A string as an 8-bit coverage mask, line height tall (same baseline for all), composed from cached
    glyphs (a figure's labels share few characters but many strings); `vertical` reads bottom to top."""
    glyphs = [glyph(char, size) for char in text]
    width = text_width(text, size)
    mask = np.zeros((glyphs[0][0].shape[0] if glyphs else line_height(size), width + 2), np.uint8)
    x = 0.0
    for coverage, advance in glyphs:
        left = int(round(x))
        region = mask[:, left : left + coverage.shape[1]]
        np.maximum(region, coverage[:, : region.shape[1]], out=region)
        x += advance
    image = Image.fromarray(mask[:, 1 : width + 1])
    return image.transpose(Image.Transpose.ROTATE_90) if vertical else image


@functools.lru_cache(maxsize=65536)
def mask_array(text: str, size: int = FONT_PX) -> np.ndarray:
    """`text_mask` as a numpy array (for composing many labels before one paste)."""
    return np.asarray(text_mask(text, size))


@functools.lru_cache(maxsize=65536)
def text_width(text: str, size: int = FONT_PX) -> int:
    """The width of `text_mask(text, size)`, from the glyphs' advances (no mask is built)."""
    return max(1, math.ceil(sum(glyph(char, size)[1] for char in text)) + 2)


def line_height(size: int = FONT_PX) -> int:
    ascent, descent = font(size).getmetrics()
    return ascent + descent


def fit_text(text: str, width: int, size: int = FONT_PX) -> str:
    """`text`, cut with '…' until it fits `width` px."""
    if text_width(text, size) <= width:
        return text
    while len(text) > 1 and text_width(text + "…", size) > width:
        text = text[:-1]
    return text + "…"


@functools.cache
def dark_text_table(cmap: str) -> np.ndarray:
    """[256] bool: is black text the readable choice on colour index i (`colormap.text_color`)?"""
    return np.array([colormap.text_color("#%02x%02x%02x" % tuple(rgb)) == colormap.TEXT_DARK for rgb in colormap.lut(cmap)])


@dataclass(frozen=True)
class Grid:
    """Where a heatmap's cells lie: cell (row, col) spans x + col*cell_w .. , y + row*cell_h .."""

    x: int
    y: int
    cell_w: int
    cell_h: int
    rows: int
    cols: int

    def cell(self, row: int, col: int) -> tuple[int, int]:
        """Top-left pixel of a cell."""
        return self.x + col * self.cell_w, self.y + row * self.cell_h

    def center(self, row: int, col: int) -> tuple[int, int]:
        x, y = self.cell(row, col)
        return x + self.cell_w // 2, y + self.cell_h // 2

    @property
    def width(self) -> int:
        return self.cols * self.cell_w

    @property
    def height(self) -> int:
        return self.rows * self.cell_h


class Canvas:
    """A white RGB image to compose a figure on; `grids` records each heatmap drawn (for tests and tools)."""

    def __init__(self, width: int, height: int) -> None:
        self.image = Image.new("RGB", (int(width), int(height)), WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.grids: list[Grid] = []
        self.sizes: set[int] = set()  # every text size used: tests check none is below FONT_PX
        self.cmaps: set[str] = set()  # colour maps drawn, for the palette of `finish`
        self.inks: set[tuple[int, int, int]] = {WHITE, TEXT, MUTED, FRAME, (0, 0, 0)}  # other flat colours used

    @classmethod
    def from_array(cls, rgb: np.ndarray) -> "Canvas":
        """A canvas holding an [H, W, 3] uint8 picture already composed in numpy."""
        picture = cls(1, 1)
        picture.image = Image.fromarray(rgb)
        picture.draw = ImageDraw.Draw(picture.image)
        return picture

    def finish(self) -> Image.Image:
        """The picture as a palette ("P") image: each pixel the nearest colour of `palette_image`."""
        return self.image.quantize(palette=palette_image(tuple(sorted(self.cmaps)), tuple(sorted(self.inks))),
                                   dither=Image.Dither.NONE)

    def text(self, x: float, y: float, text: str, size: int = FONT_PX, color: tuple[int, int, int] = TEXT,
             anchor: str = "lt", vertical: bool = False) -> int:
        """Write `text` with its box anchored at (x, y): anchor = horizontal l/m/r + vertical t/m/b.
        Returns the width it took."""
        if not text:
            return 0
        self.sizes.add(size)
        self.inks.add(color)
        mask = text_mask(text, size, vertical)
        w, h = mask.size
        left = x - {"l": 0, "m": w / 2, "r": w}[anchor[0]]
        top = y - {"t": 0, "m": h / 2, "b": h}[anchor[1]]
        self.draw.bitmap((int(round(left)), int(round(top))), mask, fill=color)  # fewer checks than Image.paste
        return w

    def heatmap(self, x: int, y: int, index: np.ndarray, cmap: str, cell_w: int, cell_h: int,
                masked: np.ndarray | None = None) -> Grid:
        """uint8 colour indices [rows, cols] as cells of cell_w x cell_h px; `masked` cells in MASKED_COLOR."""
        rows, cols = index.shape
        self.cmaps.add(cmap)
        rgb = colormap.lut(cmap).take(index, axis=0)
        if masked is not None:
            self.inks.add(tuple(bytes.fromhex(colormap.MASKED_COLOR[1:])))  # type: ignore[arg-type]
            rgb[masked] = np.frombuffer(bytes.fromhex(colormap.MASKED_COLOR[1:]), np.uint8)
        block = np.broadcast_to(rgb[:, None, :, None], (rows, cell_h, cols, cell_w, 3)).reshape(rows * cell_h, cols * cell_w, 3)
        self.image.paste(Image.fromarray(block), (x, y))
        grid = Grid(x, y, cell_w, cell_h, rows, cols)
        self.grids.append(grid)
        return grid

    def cell_texts(self, grid: Grid, texts: np.ndarray, index: np.ndarray, cmap: str, size: int = FONT_PX) -> None:
        """Each cell's text centred in it, black or white by the cell's colour, cut to fit. Composed in
        numpy as two coverage layers over the grid, then pasted once per colour."""
        dark = dark_text_table(cmap)
        layers = np.zeros((2, grid.height, grid.width), np.uint8)  # 0: black text, 1: white text
        for (row, col), text in np.ndenumerate(texts):
            mask = mask_array(fit_text(str(text), grid.cell_w - 4, size), size)
            h, w = mask.shape
            top = row * grid.cell_h + (grid.cell_h - h) // 2
            left = col * grid.cell_w + (grid.cell_w - w) // 2
            y0, x0 = max(top, 0), max(left, 0)
            region = layers[0 if dark[index[row, col]] else 1, y0 : top + h, x0 : left + w]
            np.maximum(region, mask[y0 - top : y0 - top + region.shape[0], x0 - left : x0 - left + region.shape[1]], out=region)
        self.sizes.add(size)
        for layer, color in zip(layers, ((0, 0, 0), WHITE)):
            if layer.any():
                self.draw.bitmap((grid.x, grid.y), Image.fromarray(layer), fill=color)

    def frame(self, grid: Grid) -> None:
        self.draw.rectangle((grid.x - 1, grid.y - 1, grid.x + grid.width, grid.y + grid.height), outline=FRAME)

    def x_labels(self, grid: Grid, labels: list[str], vertical: bool = False, size: int = FONT_PX, limit: int = 90) -> int:
        """Column labels under a grid, thinned to every n-th when they would overlap; returns n."""
        step = max(1, math.ceil(line_height(size) / grid.cell_w)) if vertical else 1
        for col in range(0, len(labels), step):
            cx, _ = grid.center(0, col)
            if vertical:
                self.text(cx, grid.y + grid.height + 3, fit_text(labels[col], limit, size), size, anchor="mt", vertical=True)
            else:
                self.text(cx, grid.y + grid.height + 3, fit_text(labels[col], grid.cell_w - 2, size), size, anchor="mt")
        return step

    def y_labels(self, grid: Grid, labels: list[str], size: int = FONT_PX, width: int = 200) -> int:
        """Row labels left of a grid, thinned to every n-th when rows are shorter than a line; returns n."""
        step = max(1, math.ceil((line_height(size) - 2) / grid.cell_h))
        for row in range(0, len(labels), step):
            _, cy = grid.center(row, 0)
            self.text(grid.x - 4, cy, fit_text(labels[row], width, size), size, anchor="rm")
        return step

    def colorbar(self, x: int, y: int, height: int, cmap: str, ticks: list[tuple[float, str]],
                 label: str = "", width: int = 12) -> int:
        """A vertical colour bar (colour index 255 on top) with ticks at fractions 0..1 of its height;
        returns the width it took."""
        self.cmaps.add(cmap)
        column = np.arange(height - 1, -1, -1) * colormap.N_COLORS // height
        block = np.repeat(colormap.lut(cmap).take(column.astype(np.uint8), axis=0)[:, None, :], width, axis=1)
        self.image.paste(Image.fromarray(block), (x, y))
        self.draw.rectangle((x - 1, y - 1, x + width, y + height), outline=FRAME)
        widest = 0
        for fraction, text in ticks:
            ty = y + height - 1 - fraction * (height - 1)
            self.draw.line((x + width, ty, x + width + 3, ty), fill=TEXT)
            widest = max(widest, self.text(x + width + 5, ty, text, anchor="lm"))
        if label:
            self.text(x + width + 8 + widest, y + height / 2, label, anchor="mm", vertical=True)
        return width + 8 + widest + (line_height() if label else 0)

    def legend(self, x: int, y: int, items: list[tuple[tuple[int, int, int], str]], size: int = FONT_PX) -> int:
        """Colour swatches with their meaning, in one row; returns the x after the last item."""
        h = line_height(size)
        for color, text in items:
            self.inks.add(color)
            self.draw.rectangle((x, y + 2, x + h - 4, y + h - 2), fill=color, outline=FRAME)
            x += h + self.text(x + h, y, text, size) + 14
        return x

    def wrap(self, x: int, y: int, text: str, width: int, size: int = FONT_PX, color: tuple[int, int, int] = MUTED) -> int:
        """Write `text` word-wrapped to `width` px; returns the y below it."""
        line = ""
        for word in text.split(" "):
            trial = f"{line} {word}".strip()
            if line and text_width(trial, size) > width:
                self.text(x, y, line, size, color)
                y += line_height(size)
                line = word
            else:
                line = trial
        if line:
            self.text(x, y, line, size, color)
            y += line_height(size)
        return y


GREY_LEVELS = 24  # a ramp from black to white: anti-aliased text on white and on cells


@functools.lru_cache(maxsize=64)
def palette_image(cmaps: tuple[str, ...], inks: tuple[tuple[int, int, int], ...]) -> Image.Image:
    """A 256-colour palette: the inks, a grey ramp, each colour map's blend of text on white, and the
    colour maps resampled evenly into what is left (all 256 entries when nothing else is needed)."""
    inks = inks[: 256 - GREY_LEVELS - 16]
    greys = np.repeat(np.linspace(0, 255, GREY_LEVELS).round().astype(np.uint8)[:, None], 3, axis=1)
    fixed = np.concatenate([np.array(inks, dtype=np.uint8).reshape(-1, 3), greys])
    per_map = (256 - len(fixed)) // max(1, len(cmaps))
    ramps = [colormap.lut(name)[np.linspace(0, colormap.N_COLORS - 1, per_map).round().astype(int)] for name in cmaps]
    table = np.concatenate([fixed, *ramps]).astype(np.uint8)
    image = Image.new("P", (1, 1))
    image.putpalette(table.tobytes() + bytes(3 * (256 - len(table))))
    return image


def wrapped_lines(text: str, width: int, size: int = FONT_PX) -> int:
    """How many lines `Canvas.wrap` needs for `text`."""
    count, line = 0, ""
    for word in text.split(" "):
        trial = f"{line} {word}".strip()
        if line and text_width(trial, size) > width:
            count, line = count + 1, word
        else:
            line = trial
    return count + (1 if line else 0)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values within [low, high] (matplotlib's MaxNLocator, without a figure)."""
    from matplotlib.ticker import MaxNLocator

    if not high > low:
        return [low]
    return [float(t) for t in MaxNLocator(count).tick_values(low, high) if low - 1e-12 <= t <= high + 1e-12]


def number(value: float) -> str:
    return f"{value:.3g}"
