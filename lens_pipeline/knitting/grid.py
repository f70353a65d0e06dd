"""The stitch grid: palette, gauge, block scaling, quantisation and the stranded adjustment.

Conventions (for users: docs/knitting.md):
  - `Grid.cells[r, s]` is the colour index of row r+1, stitch s+1.
  - Row 1 is the first row knitted (bottom of the chart); stitch 1 is the RIGHTMOST stitch as
    seen on the right side (RS), i.e. the first stitch of an RS row.
  - The chart as drawn (RS view, top row first, left to right) is `cells[::-1, ::-1]`.
  - A data "picture" (row 0 = bottom, column 0 = left edge of the RS) becomes cells by
    reversing its columns: `cells = picture[:, ::-1]`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

Mode = Literal["flat", "round"]
Technique = Literal["stranded", "intarsia"]

CODES: tuple[str, ...] = ("MC", "CC1", "CC2", "CC3", "CC4", "CC5")
# One symbol per colour slot, drawn as shapes (not font glyphs) so SVG and PDF agree.
SYMBOLS: tuple[str, ...] = ("dot", "cross", "disc", "ring", "triangle", "diamond")
MAX_COLOURS = len(CODES)

# Six shades per family, light -> dark, so that data level order = lightness order and the
# chart still reads in greyscale. Names are yarn-shop style; hex is what the chart fills with.
SCHEMES: dict[str, tuple[tuple[str, str], ...]] = {
    "bert": (  # blues for BERT-type encoders
        ("Ice", "#E8F1FA"), ("Powder", "#BBD5EE"), ("Cornflower", "#7FA7D9"),
        ("Cobalt", "#3F6FB5"), ("Navy", "#1F3F7A"), ("Midnight", "#0B1E3F"),
    ),
    "gpt2": (  # greens for GPT-2
        ("Mint", "#E6F4EA"), ("Sage", "#B5DDBF"), ("Fern", "#74B98A"),
        ("Moss", "#3E8E5A"), ("Forest", "#1E5E37"), ("Pine", "#0B2E1A"),
    ),
    "llama": (  # warm oranges into purples for Llama-type decoders
        ("Cream", "#FFF1DC"), ("Apricot", "#FBC58A"), ("Tangerine", "#EE8A3C"),
        ("Rust", "#B9512A"), ("Plum", "#6E2C6B"), ("Aubergine", "#2E1240"),
    ),
    "neutral": (  # fallback for any other family
        ("Natural", "#F4F1EA"), ("Oatmeal", "#D7CFC0"), ("Pebble", "#A39E93"),
        ("Slate", "#6B6F75"), ("Charcoal", "#3A3D42"), ("Black", "#151515"),
    ),
}
# Which of the six shades to use for n colours: spread out so neighbours differ by 15+ in L* (6: one pair
# cannot, and the check says so).
_SHADE_PICKS: dict[int, tuple[int, ...]] = {
    2: (0, 4), 3: (0, 2, 5), 4: (0, 2, 3, 5), 5: (0, 2, 3, 4, 5), 6: (0, 1, 2, 3, 4, 5),
}


@dataclass(frozen=True)
class Colour:
    code: str  # MC, CC1, ...
    name: str
    hex: str
    symbol: str

    def rgb(self) -> tuple[int, int, int]:
        h = self.hex.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)

    def is_dark(self) -> bool:
        r, g, b = self.rgb()
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255 < 0.5

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "name": self.name, "hex": self.hex, "symbol": self.symbol}


def palette_for(family: str, n_colours: int = 3) -> list[Colour]:
    """The family's colour scheme cut to `n_colours` (2..6); unknown families get "neutral"."""
    if not 2 <= n_colours <= MAX_COLOURS:
        raise ValueError(f"colours must be between 2 and {MAX_COLOURS}, not {n_colours}")
    shades = SCHEMES[scheme_name(family)]
    return [
        Colour(CODES[i], shades[pick][0], shades[pick][1], SYMBOLS[i])
        for i, pick in enumerate(_SHADE_PICKS[n_colours])
    ]


