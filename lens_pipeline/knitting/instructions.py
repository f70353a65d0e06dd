"""Written instructions: row lines in working order, and the full pattern as Markdown and text.

RS rows are worked from stitch 1 (right edge of the chart) to stitch W; WS rows from stitch W
back to stitch 1, purled; rounds always from stitch 1 to W, knitted.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .checks import Float, float_limit, row_floats
from .grid import Grid

ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    ("k", "knit"), ("p", "purl"), ("st(s)", "stitch(es)"), ("RS", "right side"),
    ("WS", "wrong side"), ("MC", "main colour"), ("CC1, CC2, ...", "contrast colours"),
    ("CO", "cast on"), ("BO", "bind off"), ("rep", "repeat"), ("rnd", "round"),
)

# Craft Yarn Council standard weights: (lowest sts / 10 cm, weight name, needle mm, US size).
_NEEDLES: tuple[tuple[float, str, str, str], ...] = (
    (27, "super fine (fingering)", "2.25-3.25 mm", "US 1-3"),
    (23, "fine (sport)", "3.25-3.75 mm", "US 3-5"),
    (21, "light (DK)", "3.75-4.5 mm", "US 5-7"),
    (16, "medium (worsted)", "4.5-5.5 mm", "US 7-9"),
    (12, "bulky (chunky)", "5.5-8 mm", "US 9-11"),
    (7, "super bulky", "8-12.75 mm", "US 11-17"),
    (0, "jumbo", "12.75 mm or larger", "US 17 or larger"),
)


def side(grid: Grid, n: int) -> str | None:
    """'RS' or 'WS' for flat row n; None in the round (every round is RS)."""
    if grid.mode == "round":
        return None
    return "RS" if n % 2 == 1 else "WS"


def working_order(grid: Grid, n: int) -> list[int]:
    """Chart stitch numbers of row n in the order the knitter works them."""
    w = grid.width
    return list(range(w, 0, -1)) if side(grid, n) == "WS" else list(range(1, w + 1))


def row_runs(grid: Grid, n: int) -> list[tuple[int, int]]:
    """(colour index, stitch count) runs of row n in working order."""
    row = grid.row(n)
    runs: list[tuple[int, int]] = []
    for st in working_order(grid, n):
        c = int(row[st - 1])
        if runs and runs[-1][0] == c:
            runs[-1] = (c, runs[-1][1] + 1)
        else:
            runs.append((c, 1))
    return runs


def fold_repeats(items: Sequence[str]) -> list[str]:
    """Fold consecutive repeats of a group of 2+ items: a, b, a, b, a, b -> (a, b) 3 times."""
    out: list[str] = []
    i = 0
    while i < len(items):
        best_u, best_n = 1, 1
        for u in range(2, (len(items) - i) // 2 + 1):
            unit = list(items[i : i + u])
            n = 1
            while list(items[i + n * u : i + (n + 1) * u]) == unit:
                n += 1
            if n >= 2 and n * u > best_n * best_u:
                best_u, best_n = u, n
        if best_n >= 2:
            out.append(f"({', '.join(items[i : i + best_u])}) {best_n} times")
            i += best_u * best_n
        else:
            out.append(items[i])
            i += 1
    return out


def trap_stitches(f: Float, limit: int) -> list[int]:
    """Chart stitches to catch a float behind so that no unsupported stretch exceeds `limit`."""
    n = math.ceil((f.length - limit) / (limit + 1))
    return [f.stitches[round((i + 1) * f.length / (n + 1)) - 1] for i in range(n)]


def row_line(grid: Grid, n: int, limit: int | None = None) -> str:
    """One instruction line, e.g. `Row 1 (RS): k2 CC1, k4 MC. (6 sts)`, with trap notes for
    stranded floats longer than `limit`."""
    s = side(grid, n)
    verb = "p" if s == "WS" else "k"
    items = [f"{verb}{count} {grid.code(c)}" for c, count in row_runs(grid, n)]
    label = f"Row {n} ({s})" if s else f"Rnd {n}"
    line = f"{label}: {', '.join(fold_repeats(items))}. ({grid.width} sts)"
    if limit is not None and grid.technique == "stranded":
        order = {st: i for i, st in enumerate(working_order(grid, n))}
        long = [f for f in row_floats(grid.row(n), grid.mode == "round", n) if f.length > limit]
        notes = []
        for f in sorted(long, key=lambda f: order[f.stitches[0]]):
            sts = sorted(trap_stitches(f, limit), key=order.__getitem__)
            where = " and ".join(str(x) for x in sts)
            notes.append(f"Trap {grid.code(f.colour)} behind st{'s' if len(sts) > 1 else ''} "
                         f"{where} (float of {f.length} sts).")
        if notes:
            line += " " + " ".join(notes)
    return line


def cast_on_line(grid: Grid) -> str:
    return f"CO {grid.width} sts with {grid.palette[0].code}."


def bind_off_line(grid: Grid) -> str:
    contrast = [grid.code(c) for c in grid.used_colours() if c != 0]
    if not contrast:
        return f"BO with {grid.palette[0].code}."
    names = contrast[0] if len(contrast) == 1 else ", ".join(contrast[:-1]) + " and " + contrast[-1]
    return f"Break {names}. BO with {grid.palette[0].code}."


def instruction_lines(grid: Grid, max_float: int | None = 5) -> list[str]:
    """Cast-on, every row/round in working order, bind-off."""
    limit = float_limit(max_float, grid.gauge.stitches_per_10cm)
    lines = [cast_on_line(grid)]
    if grid.mode == "round":
        lines.append("Join to work in the round, taking care not to twist the sts.")
    lines += [row_line(grid, n, limit) for n in range(1, grid.height + 1)]
    lines.append(bind_off_line(grid))
    return lines


def needles_for(grid: Grid) -> str:
    g = grid.gauge.stitches_per_10cm
    weight, mm, us = next((w, m, u) for low, w, m, u in _NEEDLES if g >= low)
    kind = "circular needle (magic loop) or double-pointed needles" if grid.mode == "round" \
        else "straight or circular needles"
    return f"{mm} ({us}) {kind}, typical for {weight} yarn, or the size that gives the gauge"


def yarn_estimate(grid: Grid) -> dict[str, float]:
    """Metres per colour: each stitch ~3.5 stitch widths of yarn, plus stranded floats, plus 20%
    spare and 30 cm of tails per colour; rounded up to the half metre. An estimate only."""
    st_w_cm = 10.0 / grid.gauge.stitches_per_10cm
    cm = {c.code: 0.0 for c in grid.palette}
    for code, n in grid.stitch_counts().items():
        cm[code] += n * 3.5 * st_w_cm
    if grid.technique == "stranded":
        for r in range(1, grid.height + 1):
            for f in row_floats(grid.row(r), grid.mode == "round", r):
                cm[grid.code(f.colour)] += f.length * st_w_cm
    out = {}
    for c in grid.palette:
        if grid.stitch_counts()[c.code] == 0 and c.code != grid.palette[0].code:
            continue
        metres = (cm[c.code] * 1.2 + 30.0) / 100.0
        out[c.code] = math.ceil(metres * 2) / 2
    return out


# ---------------------------------------------------------------------- whole pattern


def _sections(grid: Grid, checks: dict[str, Any], about: dict[str, Any]) -> list[tuple[str, list]]:
    """Pattern content as (heading, blocks); block = ("p", text) | ("list", items) |
    ("table", header, rows) | ("lines", lines). Rendered to Markdown or plain text."""
    w_cm, h_cm = grid.gauge.size_cm(grid.width, grid.height)
    g = grid.gauge
    counts = grid.stitch_counts()
    yarn = yarn_estimate(grid)
    limit = checks["float_limit"]
    way = "worked flat, back and forth" if grid.mode == "flat" else "worked in the round"
    tech = "Stranded colourwork" if grid.technique == "stranded" else "Intarsia"
    metrics = (
        f"at most {checks['max_colours_per_row']} colours per row, at most "
        f"{checks['max_colour_runs']} colour runs per row, " + (
            f"longest float {checks['longest_float']} sts (limit {limit})"
            if grid.technique == "stranded" else "no floats (intarsia)")
    )
    glance = [
        f"Skill level: {checks['difficulty']} (Craft Yarn Council). Why: "
        f"{checks['difficulty_reason']}. Metrics: {metrics}.",
        f"Finished size: {w_cm:.1f} cm wide x {h_cm:.1f} cm tall "
        f"({grid.width} sts x {grid.height} rows), after blocking.",
        f"Gauge: {g.stitches_per_10cm:g} sts and {g.rows_per_10cm:g} rows = 10 cm "
        "in stockinette stitch colourwork. Check your gauge: the size depends on it.",
        f"Needles: {needles_for(grid)}.",
        "Yarn (estimate, with 20% spare): " + "; ".join(
            f"{code} {next(c.name for c in grid.palette if c.code == code)}: {m:g} m"
            for code, m in yarn.items()) + ".",
        f"Technique: {tech}, {way}.",
    ]
    key_rows = [[c.code, c.name, c.hex, c.symbol, str(counts[c.code])] for c in grid.palette]
    if grid.technique == "stranded":
        tech_notes = [
            "Work with two colours per row, one held in each hand or both in one hand; the "
            "colour not in use is carried loosely across the WS.",
            "Spread the sts on the right needle before each colour change so the float is as "
            "wide as the fabric and does not pucker.",
            f"Trap (catch) any float longer than {limit} sts behind a st of the working colour; "
            "the row instructions say where.",
            "Keep the same colour dominant (held below) for the whole piece.",
        ]
    else:
        tech_notes = [
            "Use a separate bobbin (or butterfly) for each colour area; do not carry yarn across "
            "the back.",
            "At every colour change, twist the old and new yarns on the WS (bring the new colour "
            "up from under the old) so no hole forms.",
            "There will be many ends: weave each one in along the edge of an area of its own colour.",
        ]
    if grid.mode == "round":
        tech_notes.append("Every round is read from right to left on the chart; place a marker "
                          "at the start of the round.")
    else:
        tech_notes.append("RS (odd) rows are read from right to left on the chart, WS (even) "
                          "rows from left to right.")
    check_items = [
        f"Colours per row: at most {checks['max_colours_per_row']}"
        + (f"; more than 2 in {len(checks['rows_over_two_colours'])} row(s)"
           if checks["rows_over_two_colours"] else "") + ".",
        (f"Longest float: {checks['longest_float']} sts (limit {limit} = about 2.5 cm at this "
         "gauge)" + (f"; rows over the limit: {', '.join(map(str, checks['rows_over_float_limit']))}"
                     if checks["rows_over_float_limit"] else "; no row over the limit") + "."
         if grid.technique == "stranded" else
         "Floats: none; intarsia gives each colour area its own bobbin."),
        f"Colour runs per row: at most {checks['max_colour_runs']}.",
    ]
    check_items += [f"ERROR: {e}." for e in checks["errors"]]
    check_items += [f"Warning: {w}." for w in checks["warnings"]]
    check_items += [f"Adjusted: {a}." for a in about.get("adjustments_text", [])]

    sections: list[tuple[str, list]] = [
        ("At a glance", [("list", glance)]),
        ("Colours", [("table", ["Code", "Name", "Hex", "Chart symbol", "Stitches"], key_rows)]),
        ("Abbreviations", [("list", [f"{a}: {b}" for a, b in ABBREVIATIONS])]),
        ("Technique notes", [("list", tech_notes)]),
        ("Knittability checks", [("list", check_items)]),
    ]
    if about.get("mapping_text"):
        sections.append(("How the chart was made", [("list", list(about["mapping_text"]))]))
    sections.append(("Instructions", [
        ("p", "The chart shows the right side; row 1 is at the bottom and stitch 1 at the right."),
        ("lines", instruction_lines(grid, checks.get("max_float", limit))),
        ("p", "Weave in the ends on the WS and block the piece to the finished size."),
    ]))
    return sections


def pattern_markdown(grid: Grid, checks: dict[str, Any], about: dict[str, Any] | None = None) -> str:
    """The pattern as Markdown (printing, the viewer)."""
    about = about or {}
    out = [f"# {about.get('title', 'Knitting pattern')}", ""]
    if about.get("subtitle"):
        out += [f"*{about['subtitle']}*", ""]
    for heading, blocks in _sections(grid, checks, about):
        out += [f"## {heading}", ""]
        for block in blocks:
            if block[0] == "p":
                out += [block[1], ""]
            elif block[0] in ("list", "lines"):  # lines: one row per list item, nothing folded
                out += [f"- {item}" for item in block[1]] + [""]
            elif block[0] == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(out).rstrip() + "\n"


def pattern_text(grid: Grid, checks: dict[str, Any], about: dict[str, Any] | None = None) -> str:
    """The same pattern as plain text: no markup, no tables, one statement per line, so a
    screen reader reads it in order."""
    about = about or {}
    title = about.get("title", "Knitting pattern")
    out = [title.upper(), ""]
    if about.get("subtitle"):
        out += [about["subtitle"], ""]
    for heading, blocks in _sections(grid, checks, about):
        out += [heading.upper() + ":", ""]
        for block in blocks:
            if block[0] == "p":
                out += [block[1], ""]
            elif block[0] in ("list", "lines"):
                out += list(block[1]) + [""]
            elif block[0] == "table":
                header, rows = block[1], block[2]
                for r in rows:
                    out.append(". ".join(f"{h}: {v}" for h, v in zip(header, r)) + ".")
                out.append("")
    return "\n".join(out).rstrip() + "\n"

