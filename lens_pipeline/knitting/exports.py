"""Machine-readable exports: grid.json, grid.csv and the AYAB PNG.

grid.json / grid.csv list row 1 first and stitch 1 (the rightmost stitch on the RS) first.

AYAB PNG: one pixel per stitch, palette mode "P", no resampling. AYAB desktop (its image.py,
engine/engine.py, engine/pattern.py) converts the PNG to RGBA, flips it top to bottom (the bottom
pixel row is knitted first), mirrors it left to right only when "Knit Side Image" is ticked (off
by default), quantises it to 2 colours and lays pixel column 0 on the leftmost needle. A single
bed knits with the purl side facing the knitter, so the needle on the knitter's left is the RS's
rightmost stitch. The PNG is therefore the WS view: image column 0 is stitch 1, image row 0 the
last chart row, and AYAB's default settings knit the chart's RS exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from PIL import Image

from .checks import row_floats
from .grid import Colour, Grid

GRID_FORMAT = "lens_pipeline.knitting.grid/1"
AYAB_MAX_WIDTH = {"standard": 200, "KH-270": 112}  # needles on the bed
AyabReduce = Literal["error", "merge_contrast"]


def grid_json(grid: Grid, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The grid as a JSON-ready dict: rows of colour codes, row 1 first, stitch 1 first."""
    w_cm, h_cm = grid.gauge.size_cm(grid.width, grid.height)
    out: dict[str, Any] = {
        "format": GRID_FORMAT,
        "stitches": grid.width,
        "rows": grid.height,
        "row_order": "row 1 first (the first row knitted, bottom of the chart)",
        "stitch_order": "stitch 1 first (rightmost stitch seen from the right side)",
        "mode": grid.mode,
        "technique": grid.technique,
        "gauge": grid.gauge.as_dict(),
        "finished_size_cm": {"width": round(w_cm, 2), "height": round(h_cm, 2)},
        "palette": [c.as_dict() for c in grid.palette],
        "stitch_counts": grid.finished_counts(),
        "cells": [[grid.code(int(i)) for i in row] for row in grid.finished()],
    }
    if grid.duplicate is not None and (grid.duplicate >= 0).any():  # the rows knit these; the rest is sewn on
        out["knitted_cells"] = [[grid.code(int(i)) for i in row] for row in grid.cells]
        out["duplicate_stitch"] = duplicate_list(grid)
    if extra:
        out.update(extra)
    return out


def duplicate_list(grid: Grid) -> list[dict[str, Any]]:
    """Each duplicate stitch: row, stitch, the colour sewn on and the colour knitted under it."""
    if grid.duplicate is None:
        return []
    return [{"row": int(r) + 1, "stitch": int(s) + 1, "colour": grid.code(int(grid.duplicate[r, s])),
             "knitted": grid.code(int(grid.cells[r, s]))} for r, s in zip(*np.nonzero(grid.duplicate >= 0))]


def grid_csv(grid: Grid) -> str:
    """CSV: `#` comment lines with palette and gauge, a header `row,side,st1..stW`, then one
    line per row, row 1 first, stitch 1 first, cells as colour codes."""
    g = grid.gauge
    lines = [
        f"# {GRID_FORMAT}; row 1 first; stitch 1 = rightmost stitch on the right side",
        f"# gauge: {g.stitches_per_10cm:g} sts and {g.rows_per_10cm:g} rows = 10 cm; "
        f"mode: {grid.mode}; technique: {grid.technique}",
        "# palette: " + "; ".join(f"{c.code}={c.hex} {c.name} ({c.symbol})" for c in grid.palette),
    ]
    dup = duplicate_list(grid)
    if dup:
        lines.append("# cells: the finished picture; duplicate stitch (row/stitch/colour over knitted): " + "; ".join(
            f"{d['row']}/{d['stitch']}/{d['colour']} over {d['knitted']}" for d in dup))
    lines.append("row,side," + ",".join(f"st{s}" for s in range(1, grid.width + 1)))
    finished = grid.finished()
    for r in range(1, grid.height + 1):
        side = "RND" if grid.mode == "round" else ("RS" if r % 2 else "WS")
        lines.append(f"{r},{side}," + ",".join(grid.code(int(i)) for i in finished[r - 1]))
    return "\n".join(lines) + "\n"


