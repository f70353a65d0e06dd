"""Survey the knitting patterns of a save path: skill levels, floats after catches, ends, the picture.

    python -m lens_pipeline.knitting.survey --save-path attn_data [--param mode=round ...]

Draws `knitting_pattern` (in memory, nothing written) for every cache with the given options and
prints one line per pattern and the totals, so docs/knitting.md's numbers can be reproduced.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import numpy as np


def picture_metrics(meta: dict[str, Any], cells: list[list[str]]) -> dict[str, Any]:
    """What the finished picture looks like: size, block size in cm, contrast share, plain rows and the
    plain MC stitches at each side (padding or border)."""
    grid = np.array(cells)
    g = meta["gauge"]
    xs, ys = meta["mapping"].get("x_scale"), meta["mapping"].get("y_scale")
    contrast = grid != "MC"
    cols = np.flatnonzero(contrast.any(axis=0))
    block = None
    if xs and ys:
        block = [round(xs["stitches_per_block"] * 10 / g["stitches_per_10cm"], 2),
                 round(ys["stitches_per_block"] * 10 / g["rows_per_10cm"], 2)]
    return {
        "size": f"{meta['stitches']}x{meta['rows']}",
        "block_cm": block,  # one data item's block: width, height in cm
        "contrast_pct": round(100 * float(contrast.mean()), 1),
        "plain_rows_pct": round(100 * float((~contrast.any(axis=1)).mean()), 1),
        "plain_edge_sts": int(min(cols[0], grid.shape[1] - 1 - cols[-1])) if len(cols) else grid.shape[1],
    }


def survey(save_path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary row per cache: level, floats before/after catches, catches, ends, runs, the picture."""
    import lens_pipeline
    from lens_pipeline.draw.builtins.knitting import knitting_pattern

    rows = []
    for cache in lens_pipeline.open(save_path).caches():
        out = knitting_pattern(cache, **params)
        meta = out["meta.json"]
        checks, yp = meta["checks"], meta["checks"]["yarn_path"]
        rows.append({
            "model": cache.model, "prompt": cache.prompt_hash[:8], "level": meta["summary"]["difficulty"],
            "float_before": yp["longest_float_as_knitted"], "float_after": yp["longest_float_after_catches"],
            "chart_float_after": yp["longest_chart_float_after_catches"], "catches": yp["catches"],
            "max_catches_per_row": max(yp["catches_per_row"], default=0), "max_runs": checks["max_colour_runs"],
            "duplicate_stitches": meta["summary"]["duplicate_stitches"],
            "ends": yp["ends_to_weave_in"], "machine_float": meta["ayab"].get("floats", {}).get("longest"),
            **picture_metrics(meta, out["grid.json"]["cells"]),
        })
    return rows


NUMBERS = ("float_before", "float_after", "chart_float_after", "catches", "max_catches_per_row", "max_runs",
           "duplicate_stitches", "ends", "machine_float", "contrast_pct", "plain_rows_pct", "plain_edge_sts")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save-path", default="attn_data")
    ap.add_argument("--param", action="append", default=[], help="NAME=JSON, e.g. mode='\"round\"' or width=40")
    args = ap.parse_args(argv)
    params = {}
    for p in args.param:
        k, v = p.split("=", 1)
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    rows = survey(args.save_path, params)
    for r in rows:
        print(json.dumps(r))
    print("levels:", dict(Counter(r["level"] for r in rows)))
    print("sizes:", dict(Counter(r["size"] for r in rows)))
    for key in NUMBERS:
        vals = [r[key] for r in rows if r[key] is not None]
        if vals:
            print(f"{key}: min {min(vals):g}, max {max(vals):g}, total {sum(vals):g}, mean {sum(vals) / len(vals):.1f}")


if __name__ == "__main__":
    main()
