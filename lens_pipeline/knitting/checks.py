"""Knittability checks: colours per row, colour runs, floats, and the Craft Yarn Council level."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .grid import Grid

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


def difficulty(
    colours_per_row: Sequence[int],
    runs_per_row: Sequence[int],
    longest_float_per_row: Sequence[int],
    technique: str,
) -> tuple[str, str]:
    """Craft Yarn Council level with the reason. Easy: every row one colour (stripes).
    Intermediate: k <= 2 in every row and, for intarsia, a <= 3 runs (simple intarsia), or, for
    stranded, longest float f <= 3. Experienced: anything else. Never "Beginner"."""
    k = max(colours_per_row, default=1)
    a = max(runs_per_row, default=1)
    f = max(longest_float_per_row, default=0)
    if k <= 1:
        return "Easy", "every row is one colour (stripes)"
    if k <= 2 and technique == "intarsia" and a <= 3:
        return "Intermediate", f"simple intarsia: at most {k} colours and {a} colour runs per row"
    if k <= 2 and technique == "stranded" and f <= 3:
        return "Intermediate", f"simple stranded work: at most {k} colours per row, floats of {f} sts or less"
    why = []
    if k > 2:
        why.append(f"{k} colours in a row")
    if technique == "intarsia" and a > 3:
        why.append(f"{a} colour runs in a row")
    if technique == "stranded" and f > 3:
        why.append(f"floats up to {f} sts")
    return "Experienced", "; ".join(why) or "complex colourwork"


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
    level, reason = difficulty(k_rows, a_rows, f_rows, grid.technique)
    over_two = [r + 1 for r, k in enumerate(k_rows) if k > 2]
    over_limit = sorted({f.row for f in long_floats})
    errors, warnings = [], []
    if grid.technique == "stranded" and over_two:
        errors.append(
            f"{len(over_two)} row(s) have more than 2 colours ({_rows_text(over_two)}): too many "
            "for stranded work; knit them in intarsia or add the extra colour by duplicate stitch"
        )
    if grid.technique == "stranded" and long_floats:
        warnings.append(
            f"{len(long_floats)} float(s) longer than {limit} sts in {_rows_text(over_limit)}: "
            "trap them as the row instructions say"
        )
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
        "difficulty": level,
        "difficulty_reason": reason,
        "errors": errors,
        "warnings": warnings,
    }


def _rows_text(rows: Sequence[int]) -> str:
    if len(rows) > 8:
        return "rows " + ", ".join(map(str, rows[:8])) + f" and {len(rows) - 8} more"
    return ("row " if len(rows) == 1 else "rows ") + ", ".join(map(str, rows))
