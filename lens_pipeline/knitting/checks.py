"""Knittability checks: colours per row, colour runs, floats, and the Craft Yarn Council level.

Skill level (Craft Yarn Council), rated on the pattern as written, after its own catches:
  Easy          every row one colour (stripes).
  Intermediate  "simple colour work". Stranded: at most 2 colours knitted in every row, the chart's
                floats (between a colour's own stitches, or across the end of a round) at most L after
                the pattern's catches, and in every row of W sts at most 2W/3 colour changes and W/4
                catches; duplicate stitch (the third colour) in at most half of the rows.
                Intarsia: at most 2 colours and 3 colour runs per row.
  Experienced   anything else: "intricate" work, with more colours per row, longer floats, numerous
                colour changes or catches, or duplicate stitch in most rows. The reason names them.
Edge carries (a yarn taken to the end of a row to wait there) are the knitter's routing and are
caught the same way; they do not count toward the level. Never "Beginner": no colourwork is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from .grid import Grid
from .yarns import plan_yarns

DEFAULT_MAX_FLOAT = 5


@dataclass(frozen=True)
class Float:
    """A strand of `colour` carried behind `length` stitches of other colours in one row.

    `stitches` are the chart stitch numbers it passes behind, in stitch order (1 = rightmost);
    in the round a wrap-around float passes the end of the round."""

    row: int
    colour: int
    length: int
    stitches: tuple[int, ...]

    def as_dict(self, grid: Grid | None = None) -> dict[str, Any]:
        colour: Any = grid.code(self.colour) if grid is not None else self.colour
        return {"row": self.row, "colour": colour, "length": self.length,
                "stitches": list(self.stitches)}


def float_limit(max_float: int | None = DEFAULT_MAX_FLOAT, stitches_per_10cm: float = 22.0) -> int:
    """L = min(user max (default 5), floor(2.5 cm x stitches per cm)): no float wider than ~2.5 cm."""
    user = DEFAULT_MAX_FLOAT if max_float is None else int(max_float)
    by_gauge = math.floor(2.5 * stitches_per_10cm / 10.0 + 1e-9)
    return max(1, min(user, by_gauge))


def row_floats(row: Sequence[int], in_round: bool = False, row_number: int = 0) -> list[Float]:
    """Floats in one row given in stitch order (stitch 1 first).

    For each colour with sorted positions p: interior float p[i+1] - p[i] - 1; in the round also
    the wrap-around p[0] + W - p[-1] - 1 (the yarn travels on round the tube)."""
    arr = np.asarray(row)
    w = len(arr)
    out: list[Float] = []
    for colour in np.unique(arr).tolist():
        p = np.flatnonzero(arr == colour)
        for a, b in zip(p[:-1], p[1:]):
            if b - a - 1 > 0:
                out.append(Float(row_number, colour, int(b - a - 1),
                                 tuple(range(int(a) + 2, int(b) + 1))))
        if in_round and len(p) < w:
            gap = int(p[0] + w - p[-1] - 1)
            if gap > 0:
                passed = tuple(list(range(int(p[-1]) + 2, w + 1)) + list(range(1, int(p[0]) + 1)))
                out.append(Float(row_number, colour, gap, passed))
    return out


def colour_runs(row: Sequence[int]) -> int:
    """Number of same-colour runs in a row (a colour change starts a new run)."""
    arr = np.asarray(row)
    return int(1 + np.count_nonzero(arr[1:] != arr[:-1])) if len(arr) else 0


# Intermediate stranded work ("simple colour work"): colour changes and catches stay moderate in every
# row, and the third colour (duplicate stitch) is an accent, not the texture of the piece.
MAX_CHANGES_PER_STITCH = Fraction(2, 3)  # colour changes in a row <= 2W/3: 1-st checks (a change every st) are intricate
STITCHES_PER_CATCH = 4  # catches in a row <= W/4
MAX_DUPLICATE_ROW_SHARE = Fraction(1, 2)  # duplicate stitch in at most half of the rows
INTARSIA_MAX_RUNS = 3  # simple intarsia: at most 3 colour areas across a row
# The rule as the pattern states it (the knitter reads it beside the metrics).
LEVEL_RULE = (
    "Easy: every row one colour. Intermediate (simple colour work): stranded with at most 2 colours knitted "
    "in every row, no float longer than the limit after the pattern's catches, and in every row of W sts at "
    "most 2W/3 colour changes and W/4 catches, with duplicate stitch in at most half of the rows; or "
    "intarsia with at most 2 colours and 3 colour areas per row. Experienced: anything else.")


@dataclass(frozen=True)
class LevelMetrics:
    """What the skill level is rated on, per row (row 1 first) as the pattern is written."""

    technique: str
    width: int
    limit: int  # the float limit L
    colours_per_row: Sequence[int]  # colours knitted in the row
    runs_per_row: Sequence[int]
    float_after_per_row: Sequence[int]  # the chart's longest float after the pattern's catches
    catches_per_row: Sequence[int] = ()
    duplicate_rows: int = 0  # rows with duplicate stitch worked over them


def difficulty(m: LevelMetrics) -> tuple[str, str]:
    """Craft Yarn Council level with the reason (the module's rule, never "Beginner").

    Easy: every row one colour (stripes).
    Intermediate, stranded ("simple colour work"): at most 2 colours knitted in every row, the chart's
    floats at most L after the pattern's catches, and in every row at most 2W/3 colour changes and W/4
    catches, with duplicate stitch in at most half of the rows. Intermediate, intarsia: at most 2
    colours and 3 colour runs per row. Experienced: anything else ("intricate": more colours per row,
    long floats, numerous colour changes), with the reasons."""
    k = max(m.colours_per_row, default=1)
    a = max(m.runs_per_row, default=1)
    if k <= 1:
        return "Easy", "every row is one colour (stripes)"
    rows = len(m.colours_per_row)
    if m.technique == "intarsia":
        if k <= 2 and a <= INTARSIA_MAX_RUNS:
            return "Intermediate", f"simple intarsia: at most {k} colours and {a} colour runs per row"
        why = [f"{k} colours in a row"] if k > 2 else []
        why += [f"{a} colour runs in a row (more than {INTARSIA_MAX_RUNS})"] if a > INTARSIA_MAX_RUNS else []
        return "Experienced", "; ".join(why)
    f = max(m.float_after_per_row, default=0)
    max_changes = math.floor(m.width * MAX_CHANGES_PER_STITCH)
    max_catches = m.width // STITCHES_PER_CATCH
    changes = max(m.runs_per_row, default=1) - 1
    catches = max(m.catches_per_row, default=0)
    max_dup = math.floor(rows * MAX_DUPLICATE_ROW_SHARE)
    why = []
    if k > 2:
        why.append(f"{k} colours knitted in a row")
    if f > m.limit:
        why.append(f"floats up to {f} sts after the catches (more than {m.limit})")
    if changes > max_changes:
        why.append(f"{changes} colour changes in a row of {m.width} sts (more than {max_changes})")
    if catches > max_catches:
        why.append(f"{catches} catches in a row of {m.width} sts (more than {max_catches})")
    if m.duplicate_rows > max_dup:
        why.append(f"duplicate stitch in {m.duplicate_rows} of {rows} rows (more than {max_dup})")
    if why:
        return "Experienced", "; ".join(why)
    dup = f", duplicate stitch in {m.duplicate_rows} of {rows} rows" if m.duplicate_rows else ""
    return "Intermediate", (
        f"simple stranded work: at most {k} colours per row, floats of {f} sts or less after the catches "
        f"(limit {m.limit}), at most {changes} colour changes and {catches} catch{'es' * (catches != 1)} in a row "
        f"of {m.width} sts{dup}")


MIN_LIGHTNESS_STEP = 15.0  # CIELAB L* between two yarns: told apart in greyscale and by colour-blind knitters


def lightness(hex_colour: str) -> float:
    """CIELAB L* (0 black .. 100 white) of an sRGB hex colour."""
    h = hex_colour.lstrip("#")
    lin = [(v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4)
           for v in (int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))]
    y = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return 116 * (y ** (1 / 3) if y > 216 / 24389 else (24389 / 27 * y + 16) / 116) - 16


def palette_contrast(grid: Grid) -> dict[str, Any]:
    """Lightness of every colour the piece uses and the pairs closer than MIN_LIGHTNESS_STEP: yarns
    that differ in lightness read apart in black and white and for every kind of colour blindness;
    closer pairs rely on hue alone."""
    used = sorted({int(i) for i in np.unique(grid.finished())})
    ls = {grid.code(i): round(lightness(grid.palette[i].hex), 1) for i in used}
    close = [(a, b, round(abs(ls[a] - ls[b]), 1)) for k, a in enumerate(ls) for b in list(ls)[k + 1:]
             if abs(ls[a] - ls[b]) < MIN_LIGHTNESS_STEP]
    return {"lightness": ls, "min_step": MIN_LIGHTNESS_STEP,
            "too_close": [{"colours": [a, b], "difference": d} for a, b, d in close]}


def check_grid(grid: Grid, max_float: int | None = DEFAULT_MAX_FLOAT) -> dict[str, Any]:
    """Every knittability metric of a grid as plain JSON-ready data (for meta.json, the index
    row and the pattern header). Errors make the pattern unknittable as written; warnings need
    an action from the knitter (trapping)."""
    in_round = grid.mode == "round"
    limit = float_limit(max_float, grid.gauge.stitches_per_10cm)
    k_rows, a_rows, f_rows = [], [], []
    long_floats: list[Float] = []
    for r in range(1, grid.height + 1):
        row = grid.row(r)
        fl = row_floats(row, in_round, r)
        k_rows.append(int(len(np.unique(row))))
        a_rows.append(colour_runs(row))
        f_rows.append(max((f.length for f in fl), default=0))
        if grid.technique == "stranded":  # intarsia uses one bobbin per area: nothing floats
            long_floats += [f for f in fl if f.length > limit]
    plan = plan_yarns(grid, limit)
    stretch_rows = [plan.longest_stretch(r) for r in range(1, grid.height + 1)]
    # rated on the pattern as written: the chart's floats after its own catches (edge carries,
    # caught the same way, are the knitter's routing, not the picture's difficulty)
    rated = [plan.longest_stretch(r, chart_only=True) for r in range(1, grid.height + 1)]
    dup_rows = int((grid.duplicate >= 0).any(axis=1).sum()) if grid.duplicate is not None else 0
    level, reason = difficulty(LevelMetrics(
        grid.technique, grid.width, limit, k_rows, a_rows, rated,
        [plan.catches_in_row(r) for r in range(1, grid.height + 1)], dup_rows))
    over_two = [r + 1 for r, k in enumerate(k_rows) if k > 2]
    over_limit = sorted({f.row for f in long_floats})
    errors, warnings = [], []
    if grid.technique == "stranded" and over_two:
        errors.append(
            f"{len(over_two)} row(s) have more than 2 colours ({_rows_text(over_two)}): too many "
            "for stranded work; knit them in intarsia or add the extra colour by duplicate stitch"
        )
    long_knitted = [st for st in plan.strands if st.length > limit]
    if long_knitted:
        rows = sorted({r for st in long_knitted for r, _ in st.catches})
        warnings.append(
            f"{len(long_knitted)} float(s) longer than {limit} sts as knitted: the rows catch them "
            f"({sum(len(st.catches) for st in long_knitted)} catches, in {_rows_text(rows)})"
        )
    contrast = palette_contrast(grid)
    for pair in contrast["too_close"]:
        a, b = pair["colours"]
        warnings.append(f"{a} and {b} differ by only {pair['difference']:g} in lightness (L*; at least "
                        f"{MIN_LIGHTNESS_STEP:g} reads apart in black and white and for colour-blind knitters): "
                        "choose yarns further apart, or fewer colours")
    if grid.technique == "intarsia" and in_round:
        warnings.append("intarsia in the round needs a special method (e.g. worked back and forth); "
                        "flat knitting is easier")
    return {
        "colours_per_row": k_rows,
        "max_colours_per_row": max(k_rows, default=0),
        "rows_over_two_colours": over_two,
        "colour_runs_per_row": a_rows,
        "max_colour_runs": max(a_rows, default=0),
        "longest_float_per_row": f_rows,
        "longest_float": max(f_rows, default=0),
        "float_limit": limit,
        "long_floats": [f.as_dict(grid) for f in long_floats],
        "rows_over_float_limit": over_limit,
        "palette_contrast": contrast,
        "yarn_path": {
            "longest_float_as_knitted": max((st.length for st in plan.strands), default=0),
            "longest_float_after_catches": max(stretch_rows, default=0),
            "longest_float_after_catches_per_row": stretch_rows,
            "longest_chart_float_after_catches": max(rated, default=0),
            "floats_over_limit_before_catches": sum(st.length > limit for st in plan.strands),
            "catches": sum(plan.catches_in_row(r) for r in range(1, grid.height + 1)),
            "catches_per_row": [plan.catches_in_row(r) for r in range(1, grid.height + 1)],
            "max_catches_per_row": max((plan.catches_in_row(r) for r in range(1, grid.height + 1)), default=0),
            "joins": plan.joins,
            "breaks": plan.breaks,
            "carries": plan.carries,
            "ends_to_weave_in": plan.ends,
            "bobbins": {grid.code(c): n for c, n in plan.bobbins.items()},
            "bind_off_colour": grid.code(plan.bind_off_colour),
        },
        "difficulty": level,
        "difficulty_reason": reason,
        "difficulty_rule": LEVEL_RULE,
        "duplicate_stitch_rows": dup_rows,
        "errors": errors,
        "warnings": warnings,
    }


def _rows_text(rows: Sequence[int]) -> str:
    if len(rows) > 8:
        return "rows " + ", ".join(map(str, rows[:8])) + f" and {len(rows) - 8} more"
    return ("row " if len(rows) == 1 else "rows ") + ", ".join(map(str, rows))
