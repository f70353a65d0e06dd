"""The colour chart: one layout (in millimetres) rendered as SVG text or through matplotlib (PDF).

Drawn from the right side: row 1 at the bottom, stitch 1 at the bottom right. Flat: odd (RS)
row numbers on the right, even (WS) on the left; in the round every number on the right.
Cells are gauge-scaled (height / width = sts per 10 cm / rows per 10 cm), there is a heavier
line every 10 sts and rows (counted from stitch 1 and row 1), centre marks, symbols in every
cell so it prints in black and white, a key, the finished size, and long floats flagged.
Every cell rect in the SVG carries data-row, data-stitch and data-colour attributes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence
from xml.sax.saxutils import escape, quoteattr

from .checks import float_limit
from .grid import Colour, Grid
from .yarns import plan_yarns

PT_MM = 25.4 / 72  # one typographic point in mm
FLOAT_FLAG = "#C00000"
FONT = "DejaVu Sans, Arial, Helvetica, sans-serif"


# ------------------------------------------------------------------ layout primitives


@dataclass
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: str = "none"
    stroke: str = "none"
    lw: float = 0.0
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str = "#000000"
    lw: float = 0.2
    dash: tuple[float, float] | None = None
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Circle:
    cx: float
    cy: float
    r: float
    fill: str = "none"
    stroke: str = "none"
    lw: float = 0.0


@dataclass
class Polygon:
    points: list[tuple[float, float]]
    fill: str = "none"
    stroke: str = "none"
    lw: float = 0.0
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Text:
    x: float
    y: float  # baseline
    s: str
    size: float  # mm (cap-to-descender height, as the font size)
    anchor: str = "start"  # start | middle | end
    bold: bool = False
    cls: str = ""  # SVG class, e.g. row-number, so tests and tools can find the labels


Shape = Rect | Line | Circle | Polygon | Text


@dataclass
class Layout:
    width: float
    height: float
    shapes: list[Shape]


def symbol_shapes(symbol: str, cx: float, cy: float, size: float, ink: str) -> list[Shape]:
    """A colour's symbol as shapes centred on (cx, cy); `size` is the box it must fit."""
    h = size / 2
    lw = max(0.12, size * 0.09)
    if symbol == "dot":
        return [Circle(cx, cy, size * 0.11, fill=ink)]
    if symbol == "cross":
        d = h * 0.62
        return [Line(cx - d, cy - d, cx + d, cy + d, ink, lw), Line(cx - d, cy + d, cx + d, cy - d, ink, lw)]
    if symbol == "disc":
        return [Circle(cx, cy, h * 0.58, fill=ink)]
    if symbol == "ring":
        return [Circle(cx, cy, h * 0.58, stroke=ink, lw=lw)]
    if symbol == "triangle":
        d = h * 0.7
        return [Polygon([(cx, cy - d), (cx + d, cy + d * 0.8), (cx - d, cy + d * 0.8)], fill=ink)]
    if symbol == "diamond":
        d = h * 0.72
        return [Polygon([(cx, cy - d), (cx + d, cy), (cx, cy + d), (cx - d, cy)], fill=ink)]
    raise ValueError(f"unknown symbol {symbol!r}")


def _ink(colour: Colour) -> str:
    return "#FFFFFF" if colour.is_dark() else "#000000"


