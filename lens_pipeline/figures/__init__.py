"""The figures stage: every registered figure function over every cache -> files + index rows.

    python -m lens_pipeline.figures --save-path attn_data --figures 'attention_*' --workers 2

From a notebook:

    from lens_pipeline import register_figure, run_figures

    @register_figure(scope="prompt", formats="png")
    def my_figure(cache): ...

    run_figures("attn_data", figures=["my_figure"], display=True)

Work is split per prompt: a worker opens a cache once, draws every figure of that prompt
(heads in layer order, so each layer is decoded once), and hands the index rows back to the
parent, the index's only writer. Figures already recorded as ok for the same cache and params
are skipped; failed ones are recorded with their error and retried on the next run.

The modules, in the order a run uses them: choose (which figures, which options), settings (the
run as one object), plan (what is out of date), backends (where it is drawn), call (one figure
call -> files + row), files (paths and bytes), record (the index rows and the summary), show
(inline display), stage (`run_figures`), cli (`python -m lens_pipeline.figures`).
"""

from lens_pipeline.figures.choose import FigureParamError, load_builtins, parse_range
from lens_pipeline.figures.cli import main
from lens_pipeline.figures.files import render
from lens_pipeline.figures.plan import stale_rows
from lens_pipeline.figures.record import FiguresSummary
from lens_pipeline.figures.settings import FiguresSettings
from lens_pipeline.figures.stage import run_figures

__all__ = ["FigureParamError", "FiguresSettings", "FiguresSummary", "load_builtins", "main", "parse_range", "render",
           "run_figures", "stale_rows"]
