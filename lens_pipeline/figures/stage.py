"""The figures stage from Python: `run_figures`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

from lens_pipeline.figures.backends import draw_here, draw_in_processes, draw_models, draw_on_ray
from lens_pipeline.figures.call import DrawOptions
from lens_pipeline.figures.choose import (
    check_params,
    load_builtins,
    select_figures,
)
from lens_pipeline.figures.plan import plan_figures
from lens_pipeline.figures.record import FiguresSummary, Recorder
from lens_pipeline.figures.settings import FiguresSettings
from lens_pipeline.figures.show import show
from lens_pipeline.store import index
from lens_pipeline.store.cache import remove_orphan_temp_files


def run_figures(save_path: str | Path = "attn_data", settings: FiguresSettings | None = None, **options: Any) -> FiguresSummary:
    """Draw figures for the current caches in `save_path`; returns the rows it wrote.

    `settings`, or its fields as keywords: figures (globs over registered names), models (model
    names), prompts (prompt-hash prefixes), layers/heads (sets or '0-3,7' strings), params
    ({figure: {option: value}}, checked before anything is drawn), workers (local processes), ray
    ('auto' or a cluster address), force, raise_errors (stop at the first error and re-raise it,
    drawing in this process), progress, display. Raises FigureParamError for a bad name or value.
    """
    started = time.perf_counter()
    settings = settings or FiguresSettings.build(**options)
    load_builtins()
    save_path = Path(save_path)
    specs = select_figures(settings.figures)
    check_params(specs, settings.params)
    remove_orphan_temp_files(save_path / "figures")
    index.repair(save_path)
    newest = index.latest(index.read_rows(save_path))
    plan = plan_figures(save_path, specs, settings, newest)
    texts = {(r["model"], r["prompt_hash"]): r.get("text", "") for r in index.current_caches(newest.values()).values()}
    recorder = Recorder(save_path, texts, plan.size, settings.progress)
    recorder.summary.skipped = len(plan.up_to_date)
    recorder.summary.current = plan.up_to_date
    recorder.summary.stale = len(plan.stale)
    index.append_rows(save_path, plan.stale)
    try:
        options = DrawOptions(settings.raise_errors, settings.image_formats)
        if settings.raise_errors or not plan.prompts:  # raising needs this process: a worker's traceback is lost
            rows_of_prompts: Iterable[list[dict[str, Any]]] = draw_here(save_path, plan, options)
        elif settings.ray:
            rows_of_prompts = draw_on_ray(save_path, plan, settings.ray, options)
        elif settings.workers > 1 and len(plan.prompts) > 1:
            rows_of_prompts = draw_in_processes(save_path, plan, settings.workers, options)
        else:
            rows_of_prompts = draw_here(save_path, plan, options)
        for rows in rows_of_prompts:
            recorder(rows)
        for rows in draw_models(save_path, plan, options):
            recorder(rows)
    finally:
        recorder.close()
    summary = recorder.summary
    summary.seconds = time.perf_counter() - started
    if settings.display:
        show(summary.current + summary.rows, save_path, settings.display_limit, texts)
    return summary
