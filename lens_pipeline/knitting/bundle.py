"""Assemble every output file of one pattern from a finished Grid."""

from __future__ import annotations

from typing import Any

from .chart import chart_pdf, chart_svg
from .checks import check_grid
from .exports import AyabReduce, ayab_image, duplicate_list, grid_csv, grid_json
from .grid import Grid
from .instructions import pattern_markdown, pattern_text
from .knitout import knitout_program


def pattern_files(
    grid: Grid,
    *,
    title: str = "Knitting pattern",
    subtitle: str = "",
    max_float: int = 5,
    mapping: dict[str, Any] | None = None,
    adjustments: list[dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
    ayab_machine: str = "standard",
    ayab_reduce: AyabReduce = "merge_contrast",
) -> dict[str, Any]:
    """{"chart.svg", "chart.pdf", "pattern.md", "pattern.txt", "grid.json", "grid.csv",
    "ayab.png", "pattern.k", "meta.json"} for one grid. If the AYAB export is impossible (too wide,
    too many colours with ayab_reduce="error", or intarsia) "ayab.png" is left out and meta.json
    says why; "pattern.k" (knitout) is written for stranded work only."""
    checks = check_grid(grid, max_float)
    checks["max_float"] = max_float
    adjustments = adjustments or []
    about: dict[str, Any] = {
        "title": title,
        "subtitle": subtitle,
        "adjustments_text": [
            f"row {a['row']}: {a['stitches']} {a['from']} st(s) knitted in {a['to']} "
            "(stranded work carries 2 colours per row)" for a in adjustments],
        "mapping_text": _mapping_text(mapping) if mapping else [],
    }
    if grid.technique == "intarsia":  # AYAB's single-bed mode is Fair Isle: it would float every colour
        ayab: dict[str, Any] = {"error": "intarsia: AYAB's single-bed (Fair Isle) mode would carry every colour "
                                         "across the back; knit it by hand or with an intarsia carriage"}
    else:
        try:
            img, ayab = ayab_image(grid, machine=ayab_machine, reduce=ayab_reduce)
        except ValueError as err:  # recorded, not hidden
            img, ayab = None, {"error": str(err)}
    about["machine_text"] = machine_text(grid, ayab, checks["float_limit"])
    w_cm, h_cm = grid.gauge.size_cm(grid.width, grid.height)
    files: dict[str, Any] = {
        "chart.svg": chart_svg(grid, title=title, subtitle=subtitle, max_float=max_float),
        "chart.pdf": chart_pdf(grid, title=title, subtitle=subtitle, max_float=max_float),
        "pattern.md": pattern_markdown(grid, checks, about),
        "pattern.txt": pattern_text(grid, checks, about),
        "grid.json": grid_json(grid, {"mapping": mapping} if mapping else None),
        "grid.csv": grid_csv(grid),
    }
    if "error" not in ayab:
        files["ayab.png"] = img
    if grid.technique == "stranded":  # single-bed jacquard; intarsia on a V-bed needs its own carriers per area
        files["pattern.k"] = knitout_program(grid)
    summary = {
        "difficulty": checks["difficulty"],
        "max_colours_per_row": checks["max_colours_per_row"],
        "longest_float": checks["longest_float"],
        "float_limit": checks["float_limit"],
        "rows_over_float_limit": len(checks["rows_over_float_limit"]),
        "rows_over_two_colours": len(checks["rows_over_two_colours"]),
        "adjusted_rows": len({a["row"] for a in adjustments}),
        "duplicate_stitches": len(duplicate_list(grid)),
        "knittable_as_written": not checks["errors"],
    }
    files["meta.json"] = {
        **(meta or {}),
        "title": title,
        "summary": summary,
        "mapping": mapping,
        "palette": [c.as_dict() for c in grid.palette],
        "stitch_counts": grid.stitch_counts(),  # knitted; the finished picture's are in grid.json
        "duplicate_stitch": duplicate_list(grid),
        "gauge": grid.gauge.as_dict(),
        "finished_size_cm": {"width": round(w_cm, 2), "height": round(h_cm, 2)},
        "stitches": grid.width,
        "rows": grid.height,
        "mode": grid.mode,
        "technique": grid.technique,
        "checks": checks,
        "adjustments": adjustments,
        "ayab": ayab,
    }
    return files


def machine_text(grid: Grid, ayab: dict[str, Any], limit: int) -> list[str]:
    """The pattern's machine section: what to set in AYAB desktop and what the machine will knit."""
    if "error" in ayab:
        return [f"No AYAB file: {ayab['error']}."]
    names = {c.code: c.name for c in grid.palette}
    fl = ayab["floats"]
    over = [r for r, m in zip(fl["rows"], fl["per_row"]) if m > limit]
    dup = len(duplicate_list(grid))
    return [
        *([f"The machine knits the rows as written; then work the {dup} duplicate stitches by hand."] if dup else []),
        f"File: ayab.png, {ayab['size_px'][0]} x {ayab['size_px'][1]} px, one pixel per stitch "
        f"({ayab['machine']} bed, at most {ayab['max_width']} sts).",
        "Mode: single bed, 2 colours. Leave \"Knit Side Image\" unticked (AYAB's default): the PNG is "
        "already drawn mirrored, as the machine knits it with the purl side facing you, so the right "
        "side of the fabric matches the chart.",
        f"Start row: {ayab['start_row']}. AYAB knits the bottom pixel row first: that is chart row 1.",
        f"Feeder A (needles AYAB leaves unselected): {ayab['feeders']['A']} {names[ayab['feeders']['A']]}. "
        f"Feeder B (needles AYAB selects): {ayab['feeders']['B']} {names[ayab['feeders']['B']]}. "
        "Check in AYAB's preview that the selected colour is the one you expect.",
        ("Colours: " + ayab["reduction"] + ", so the machine piece shows where any contrast is, not which one."
         if ayab["reduction"] else "Colours: the chart's own 2 colours."),
        f"Floats: the machine carries both yarns across every row and catches nothing; the longest float "
        f"in the 2-colour image is {fl['longest']} sts" + (
            f", longer than {limit} sts in {len(over)} row(s) ({', '.join(map(str, over[:10]))}"
            f"{' ...' if len(over) > 10 else ''}): hang those floats on a needle by hand or expect snags."
            if over else f"; none is longer than {limit} sts."),
    ]


def _mapping_text(m: dict[str, Any]) -> list[str]:
    out = [f"Source: {m.get('source', '?')}: {m.get('description', '')}."]
    where = ", ".join(f"{k} {m[k]}" for k in ("layer", "head") if k in m)
    if where:
        out.append(f"Taken from {where}.")
    if "threshold_rule" in m:
        out.append(f"Colour thresholds: {m['threshold_rule']} ({m.get('thresholds')}).")
    for lv in m.get("levels", []):
        if lv.get("rule"):
            out.append(f"{lv['code']}: {lv['rule']}.")
    sq = m.get("square_blocks")
    if sq:
        bs, br = sq["border_stitches"], sq["border_rows"]
        out.append(f"Blocks: {sq['stitches_per_block']} sts x {sq['rows_per_block']} rows per data item, near square "
                   f"at the gauge; an MC border of {bs} st{'s' * (bs != 1)} at each side (the selvedge) and "
                   f"{br} row{'s' * (br != 1)} at top and bottom frames the picture.")
        return out
    for axis, name in (("x_scale", "stitches"), ("y_scale", "rows")):
        sc = m.get(axis)
        if sc:
            pool = f"{sc['items_per_block']} items averaged per block, " if sc["items_per_block"] > 1 else ""
            out.append(f"Scaling ({name}): {sc['items']} items -> {pool}{sc['stitches_per_block']} "
                       f"{name} per block (whole-number repeat), {sc['offset']} + "
                       f"{sc['padding']} MC {name} of padding.")
    return out