def ayab_image(
    grid: Grid,
    machine: str = "standard",
    bed: Literal["single", "ribber"] = "single",
    reduce: AyabReduce = "error",
) -> tuple[Image.Image, dict[str, Any]]:
    """An AYAB-ready indexed PNG image and a note of how it maps to the chart.

    Single bed takes exactly 2 colours. A grid using more either raises ValueError
    (reduce="error") or is reduced with reduce="merge_contrast": MC stays the background and
    every contrast colour becomes one contrast yarn (the darkest used), i.e. "above the first
    threshold" vs not. With the ribber, 2-6 colours are kept as they are. Unused palette
    colours are dropped so the PNG palette lists exactly the yarns to use (padded to 2)."""
    if machine not in AYAB_MAX_WIDTH:
        raise ValueError(f"machine must be one of {sorted(AYAB_MAX_WIDTH)}, not {machine!r}")
    limit = AYAB_MAX_WIDTH[machine]
    if grid.width > limit:
        raise ValueError(f"AYAB: the chart is {grid.width} sts wide but the {machine} bed has "
                         f"{limit} needles; use a narrower chart")
    max_colours = 2 if bed == "single" else 6
    used = grid.used_colours()
    cells = grid.cells.copy()
    palette: list[Colour] = list(grid.palette)
    reduction = None
    if len(used) > max_colours:
        if reduce != "merge_contrast" or bed != "single":
            raise ValueError(
                f"AYAB {bed}-bed mode takes at most {max_colours} colours but the chart uses "
                f"{len(used)} ({', '.join(grid.code(i) for i in used)}); pass "
                "reduce='merge_contrast' (single bed) or use a chart with fewer colours")
        darkest = max((i for i in used if i != 0), key=lambda i: i)
        cells = np.where(cells == 0, 0, darkest).astype(np.int16)
        reduction = (f"merged {', '.join(grid.code(i) for i in used if i != 0)} into one "
                     f"contrast yarn ({grid.code(darkest)} {grid.palette[darkest].name})")
        used = [0, darkest]
    if len(used) < 2:  # AYAB wants 2 yarns even for a plain piece
        used = sorted(set(used) | {0, 1})
    remap = np.zeros(len(palette), dtype=np.uint8)
    for new, old in enumerate(used):
        remap[old] = new
    # WS view: top chart row at image row 0, stitch 1 at image column 0 (the knitter's left needle)
    pixels = remap[cells[::-1, :]]
    h, w = pixels.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    flat: list[int] = []
    for i in used:
        flat += list(palette[i].rgb())
    img.putpalette(flat)
    info = {
        "machine": machine,
        "max_width": limit,
        "bed": bed,
        "size_px": [grid.width, grid.height],
        "image_row_0": f"chart row {grid.height} (top); the bottom pixel row is row 1, knitted first",
        "image_column_0": "stitch 1: the PNG is the chart mirrored left to right (the WS, as the machine "
                          "knits it); leave AYAB's \"Knit Side Image\" unticked (its default)",
        "knit_side_image": False,
        "start_row": 1,
        "palette": [palette[i].code for i in used],
        "reduction": reduction,
        "feeders": ayab_feeders(img, [palette[i].code for i in used]),
        "floats": _machine_floats(np.where(cells == used[0], 0, 1), grid.height),
    }
    return img, info


def ayab_feeders(img: Image.Image, codes: list[str]) -> dict[str, str]:
    """Which yarn goes in which feeder, as AYAB single-bed mode sees this PNG: it quantises the
    RGBA image to 2 colours and reverses that palette; needles whose pixel lands on colour 0 are
    selected and knit the yarn in feeder B, the others the yarn in feeder A."""
    q = img.convert("RGBA").quantize(2)
    rgb = q.getpalette()[:6]
    selected_rgb = tuple(rgb[3:6])  # remap_palette([1, 0]): colour 0 is the quantiser's colour 1
    pal = img.getpalette()[: 3 * len(codes)]
    by_rgb = {tuple(pal[3 * i: 3 * i + 3]): code for i, code in enumerate(codes)}
    b = by_rgb.get(selected_rgb, codes[-1])
    a = next(c for c in codes if c != b)
    return {"A": a, "B": b}


def _machine_floats(two: np.ndarray, height: int) -> dict[str, Any]:
    """Floats of the 2-colour image as a single bed knits it: every gap between stitches of one
    yarn in a row (the machine carries both yarns across; nothing is caught)."""
    longest, rows = 0, []
    for r in range(height):
        gaps = [f.length for f in row_floats(two[r].tolist(), False, r + 1)]
        if gaps:
            longest = max(longest, max(gaps))
            rows.append((r + 1, max(gaps)))
    return {"longest": longest, "per_row": [m for _, m in rows], "rows": [r for r, _ in rows]}
