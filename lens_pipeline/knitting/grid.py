"""The stitch grid: palette, gauge, block scaling, quantisation and the stranded adjustment.

Conventions (for users: the README's "Knitting patterns" section):
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
# Which of the six shades to use for n colours: spread out so neighbours stay distinguishable.
_SHADE_PICKS: dict[int, tuple[int, ...]] = {
    2: (0, 4), 3: (0, 2, 5), 4: (0, 2, 3, 5), 5: (0, 1, 2, 4, 5), 6: (0, 1, 2, 3, 4, 5),
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

    def __post_init__(self) -> None:
        self.cells = np.asarray(self.cells, dtype=np.int16)
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


def block_scale(
    values: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, AxisScale, AxisScale]:
    """Scale a data picture [n_rows, n_cols] (row 0 = bottom, col 0 = left) to [height, width]
    by whole-number block repetition. Cells outside the data are NaN (they become MC)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError("block_scale wants a 2-D array")
    ys, xs = axis_scale(values.shape[0], height), axis_scale(values.shape[1], width)
    return _scale_axis(_scale_axis(values, ys, 0), xs, 1), xs, ys


def quantise(values: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Colour level = number of thresholds the value is strictly above; NaN -> 0 (MC)."""
    t = np.asarray(sorted(thresholds), dtype=np.float64)
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf)
    return (v[..., None] > t).sum(axis=-1).astype(np.int16)


# ------------------------------------------------------------------ stranded adjustment


def limit_colours_per_row(
    cells: np.ndarray, palette: Sequence[Colour], max_colours: int = 2
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Stranded work carries at most `max_colours` per row. In each row that has more, keep the
    most used colours (ties: the lower level, i.e. the background) and move every other stitch
    to the nearest kept level (ties: the lower). Returns the new cells and a change log."""
    out = np.array(cells, dtype=np.int16, copy=True)
    changes: list[dict[str, object]] = []
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
            changes.append({"row": r + 1, "from": palette[c].code, "to": palette[target].code,
                            "stitches": int(n)})
    return out, changes