def _spans(stitches: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous (low, high) stitch spans of a float (a wrap-around float gives two)."""
    ordered = sorted(stitches)
    spans: list[list[int]] = []
    for s in ordered:
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return [(a, b) for a, b in spans]


@dataclass(frozen=True)
class _Frame:
    """Where the chart's cells sit on the page, in mm."""

    W: int
    H: int
    x0: float
    y0: float
    cw: float
    ch: float
    num_size: float
    margin: float

    def cell_x(self, stitch: int) -> float:  # left edge of a stitch's column (stitch 1 = rightmost)
        return self.x0 + (self.W - stitch) * self.cw

    def cell_y(self, row: int) -> float:  # top edge of a row (row 1 = bottom)
        return self.y0 + (self.H - row) * self.ch


MARK = 1.4  # size of the centre-mark triangles


def chart_layout(
    grid: Grid,
    title: str = "Knitting chart",
    subtitle: str = "",
    max_float: int = 5,
    float_limit_sts: int | None = None,
) -> Layout:
    """Place every cell, symbol, number, line and key entry of the chart, in mm."""
    W, H = grid.width, grid.height
    limit = float_limit_sts if float_limit_sts is not None else float_limit(
        max_float, grid.gauge.stitches_per_10cm)
    cw = max(2.5, min(7.0, 170.0 / W))
    ch = cw * grid.gauge.cell_aspect
    num_size = min(2.6, max(1.4, min(cw, ch) * 0.75))
    margin = 4.0 + num_size * 2.4  # room for row numbers on either side
    fr = _Frame(W, H, x0=margin, y0=22.0, cw=cw, ch=ch, num_size=num_size, margin=margin)  # y0: below the title block
    x0 = fr.x0
    shapes: list[Shape] = [Text(x0, 8.0, title, 4.2, bold=True)]
    if subtitle:
        shapes.append(Text(x0, 13.0, subtitle, 2.6))
    read = ("RS view. Row 1 at the bottom. RS (odd) rows: read right to left; "
            "WS (even) rows: left to right." if grid.mode == "flat" else
            "RS view. Round 1 at the bottom. Every round: read right to left.")
    shapes.append(Text(x0, 17.5, read, 2.3))
    shapes += _cell_shapes(grid, fr)
    shapes += _ten_lines(fr)
    flags, n_flagged = _float_flags(grid, fr, limit)
    shapes += flags
    shapes += _row_numbers(grid, fr)
    numbers, yb = _stitch_numbers(fr)
    shapes += numbers
    bottom = yb + 0.8
    shapes += _centre_marks(fr, bottom)

    # finished size and gauge
    w_cm, h_cm = grid.gauge.size_cm(W, H)
    y = bottom + MARK + 4.0
    shapes.append(Text(x0, y, (
        (f"Finished size {w_cm:.1f} x {h_cm:.1f} cm ({W} sts x {H} rows) at " if grid.mode == "flat" else
         f"Finished size {w_cm:.1f} cm circumference x {h_cm:.1f} cm ({W} sts x {H} rnds) at ") +
        f"{grid.gauge.stitches_per_10cm:g} sts x {grid.gauge.rows_per_10cm:g} rows = 10 cm. "
        f"{'Flat' if grid.mode == 'flat' else 'In the round'}, {grid.technique}."), 2.5))
    key, y = _key_shapes(grid, x0, y, limit, n_flagged)
    shapes += key
    # wide enough for the chart and for every left-aligned text (~0.55 em per character)
    text_right = max((sh.x + 0.55 * sh.size * len(sh.s) for sh in shapes
                      if isinstance(sh, Text) and sh.anchor == "start"), default=0.0)
    width = max(x0 + W * cw + margin, text_right + 3.0)
    return Layout(width, y + 5.0, shapes)


def _cell_shapes(grid: Grid, fr: _Frame) -> list[Shape]:
    """Every cell in the colour the finished piece shows, its colour's symbol (MC cells are left
    blank so the motif stands out), and a mark on cells worked in duplicate stitch or recoloured."""
    shapes: list[Shape] = []
    sym = min(fr.cw, fr.ch) * 0.8
    finished = grid.finished()
    for r in range(1, fr.H + 1):
        for s in range(1, fr.W + 1):
            i = int(finished[r - 1, s - 1])
            c = grid.palette[i]
            x, y = fr.cell_x(s), fr.cell_y(r)
            shapes.append(Rect(x, y, fr.cw, fr.ch, fill=c.hex, stroke="#7F7F7F", lw=0.08, attrs={
                "class": "cell", "data-row": str(r), "data-stitch": str(s), "data-colour": c.code}))
            if i != 0:
                shapes += symbol_shapes(c.symbol, x + fr.cw / 2, y + fr.ch / 2, sym, _ink(c))
            knitted = grid.code(int(grid.cells[r - 1, s - 1]))
            if i != int(grid.cells[r - 1, s - 1]):  # duplicate stitch over a st knitted in another colour
                shapes.append(_cell_mark(x, y, fr, "duplicate", r, s, knitted))
            elif grid.recoloured is not None and grid.recoloured[r - 1, s - 1]:
                shapes.append(_cell_mark(x, y, fr, "recoloured", r, s, knitted))
    return shapes


def _cell_mark(x: float, y: float, fr: _Frame, kind: str, r: int, s: int, knitted: str) -> Rect:
    """A heavy inner outline: duplicate stitch (solid) or recoloured by the stranded fix (dashed in the key)."""
    inset = min(fr.cw, fr.ch) * 0.12
    return Rect(x + inset, y + inset, fr.cw - 2 * inset, fr.ch - 2 * inset, stroke=MARK_INK[kind], lw=0.35, attrs={
        "class": kind, "data-row": str(r), "data-stitch": str(s), "data-knitted": knitted})


MARK_INK = {"duplicate": "#0050C8", "recoloured": "#C00000"}


def _ten_lines(fr: _Frame) -> list[Shape]:
    """Heavier lines every 10 sts / rows from stitch 1 and row 1, then the outline."""
    shapes: list[Shape] = []
    for s in range(10, fr.W, 10):
        x = fr.cell_x(s)
        shapes.append(Line(x, fr.y0, x, fr.y0 + fr.H * fr.ch, "#000000", 0.45))
    for r in range(10, fr.H, 10):
        y = fr.cell_y(r)
        shapes.append(Line(fr.x0, y, fr.x0 + fr.W * fr.cw, y, "#000000", 0.45))
    shapes.append(Rect(fr.x0, fr.y0, fr.W * fr.cw, fr.H * fr.ch, stroke="#000000", lw=0.5))
    return shapes


def _float_flags(grid: Grid, fr: _Frame, limit: int) -> tuple[list[Shape], int]:
    """Stranded: each float longer than the limit as the pattern knits it (edge carries and floats
    across the end of a round included) as a dashed red bar low in the cells it passes, and a
    red wedge in the cell where the pattern catches it; and how many long floats."""
    shapes: list[Shape] = []
    if grid.technique != "stranded":
        return shapes, 0
    long = [st for st in plan_yarns(grid, limit).strands if st.length > limit]
    for strand in long:
        code = grid.code(strand.colour)
        by_row: dict[int, list[int]] = {}
        for r, st in strand.passed:
            by_row.setdefault(r, []).append(st)
        for r, sts in by_row.items():
            y = fr.cell_y(r) + fr.ch * 0.82
            for lo, hi in _spans(sts):
                shapes.append(Line(fr.cell_x(hi) + fr.cw * 0.1, y, fr.cell_x(lo) + fr.cw * 0.9, y,
                                   FLOAT_FLAG, max(0.3, fr.ch * 0.12), (0.8, 0.5), attrs={
                                       "class": "long-float", "data-row": str(r), "data-colour": code,
                                       "data-length": str(strand.length)}))
        for r, st in strand.catches:
            x, y = fr.cell_x(st), fr.cell_y(r)
            d = min(fr.cw, fr.ch) * 0.45
            shapes.append(Polygon([(x, y), (x + d, y), (x, y + d)], fill=FLOAT_FLAG, attrs={
                "class": "catch", "data-row": str(r), "data-stitch": str(st), "data-colour": code}))
    return shapes, len(long)


def _row_numbers(grid: Grid, fr: _Frame) -> list[Shape]:
    """Row numbers: flat odd right / even left; round all right."""
    shapes: list[Shape] = []
    for r in range(1, fr.H + 1):
        yb = fr.cell_y(r) + fr.ch / 2 + fr.num_size * 0.36
        right = grid.mode == "round" or r % 2 == 1
        if right:
            shapes.append(Text(fr.x0 + fr.W * fr.cw + 1.2, yb, str(r), fr.num_size, "start", cls="row-number"))
        else:
            shapes.append(Text(fr.x0 - 1.2, yb, str(r), fr.num_size, "end", cls="row-number"))
    return shapes


def _stitch_numbers(fr: _Frame) -> tuple[list[Shape], float]:
    """Stitch numbers along the bottom, right to left; and their baseline."""
    shapes: list[Shape] = []
    step = 1 if fr.W <= 30 else 5
    yb = fr.y0 + fr.H * fr.ch + 1.2 + fr.num_size
    for s in range(1, fr.W + 1):
        if step == 1 or s == 1 or s % step == 0:
            shapes.append(Text(fr.cell_x(s) + fr.cw / 2, yb, str(s), fr.num_size * 0.9, "middle",
                               cls="stitch-number"))
    return shapes, yb


def _centre_marks(fr: _Frame, bottom: float) -> list[Shape]:
    """Small triangles pointing at the centre lines from outside the chart."""
    t = MARK
    cx = fr.x0 + fr.W * fr.cw / 2
    cy = fr.y0 + fr.H * fr.ch / 2
    top = fr.y0
    lx, rx = fr.x0 - fr.margin + 0.6, fr.x0 + fr.W * fr.cw + fr.margin - 0.6
    return [
        Polygon([(cx, top - 0.3), (cx - t / 2, top - 0.3 - t), (cx + t / 2, top - 0.3 - t)], fill="#000000"),
        Polygon([(cx, bottom), (cx - t / 2, bottom + t), (cx + t / 2, bottom + t)], fill="#000000"),
        Polygon([(lx + t, cy), (lx, cy - t / 2), (lx, cy + t / 2)], fill="#000000"),
        Polygon([(rx - t, cy), (rx, cy - t / 2), (rx, cy + t / 2)], fill="#000000"),
    ]


def _key_shapes(grid: Grid, x0: float, y: float, limit: int, n_flagged: int) -> tuple[list[Shape], float]:
    """The key below the text line at y: swatch with symbol, code, name, hex, stitch count, then
    the heavier line, the centre mark and (stranded) the float flag; and the last baseline."""
    t = MARK
    counts = grid.finished_counts()
    y += 5.0
    shapes: list[Shape] = [Text(x0, y, "Key", 3.0, bold=True)]
    sw = 5.0
    for c in grid.palette:
        y += 1.5
        shapes.append(Rect(x0, y, sw, sw * 0.8, fill=c.hex, stroke="#000000", lw=0.15,
                           attrs={"class": "key", "data-colour": c.code}))
        first = c is grid.palette[0]
        if not first:
            shapes += symbol_shapes(c.symbol, x0 + sw / 2, y + sw * 0.4, sw * 0.6, _ink(c))
        shapes.append(Text(x0 + sw + 2.0, y + sw * 0.4 + 1.0,
                           f"{c.code}   {c.name}   {c.hex}   {'blank' if first else c.symbol}   {counts[c.code]} sts", 2.7))
        y += sw * 0.8
    for kind, text in (("duplicate", "knit in the kept colour of the row, then duplicate stitch in the colour shown"),
                       ("recoloured", "knitted in another colour than the data (stranded fix)")):
        if (kind == "duplicate" and grid.duplicate is not None and (grid.duplicate >= 0).any()) or \
                (kind == "recoloured" and grid.recoloured is not None and grid.recoloured.any()):
            y += 5.0
            shapes.append(Rect(x0, y - 3.0, sw, 3.5, stroke=MARK_INK[kind], lw=0.35))
            shapes.append(Text(x0 + sw + 2.0, y, text, 2.4))
    y += 5.0
    shapes.append(Line(x0, y - 1.0, x0 + sw, y - 1.0, "#000000", 0.45))
    shapes.append(Text(x0 + sw + 2.0, y, "heavier line every 10 sts and 10 rows", 2.4))
    y += 4.0
    shapes.append(Polygon([(x0 + sw / 2, y - 0.2), (x0 + sw / 2 - t / 2, y - 0.2 - t),
                           (x0 + sw / 2 + t / 2, y - 0.2 - t)], fill="#000000"))
    shapes.append(Text(x0 + sw + 2.0, y, "centre of the chart", 2.4))
    if grid.technique == "stranded":
        y += 4.0
        shapes.append(Line(x0, y - 1.0, x0 + sw, y - 1.0, FLOAT_FLAG, 0.5, (0.8, 0.5)))
        shapes.append(Text(x0 + sw + 2.0, y, (
            f"float longer than {limit} sts as knitted ({n_flagged} in this chart)"), 2.4))
        y += 4.0
        d = 2.2
        shapes.append(Polygon([(x0, y - 2.2), (x0 + d, y - 2.2), (x0, y - 2.2 + d)], fill=FLOAT_FLAG))
        shapes.append(Text(x0 + sw + 2.0, y, "catch the carried yarn behind this st (the row says which)", 2.4))
    return shapes, y


# ---------------------------------------------------------------------------- renderers


def _f(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".")


def render_svg(layout: Layout) -> str:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_f(layout.width)}mm" '
        f'height="{_f(layout.height)}mm" viewBox="0 0 {_f(layout.width)} {_f(layout.height)}" '
        f'font-family={quoteattr(FONT)}>',
        f'<rect x="0" y="0" width="{_f(layout.width)}" height="{_f(layout.height)}" fill="#FFFFFF"/>',
    ]
    for sh in layout.shapes:
        if isinstance(sh, Rect):
            extra = "".join(f" {k}={quoteattr(v)}" for k, v in sh.attrs.items())
            out.append(f'<rect x="{_f(sh.x)}" y="{_f(sh.y)}" width="{_f(sh.w)}" height="{_f(sh.h)}" '
                       f'fill="{sh.fill}" stroke="{sh.stroke}" stroke-width="{_f(sh.lw)}"{extra}/>')
        elif isinstance(sh, Line):
            dash = f' stroke-dasharray="{_f(sh.dash[0])} {_f(sh.dash[1])}"' if sh.dash else ""
            dash += "".join(f" {k}={quoteattr(v)}" for k, v in sh.attrs.items())
            out.append(f'<line x1="{_f(sh.x1)}" y1="{_f(sh.y1)}" x2="{_f(sh.x2)}" y2="{_f(sh.y2)}" '
                       f'stroke="{sh.stroke}" stroke-width="{_f(sh.lw)}"{dash}/>')
        elif isinstance(sh, Circle):
            out.append(f'<circle cx="{_f(sh.cx)}" cy="{_f(sh.cy)}" r="{_f(sh.r)}" fill="{sh.fill}" '
                       f'stroke="{sh.stroke}" stroke-width="{_f(sh.lw)}"/>')
        elif isinstance(sh, Polygon):
            pts = " ".join(f"{_f(x)},{_f(y)}" for x, y in sh.points)
            extra = "".join(f" {k}={quoteattr(v)}" for k, v in sh.attrs.items())
            out.append(f'<polygon points="{pts}" fill="{sh.fill}" stroke="{sh.stroke}" '
                       f'stroke-width="{_f(sh.lw)}"{extra}/>')
        elif isinstance(sh, Text):
            weight = ' font-weight="bold"' if sh.bold else ""
            weight += f' class="{sh.cls}"' if sh.cls else ""
            out.append(f'<text x="{_f(sh.x)}" y="{_f(sh.y)}" font-size="{_f(sh.size)}" '
                       f'text-anchor="{sh.anchor}"{weight}>{escape(sh.s)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Tile:
    """One printed page of a chart too big for a page: the layout window it shows, in mm."""

    x: float
    y: float
    w: float
    h: float
    label: str


PAGE_MM = (210.0, 297.0)  # A4 portrait
PAGE_MARGIN = 10.0
TILE_OVERLAP = 15.0  # each tile repeats this much of its neighbour, so the pages can be taped together


def tiles(layout: Layout) -> list[Tile]:
    """A4 pages at true size covering the layout, overlapping by TILE_OVERLAP; none if it fits one page."""
    pw, ph = PAGE_MM[0] - 2 * PAGE_MARGIN, PAGE_MM[1] - 2 * PAGE_MARGIN - 8.0  # 8 mm for the tile label
    if layout.width <= pw and layout.height <= ph:
        return []
    xs = [0.0] if layout.width <= pw else [min(i * (pw - TILE_OVERLAP), layout.width - pw)
                                           for i in range(math.ceil((layout.width - TILE_OVERLAP) / (pw - TILE_OVERLAP)))]
    ys = [0.0] if layout.height <= ph else [min(j * (ph - TILE_OVERLAP), layout.height - ph)
                                            for j in range(math.ceil((layout.height - TILE_OVERLAP) / (ph - TILE_OVERLAP)))]
    n = len(xs) * len(ys)
    return [Tile(x, y, min(pw, layout.width), min(ph, layout.height),
                 f"Page {1 + j * len(xs) + i + 1} of {n + 1}: tile row {j + 1}, column {i + 1} of "
                 f"{len(ys)} x {len(xs)}, at true size; the dashed lines mark the {TILE_OVERLAP:g} mm shared "
                 "with the next tile")
            for j, y in enumerate(ys) for i, x in enumerate(xs)]


def _tile_page(layout: Layout, tile: Tile) -> tuple[Any, Any]:
    """An A4 figure whose axes show the tile's window at true size, its label above, and a dashed
    line where it overlaps each neighbouring tile."""
    from matplotlib.figure import Figure

    pw, ph = PAGE_MM
    fig = Figure(figsize=(pw / 25.4, ph / 25.4))
    top = PAGE_MARGIN + 8.0
    ax = fig.add_axes((PAGE_MARGIN / pw, 1 - (top + tile.h) / ph, tile.w / pw, tile.h / ph))
    ax.set_xlim(tile.x, tile.x + tile.w)
    ax.set_ylim(tile.y + tile.h, tile.y)
    fig.text(PAGE_MARGIN / pw, 1 - (PAGE_MARGIN + 4.0) / ph, tile.label, fontsize=2.4 / PT_MM, family="DejaVu Sans")
    mark = {"color": "#0050C8", "lw": 0.3 / PT_MM, "ls": (0, (4, 3)), "zorder": 5}
    if tile.x + tile.w < layout.width:
        ax.axvline(tile.x + tile.w - TILE_OVERLAP, **mark)
    if tile.x > 0:
        ax.axvline(tile.x + TILE_OVERLAP, **mark)
    if tile.y + tile.h < layout.height:
        ax.axhline(tile.y + tile.h - TILE_OVERLAP, **mark)
    if tile.y > 0:
        ax.axhline(tile.y + TILE_OVERLAP, **mark)
    return fig, ax


def render_matplotlib(layout: Layout, tile: Tile | None = None) -> Any:
    """A matplotlib Figure (no pyplot, so no global state) drawn at true size in mm: the whole
    layout on a page of its size, or one A4 tile of it with its overlap marks and label.

    Shapes are batched into collections (one add per kind, not one per cell) for speed, in
    layers: filled rects (cells, outline, key swatches), then symbols and marks, then lines
    (grid, symbol strokes, float flags), then text; order inside a layer is layout order."""
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle as MCircle
    from matplotlib.patches import Polygon as MPolygon
    from matplotlib.patches import Rectangle

    if tile is None:
        fig = Figure(figsize=(layout.width / 25.4, layout.height / 25.4))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, layout.width)
        ax.set_ylim(layout.height, 0)  # y down, as in SVG
    else:
        fig, ax = _tile_page(layout, tile)
    ax.set_axis_off()

    def lw(mm: float) -> float:
        return mm / PT_MM

    layers: dict[int, tuple[list, list, list, list]] = {1: ([], [], [], []), 2: ([], [], [], [])}
    segs, seg_colours, seg_widths, seg_styles = [], [], [], []
    for sh in layout.shapes:
        if isinstance(sh, Rect):
            patch, z = Rectangle((sh.x, sh.y), sh.w, sh.h), 1
        elif isinstance(sh, Circle):
            patch, z = MCircle((sh.cx, sh.cy), sh.r), 2
        elif isinstance(sh, Polygon):
            patch, z = MPolygon(sh.points, closed=True), 2
        elif isinstance(sh, Line):
            segs.append([(sh.x1, sh.y1), (sh.x2, sh.y2)])
            seg_colours.append(to_rgba(sh.stroke))
            seg_widths.append(lw(sh.lw))
            # dash lengths are scaled by the line width in matplotlib: give them in widths
            seg_styles.append((0, (sh.dash[0] / sh.lw, sh.dash[1] / sh.lw)) if sh.dash else "solid")
            continue
        elif isinstance(sh, Text):
            ax.text(sh.x, sh.y, sh.s, fontsize=sh.size / PT_MM, zorder=4, clip_on=tile is not None,
                    ha={"start": "left", "middle": "center", "end": "right"}[sh.anchor],
                    va="baseline", fontweight="bold" if sh.bold else "normal", family="DejaVu Sans")
            continue
        else:
            continue
        patches, faces, edges, widths = layers[z]
        patches.append(patch)
        faces.append(to_rgba(sh.fill))
        edges.append(to_rgba(sh.stroke))
        widths.append(lw(sh.lw))
    for z, (patches, faces, edges, widths) in layers.items():
        if patches:
            ax.add_collection(PatchCollection(patches, facecolors=faces, edgecolors=edges,
                                              linewidths=widths, zorder=z), autolim=False)
    if segs:
        ax.add_collection(LineCollection(segs, colors=seg_colours, linewidths=seg_widths,
                                         linestyles=seg_styles, capstyle="butt", zorder=3),
                          autolim=False)
    return fig


def chart_svg(grid: Grid, **kwargs: Any) -> str:
    """The chart as SVG text (kwargs: title, subtitle, max_float)."""
    return render_svg(chart_layout(grid, **kwargs))


def chart_pdf(grid: Grid, **kwargs: Any) -> bytes:
    """The chart as PDF bytes, same layout as the SVG: page 1 the whole chart at true size; a chart
    bigger than A4 follows on A4 pages at true size, tiled with overlap marks."""
    from matplotlib.backends.backend_pdf import PdfPages

    layout = chart_layout(grid, **kwargs)
    buf = io.BytesIO()
    # no creation date in the PDF, so the same grid gives the same bytes
    with PdfPages(buf, metadata={"Creator": "lens_pipeline.knitting", "CreationDate": None}) as pdf:
        for tile in [None, *tiles(layout)]:
            pdf.savefig(render_matplotlib(layout, tile), dpi=200)
    return buf.getvalue()
