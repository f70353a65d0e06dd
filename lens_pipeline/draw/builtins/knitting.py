"""The knitting figure: model internals -> a chart, a written pattern and machine files.

    knitting_pattern(cache, source="attention_layer_mean", layer=None, ...)

returns {"chart.svg", "chart.pdf", "pattern.md", "pattern.txt", "grid.json", "grid.csv",
"ayab.png", "pattern.k", "meta.json"} (no ayab.png or pattern.k for intarsia). See lens_pipeline.knitting for the conventions.
"""

from __future__ import annotations

from typing import Any, Sequence

from lens_pipeline.draw.registry import SkipFigure, register_figure
from lens_pipeline.knitting import Gauge, Grid, limit_colours_per_row, palette_for, pattern_files
from lens_pipeline.knitting.grid import SquareBlocks, duplicate_stitch_layer, scheme_name
from lens_pipeline.knitting.mapping import SOURCES, source_levels

FORMATS = ("svg", "pdf", "md", "txt", "json", "csv", "png", "k")
NEEDS_LM_HEAD = ("top1_prob",)  # sources read from next-token predictions
SQUARE_BY_DEFAULT = ("attention_head", "attention_layer_mean")  # token x token pictures: square blocks read best


@register_figure(scope="prompt", formats=FORMATS, name="knitting_pattern", view="knitting")
def knitting_pattern(
    cache: Any,
    *,
    source: str = "attention_layer_mean",
    layer: int | None = None,
    head: int | None = None,
    width: int = 20,
    height: int = 20,
    colours: int = 3,
    mode: str = "flat",
    technique: str = "stranded",
    stitches_per_10cm: float = 22.0,
    rows_per_10cm: float = 30.0,
    max_float: int = 5,
    stranded_fix: str = "duplicate",
    thresholds: Sequence[float] | str | None = None,
    ayab_machine: str = "standard",
    ayab_reduce: str = "merge_contrast",
    blocks: str = "auto",
) -> dict[str, Any]:
    """Knitting pattern (chart SVG/PDF, written pattern, grid JSON/CSV, AYAB PNG, knitout) of one prompt.

    source: attention_head | attention_layer_mean | top1_prob | resid_norms (see
      lens_pipeline.knitting.mapping.SOURCES); layer defaults to the middle layer, head to 0.
    width x height stitches, `colours` 2..6 from the model family's scheme.
    mode: "flat" or "round"; technique: "stranded" or "intarsia".
    stranded_fix: rows with more than 2 colours: "duplicate" knits them in 2 colours and adds the
      others by duplicate stitch (the picture stays exact), "adjust" recolours them to the nearest
      kept colour (logged, and marked on the chart), "flag" leaves them and reports an error.
    thresholds: override the source's default thresholds (same units, recorded). Attention sources
      default to "quantiles" (fixed quantiles of the prompt's visible attention: about a quarter of the
      visible picture is contrast); "uniform" gives 1, 2, 4, ... x uniform attention.
    blocks: "auto" (the default: "square" for the attention sources, "fill" for the others), "fill"
      (whole-number blocks filling width x height, each axis on its own, MC padding at the edges) or
      "square" (blocks near square in cm at the gauge; the chart shrinks to the picture plus an MC
      border, 2 sts or 1 where that keeps more tokens apart; width x height are then the maximum;
      not for top1_prob).
    ayab_machine: "standard" (200 needles) or "KH-270" (112); ayab_reduce: "merge_contrast"
      (3+ colours -> MC vs one contrast) or "error" (then ayab.png is left out, with the reason).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {sorted(SOURCES)}")
    if source in NEEDS_LM_HEAD and (missing := cache.missing(("lm_head",))):
        raise SkipFigure(f"source={source}: {missing[0]}")
    if stranded_fix not in ("duplicate", "adjust", "flag"):
        raise ValueError("stranded_fix must be 'duplicate', 'adjust' or 'flag'")
    if mode == "in_the_round":
        mode = "round"
    if blocks not in ("auto", "fill", "square"):
        raise ValueError("blocks must be 'auto', 'fill' or 'square'")
    if blocks == "auto":
        blocks = "square" if source in SQUARE_BY_DEFAULT else "fill"
    palette = palette_for(cache.family, colours)
    square = SquareBlocks(rows_per_10cm / stitches_per_10cm) if blocks == "square" else None
    levels, mapping = source_levels(cache, source, layer, head, width, height, colours, thresholds, square)
    cells = levels[:, ::-1]  # picture column 0 is the left edge; stitch 1 is the right edge
    adjustments: list[dict[str, Any]] = []
    duplicate = recoloured = None
    if technique == "stranded" and stranded_fix == "adjust":
        data = cells
        cells, adjustments = limit_colours_per_row(cells, palette, 2)
        recoloured = cells != data
    elif technique == "stranded" and stranded_fix == "duplicate":
        cells, duplicate = duplicate_stitch_layer(cells, 2)
    grid = Grid(cells, palette, Gauge(stitches_per_10cm, rows_per_10cm), mode, technique,  # type: ignore[arg-type]
                duplicate=duplicate, recoloured=recoloured)

    where = ""
    if "layer" in mapping:
        where = f", layer {mapping['layer']}" + (f" head {mapping['head']}" if "head" in mapping else "")
    title = f"{cache.model}: {source.replace('_', ' ')}{where}"
    text = " ".join(str(cache.text).split())
    subtitle = f'Prompt {cache.prompt_hash[:8]}: "{text[:70]}{"..." if len(text) > 70 else ""}"'
    meta = {
        "model": cache.model,
        "family": cache.family,
        "colour_scheme": scheme_name(cache.family),
        "prompt_hash": cache.prompt_hash,
        "n_tokens": cache.n_tokens,
        "tokens": list(cache.tokens),
        "stranded_fix": stranded_fix if technique == "stranded" else None,
    }
    return pattern_files(
        grid, title=title, subtitle=subtitle, max_float=max_float, mapping=mapping,
        adjustments=adjustments, meta=meta, ayab_machine=ayab_machine,
        ayab_reduce=ayab_reduce,  # type: ignore[arg-type]
    )
