"""Assemble every output file of one pattern from a finished Grid."""

from __future__ import annotations

from typing import Any

from .chart import chart_pdf, chart_svg
from .checks import check_grid
from .exports import AyabReduce, ayab_image, grid_csv, grid_json
from .grid import Grid
from .instructions import pattern_markdown, pattern_text


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
    "ayab.png", "meta.json"} for one grid. If the AYAB export is impossible (too wide, or too
    many colours with ayab_reduce="error") "ayab.png" is left out and meta.json says why."""
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
    w_cm, h_cm = grid.gauge.size_cm(grid.width, grid.height)
    files: dict[str, Any] = {
        "chart.svg": chart_svg(grid, title=title, subtitle=subtitle, max_float=max_float),
        "chart.pdf": chart_pdf(grid, title=title, subtitle=subtitle, max_float=max_float),
        "pattern.md": pattern_markdown(grid, checks, about),
        "pattern.txt": pattern_text(grid, checks, about),
        "grid.json": grid_json(grid, {"mapping": mapping} if mapping else None),
        "grid.csv": grid_csv(grid),
    }
    try:
        img, ayab = ayab_image(grid, machine=ayab_machine, reduce=ayab_reduce)
        files["ayab.png"] = img
    except ValueError as err:  # recorded, not hidden
        ayab = {"error": str(err)}
    summary = {
        "difficulty": checks["difficulty"],
        "max_colours_per_row": checks["max_colours_per_row"],
        "longest_float": checks["longest_float"],
        "float_limit": checks["float_limit"],
        "rows_over_float_limit": len(checks["rows_over_float_limit"]),
        "rows_over_two_colours": len(checks["rows_over_two_colours"]),
        "adjusted_rows": len({a["row"] for a in adjustments}),
        "knittable_as_written": not checks["errors"],
    }
    files["meta.json"] = {
        **(meta or {}),
        "title": title,
        "summary": summary,
        "mapping": mapping,
        "palette": [c.as_dict() for c in grid.palette],
        "stitch_counts": grid.stitch_counts(),
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
    for axis, name in (("x_scale", "stitches"), ("y_scale", "rows")):
        sc = m.get(axis)
        if sc:
            pool = f"{sc['items_per_block']} items averaged per block, " if sc["items_per_block"] > 1 else ""
            out.append(f"Scaling ({name}): {sc['items']} items -> {pool}{sc['stitches_per_block']} "
                       f"{name} per block (whole-number repeat), {sc['offset']} + "
                       f"{sc['padding']} MC {name} of padding.")
    return out

