"""Written instructions: row lines in working order, and the full pattern as Markdown and text.

RS rows are worked from stitch 1 (right edge of the chart) to stitch W; WS rows from stitch W
back to stitch 1, purled; rounds always from stitch 1 to W, knitted.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .checks import Float, float_limit, row_floats
from .exports import duplicate_list
from .grid import Grid
from .yarns import YarnPlan, place_catches, plan_yarns, working_order

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
    return [st for _, st in place_catches(tuple((f.row, st) for st in f.stitches), limit)]


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


def worked_row_line(grid: Grid, n: int, plan: YarnPlan) -> str:
    """Row n as the knitter works it, with the yarn handling inline where it happens: `join CC1`
    before its first stitch, `k1 MC catching CC1` at each catch, `break CC2` after its last
    stitch, `carry CC2 along` (to the end of the row) after its last stitch; a yarn carried along
    an unused row, and carries up the side, as sentences. A yarn with no such note is left
    hanging after its last stitch: the next row picks it up there."""
    s = side(grid, n)
    verb = "p" if s == "WS" else "k"
    notes = plan.notes[n]
    row = grid.row(n)
    items: list[str] = []
    run: list[int] = []  # [colour, count] of the open run

    def flush() -> None:
        if run:
            items.append(f"{verb}{run[1]} {grid.code(run[0])}")
            run.clear()

    for i, st in enumerate(working_order(grid, n)):
        c = int(row[st - 1])
        if notes.join.get(i) or notes.catch.get(i) or (run and run[0] != c):
            flush()
        items += [f"join {grid.code(j)}" for j in notes.join.get(i, [])]
        if notes.catch.get(i):
            caught = " and ".join(grid.code(x) for x in notes.catch[i])
            items.append(f"{verb}1 {grid.code(c)} catching {caught}")
        elif run:
            run[1] += 1
        else:
            run += [c, 1]
        if notes.brk.get(i) or notes.carry.get(i):
            flush()
            items += [f"break {grid.code(b)}" for b in notes.brk.get(i, [])]
            items += [f"carry {grid.code(b)} along" for b in notes.carry.get(i, [])]
    flush()
    label = f"Row {n} ({s})" if s else f"Rnd {n}"
    along = "".join(f"Carry {grid.code(c)} along the back of this {'row' if s else 'rnd'}, catching it "
                    "where marked; " for c in notes.along)
    line = f"{label}: {along}{', '.join(fold_repeats(items))}. ({grid.width} sts)"
    return " ".join([line, *notes.after])


def pattern_lines(grid: Grid, plan: YarnPlan) -> list[str]:
    """Cast-on, every row with its yarn handling, bind-off and the ends to weave in."""
    lines = [cast_on_line(grid)]
    if grid.mode == "round":
        lines.append("Join to work in the round, taking care not to twist the sts; place a marker for the start of the rnd.")
    lines += [worked_row_line(grid, n, plan) for n in range(1, grid.height + 1)]
    brk = [grid.code(c) for c in plan.final_breaks]
    if len(set(brk)) < len(brk):  # intarsia: several bobbins of one colour
        brk = [f"{brk.count(code)} {code} bobbins" if brk.count(code) > 1 else code for code in dict.fromkeys(brk)]
    names = brk[0] if len(brk) == 1 else ", ".join(brk[:-1]) + " and " + brk[-1] if brk else ""
    lines.append((f"Break {names}. " if brk else "") + f"BO with {grid.code(plan.bind_off_colour)}.")
    lines.append(f"Weave in the {plan.ends} ends: the cast-on and bind-off tails, {_n(plan.joins, 'join')} "
                 f"and {_n(plan.breaks, 'break')}.")
    return lines


def contrast_codes(grid: Grid) -> list[str]:
    return [grid.code(i) for i in grid.used_colours() if i != 0]


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


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
    for d in duplicate_list(grid):  # a duplicate stitch takes about as much yarn as a stitch
        cm[d["colour"]] += 3.5 * st_w_cm
    if grid.technique == "stranded":
        for r in range(1, grid.height + 1):
            for f in row_floats(grid.row(r), grid.mode == "round", r):
                cm[grid.code(f.colour)] += f.length * st_w_cm
    out = {}
    for c in grid.palette:
        if grid.finished_counts()[c.code] == 0 and c.code != grid.palette[0].code:
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
    counts = grid.finished_counts()
    yarn = yarn_estimate(grid)
    limit = checks["float_limit"]
    way = "worked flat, back and forth" if grid.mode == "flat" else "worked in the round"
    tech = "Stranded colourwork" if grid.technique == "stranded" else "Intarsia"
    yp = checks["yarn_path"]
    limit_cm = limit * 10.0 / g.stitches_per_10cm
    if grid.technique == "stranded":
        floats = (f"longest float {yp['longest_float_after_catches']} sts after the pattern's "
                  f"{yp['catches']} catches ({yp['longest_float_as_knitted']} sts before; limit {limit} sts "
                  f"= {limit_cm:.1f} cm at this gauge)")
    else:
        floats = "no floats; bobbins " + ", ".join(f"{k} {v}" for k, v in yp["bobbins"].items())
    dup = (f", duplicate stitch in {checks['duplicate_stitch_rows']} of {grid.height} rows"
           if checks.get("duplicate_stitch_rows") else "")
    catches = f", at most {yp['max_catches_per_row']} catches in a row" if grid.technique == "stranded" else ""
    metrics = (
        f"at most {checks['max_colours_per_row']} colours per row, at most "
        f"{checks['max_colour_runs']} colour runs per row{catches}{dup}, {floats}; {yp['joins']} joins, "
        f"{yp['breaks']} breaks, {len(yp['carries'])} carries, {yp['ends_to_weave_in']} ends to weave in"
    )
    size = (f"Finished size: {w_cm:.1f} cm wide x {h_cm:.1f} cm tall" if grid.mode == "flat" else
            f"Finished size: {w_cm:.1f} cm circumference x {h_cm:.1f} cm tall")
    glance = [
        f"Skill level: {checks['difficulty']} (Craft Yarn Council). Why: "
        f"{checks['difficulty_reason']}. Metrics: {metrics}. Rule: {checks['difficulty_rule']}",
        f"{size} ({grid.width} sts x {grid.height} {'rows' if grid.mode == 'flat' else 'rnds'}), after blocking.",
        f"Gauge: {g.stitches_per_10cm:g} sts and {g.rows_per_10cm:g} rows = 10 cm "
        "in stockinette stitch colourwork. Check your gauge: the size depends on it.",
        f"Needles: {needles_for(grid)}.",
        "Yarn (estimate, with 20% spare): " + "; ".join(
            f"{code} {next(c.name for c in grid.palette if c.code == code)}: {m:g} m"
            for code, m in yarn.items()) + ".",
        f"Technique: {tech}, {way}.",
    ]
    key_rows = [[c.code, c.name, c.hex, "blank" if i == 0 else c.symbol, str(counts[c.code])]
                for i, c in enumerate(grid.palette)]
    if grid.technique == "stranded":
        tech_notes = [
            "Work with two colours per row, one held in each hand or both in one hand; the "
            "colour not in use is carried loosely across the WS.",
            "Spread the sts on the right needle before each colour change so the float is as "
            "wide as the fabric and does not pucker.",
            f"Catch (trap) the carried yarn where a row says `k1 MC catching CC1`: work that st while "
            f"trapping CC1 behind it. No float is then longer than {limit} sts ({limit_cm:.1f} cm); "
            "the catches are marked on the chart.",
            "Join a colour where a row says `join CC1`: start knitting with it, leaving a 15 cm tail. "
            "`break CC1`: cut it, leaving a 15 cm tail to weave in.",
            ("A yarn used again soon is carried to the end of the row: twist it with the working yarn "
             "at the edge st. A yarn carried up the side is twisted with the working yarn at the start of "
             "every row that begins at its edge." if grid.mode == "flat" else
             "A yarn used in the next rnd floats on across the end of the rnd (catch it where marked); "
             "a yarn waiting for a later rnd is carried up at the start of the rnd, twisted with the "
             "working yarn there."),
            "Hold the contrast colour" + ("s " if len(contrast_codes(grid)) > 1 else " ") + " and ".join(
                contrast_codes(grid)) + " as the dominant yarn (below MC) in every row, so the motif stands "
            "out; keep it that way for the whole piece." if contrast_codes(grid) else
            "Keep the same colour dominant (held below) for the whole piece.",
        ]
    else:
        tech_notes = [
            "Use a separate bobbin (or butterfly) for each colour area; do not carry yarn across "
            "the back. Wind " + ", ".join(f"{v} {k}" for k, v in yp["bobbins"].items()) + " bobbins "
            "(one per colour area).",
            "Join each area's bobbin where a row says `join`, leaving a 15 cm tail; `break` where its "
            "area ends.",
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
        (f"Floats: as knitted (with the carries to the edges) up to {yp['longest_float_as_knitted']} sts, "
         f"{yp['floats_over_limit_before_catches']} longer than the limit of {limit} sts ({limit_cm:.1f} cm "
         f"at this gauge); after the catches the longest is {yp['longest_float_after_catches']} sts."
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
    if about.get("machine_text"):
        sections.append(("Machine knitting (AYAB)", [("list", list(about["machine_text"]))]))
    sections.append(("Instructions", [
        ("p", "The chart shows the right side; row 1 is at the bottom and stitch 1 at the right."),
        ("lines", pattern_lines(grid, plan_yarns(grid, limit))),
        ("p", "Weave in the ends on the WS and block the piece to the finished size."),
    ]))
    dup = duplicate_list(grid)
    if dup:
        by_row: dict[tuple[int, str, str], list[int]] = {}
        for d in dup:
            by_row.setdefault((d["row"], d["colour"], d["knitted"]), []).append(d["stitch"])
        sections.append(("Duplicate stitch", [
            ("p", f"These {len(dup)} sts keep the picture exact while every row carries 2 colours: they are "
                  "knitted in the row's other colour (the rows above say so) and then covered on the RS with "
                  "duplicate stitch (Swiss darning) in their own colour. They are outlined in blue on the chart. "
                  "Stitches are counted from the right edge of the RS, as on the chart."),
            ("list", [f"In row {r}: {col} over st{'s' if len(sts) > 1 else ''} {', '.join(map(str, sorted(sts)))} "
                      f"(knitted in {k})." for (r, col, k), sts in sorted(by_row.items())]),
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