def scheme_name(family: str) -> str:
    return family.lower() if family and family.lower() in SCHEMES else "neutral"


@dataclass(frozen=True)
class Gauge:
    stitches_per_10cm: float = 22.0
    rows_per_10cm: float = 30.0

    @property
    def cell_aspect(self) -> float:
        """Chart cell height / width: knitted stitches are wider than tall."""
        return self.stitches_per_10cm / self.rows_per_10cm

    def size_cm(self, width: int, height: int) -> tuple[float, float]:
        return width * 10.0 / self.stitches_per_10cm, height * 10.0 / self.rows_per_10cm

    def as_dict(self) -> dict[str, float]:
        return {"stitches_per_10cm": self.stitches_per_10cm, "rows_per_10cm": self.rows_per_10cm}


@dataclass
class Grid:
    cells: np.ndarray  # int [rows, stitches]; row 1 first, stitch 1 (rightmost on RS) first
    palette: list[Colour]
    gauge: Gauge = field(default_factory=Gauge)
    mode: Mode = "flat"
    technique: Technique = "stranded"
    # duplicate stitch layer: colour worked over the knitted st afterwards, -1 where none
    duplicate: np.ndarray | None = None
    # cells knitted in another colour than the data asked for (stranded_fix="adjust"), marked on the chart
    recoloured: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.cells = np.asarray(self.cells, dtype=np.int16)
        if self.duplicate is not None:
            self.duplicate = np.asarray(self.duplicate, dtype=np.int16)
        if self.recoloured is not None:
            self.recoloured = np.asarray(self.recoloured, dtype=bool)
        if self.cells.ndim != 2:
            raise ValueError("cells must be 2-D [rows, stitches]")
        if self.mode not in ("flat", "round"):
            raise ValueError(f"mode must be 'flat' or 'round', not {self.mode!r}")
        if self.technique not in ("stranded", "intarsia"):
            raise ValueError(f"technique must be 'stranded' or 'intarsia', not {self.technique!r}")
        if self.cells.size and (self.cells.min() < 0 or self.cells.max() >= len(self.palette)):
            raise ValueError("cell colour index outside the palette")

    @property
    def height(self) -> int:
        return int(self.cells.shape[0])

    @property
    def width(self) -> int:
        return int(self.cells.shape[1])

    def row(self, n: int) -> np.ndarray:
        """Row n (1-based) in stitch order 1..W (stitch 1 = rightmost on RS)."""
        return self.cells[n - 1]

    def chart_view(self) -> np.ndarray:
        """Cells as drawn on the RS chart: top row first, leftmost stitch first."""
        return self.cells[::-1, ::-1]

    def finished(self) -> np.ndarray:
        """The picture the finished piece shows: the knitted cells with the duplicate stitches on top."""
        if self.duplicate is None:
            return self.cells
        return np.where(self.duplicate >= 0, self.duplicate, self.cells).astype(np.int16)

    def finished_counts(self) -> dict[str, int]:
        counts = np.bincount(self.finished().ravel(), minlength=len(self.palette))
        return {c.code: int(counts[i]) for i, c in enumerate(self.palette)}

    def code(self, index: int) -> str:
        return self.palette[index].code

    def stitch_counts(self) -> dict[str, int]:
        counts = np.bincount(self.cells.ravel(), minlength=len(self.palette))
        return {c.code: int(counts[i]) for i, c in enumerate(self.palette)}

    def used_colours(self) -> list[int]:
        return sorted(int(i) for i in np.unique(self.cells))

    @classmethod
    def from_chart(
        cls,
        rows: Sequence[str],
        letters: str = "ABCDEF",
        palette: list[Colour] | None = None,
        **kwargs: object,
    ) -> "Grid":
        """Build from a chart drawn as text, top row first, left to right (spaces ignored).

        Letter i of `letters` is palette colour i (A = MC, B = CC1, ...), matching the spec's
        worked example.
        """
        picture_top_first = [[letters.index(ch) for ch in r.replace(" ", "")] for r in rows]
        arr = np.array(picture_top_first, dtype=np.int16)
        n = int(arr.max()) + 1 if arr.size else 1
        pal = palette if palette is not None else palette_for("neutral", max(2, n))
        return cls(arr[::-1, ::-1].copy(), pal, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- block scaling


@dataclass(frozen=True)
class AxisScale:
    """How n data items map to `size` stitches (or rows) on one axis."""

    n: int  # data items (tokens, layers)
    size: int  # stitches or rows available
    pool: int  # data items averaged into one block (1 unless n > size)
    repeat: int  # stitches per block: whole-number nearest-neighbour repetition
    blocks: int  # number of blocks after pooling
    offset: int  # background stitches before the data (centring)

    @property
    def used(self) -> int:
        return self.blocks * self.repeat

    def as_dict(self) -> dict[str, int]:
        return {
            "items": self.n, "size": self.size, "items_per_block": self.pool,
            "stitches_per_block": self.repeat, "blocks": self.blocks,
            "offset": self.offset, "padding": self.size - self.used - self.offset,
        }


def axis_scale(n: int, size: int) -> AxisScale:
    """Whole-number scaling of n items onto size cells: repeat k = size // n when n <= size,
    else average ceil(n / size) items per cell. Leftover cells are split as even padding."""
    if n < 1 or size < 1:
        raise ValueError("need at least one item and one cell")
    pool = 1 if n <= size else math.ceil(n / size)
    blocks = math.ceil(n / pool)
    repeat = max(1, size // blocks)
    offset = (size - blocks * repeat) // 2
    return AxisScale(n, size, pool, repeat, blocks, offset)


def _scale_axis(values: np.ndarray, sc: AxisScale, axis: int) -> np.ndarray:
    v = np.moveaxis(values, axis, 0).astype(np.float64)
    if sc.pool > 1:  # mean of each pool of items; the last pool may be short
        pad = sc.blocks * sc.pool - sc.n
        v = np.concatenate([v, np.full((pad,) + v.shape[1:], np.nan)], axis=0)
        with warnings.catch_warnings():  # an all-NaN pool (keys no query can see) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            v = np.nanmean(v.reshape((sc.blocks, sc.pool) + v.shape[1:]), axis=1)
    v = np.repeat(v, sc.repeat, axis=0)  # nearest neighbour, no interpolation
    out = np.full((sc.size,) + v.shape[1:], np.nan)
    out[sc.offset : sc.offset + sc.used] = v
    return np.moveaxis(out, 0, axis)


@dataclass(frozen=True)
class SquareBlocks:
    """Scale so each data block is near square in centimetres at the gauge, and trim the chart to
    the picture plus an MC border of `border` sts (and as many cm of rows) all round; the border
    narrows (to 1 st) where that keeps more data items apart or makes the blocks bigger."""

    rows_per_stitch: float  # rows that are as tall as one stitch is wide: rows_per_10cm / sts_per_10cm
    border: int = 2

    def border_rows(self, border: int | None = None) -> int:
        b = self.border if border is None else border
        return max(1, round(b * self.rows_per_stitch)) if b else 0


def square_scales(n_rows: int, n_cols: int, width: int, height: int, sq: SquareBlocks) -> tuple[AxisScale, AxisScale]:
    """Both axes pool the same number of items per block (so a token is as wide as it is tall),
    then the largest k sts x j rows blocks with j / k as close to `rows_per_stitch` as whole numbers
    allow that fit inside width x height less the border; the chart is then exactly picture + border.
    Border widths from sq.border down to 1 are tried: the fewest items pooled wins, then the biggest
    blocks, then the widest border; no border only where a chart of 1 st or 1 row per block and a border
    would not fit."""
    best: tuple[tuple[int, ...], AxisScale, AxisScale] | None = None
    for bx in range(sq.border, -1, -1):
        by = sq.border_rows(bx)
        room_x, room_y = max(1, width - 2 * bx), max(1, height - 2 * by)
        pool = max(1, math.ceil(n_cols / room_x), math.ceil(n_rows / room_y))
        nbx, nby = math.ceil(n_cols / pool), math.ceil(n_rows / pool)
        k, j = 1, 1
        for kk in range(1, room_x // nbx + 1):
            jj = max(1, round(kk * sq.rows_per_stitch))
            if jj * nby <= room_y:
                k, j = kk, jj
        overflows = k * nbx + 2 * bx > width or j * nby + 2 * by > height
        key = (int(overflows), int(bx == 0), pool, -k * j, -bx)
        if best is None or key < best[0]:
            best = (key, AxisScale(n_cols, k * nbx + 2 * bx, pool, k, nbx, bx),
                    AxisScale(n_rows, j * nby + 2 * by, pool, j, nby, by))
    assert best is not None
    return best[1], best[2]


def block_scale(
    values: np.ndarray, width: int, height: int, square: SquareBlocks | None = None,
) -> tuple[np.ndarray, AxisScale, AxisScale]:
    """Scale a data picture [n_rows, n_cols] (row 0 = bottom, col 0 = left) to [height, width]
    by whole-number block repetition. Cells outside the data are NaN (they become MC). With
    `square`, blocks are near square at the gauge and the result is the picture plus its border."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError("block_scale wants a 2-D array")
    if square is not None:
        xs, ys = square_scales(values.shape[0], values.shape[1], width, height, square)
    else:
        ys, xs = axis_scale(values.shape[0], height), axis_scale(values.shape[1], width)
    return _scale_axis(_scale_axis(values, ys, 0), xs, 1), xs, ys


def quantise(values: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Colour level = number of thresholds the value is strictly above; NaN -> 0 (MC)."""
    t = np.asarray(sorted(thresholds), dtype=np.float64)
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
    return (v[..., None] > t).sum(axis=-1).astype(np.int16)


# ------------------------------------------------------------------ stranded adjustment


def duplicate_stitch_layer(
    cells: np.ndarray, max_colours: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Stranded rows carry `max_colours`; the picture stays exact. In each row with more, the most
    used colours are knitted (ties: the lower level) and every other stitch is knitted in the
    nearest kept level, then covered by duplicate stitch in its own colour. Returns the knitted
    cells and the duplicate layer (-1 where nothing is worked over)."""
    cells = np.asarray(cells, dtype=np.int16)
    knitted, _ = _reduce_rows(cells, max_colours)
    layer = np.where(knitted != cells, cells, -1).astype(np.int16)
    return knitted, layer


def _reduce_rows(cells: np.ndarray, max_colours: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Rows with more than `max_colours`: keep the most used (ties: the lower level), move every
    other stitch to the nearest kept level (ties: the lower). (row, from, to, stitches) per move."""
    out = np.array(cells, dtype=np.int16, copy=True)
    moves: list[tuple[int, int, int, int]] = []
    for r in range(out.shape[0]):
        row = out[r]
        used, counts = np.unique(row, return_counts=True)
        if len(used) <= max_colours:
            continue
        order = sorted(zip(used.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0]))
        keep = sorted(c for c, _ in order[:max_colours])
        for c, n in order[max_colours:]:
            target = min(keep, key=lambda k: (abs(k - c), k))
            row[row == c] = target
            moves.append((r + 1, c, target, int(n)))
    return out, moves


def limit_colours_per_row(
    cells: np.ndarray, palette: Sequence[Colour], max_colours: int = 2
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Stranded work carries at most `max_colours` per row. In each row that has more, keep the
    most used colours (ties: the lower level, i.e. the background) and move every other stitch
    to the nearest kept level (ties: the lower). Returns the new cells and a change log."""
    out, moves = _reduce_rows(cells, max_colours)
    return out, [{"row": r, "from": palette[c].code, "to": palette[t].code, "stitches": n} for r, c, t, n in moves]
