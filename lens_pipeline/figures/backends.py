"""Where the plan is drawn: here, in local processes or on Ray, per prompt; then the model-scope figures."""

from __future__ import annotations

import functools
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from lens_pipeline.draw.registry import REGISTRY, FigureSpec
from lens_pipeline.figures.call import DISK_ERRNOS, DrawInput, DrawOptions, draw
from lens_pipeline.figures.plan import FigurePlan
from lens_pipeline.figures.task import Jobs, Task
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache, CacheError
from lens_pipeline.store.integrity import ContentCheck


def _draw_prompt(save_path: Path, cache_row: dict[str, Any], jobs: Jobs, options: DrawOptions) -> list[dict[str, Any]]:
    """Worker: open one cache once and draw all of its figures, layer by layer."""
    source = DrawInput(cache_row["model"], cache_row["prompt_hash"], cache_row.get("sha256"), cache_row["path"])
    path = save_path / cache_row["path"]
    try:
        if not path.is_file():
            raise CacheError(f"{path}: cannot read it (no such file)")
        # The bytes the index records, or no figure (remembered from the plan's check: no second hash).
        if not ContentCheck(save_path).holds(cache_row):
            raise CacheError(f"{path}: does not match its recorded sha256 (corrupt or changed); "
                             f"rerun the activations stage")
        cache = Cache(path)
    except CacheError as error:
        if options.raise_errors:
            raise
        return [
            index.make_row("figure", model=source.model, prompt_hash=source.prompt_hash, function=task.function,
                           scope=REGISTRY[task.function].scope, layer=task.layer, head=task.head, params=params,
                           cache_sha256=source.cache_sha256, cache_path=source.cache_path,
                           code_sha256=REGISTRY[task.function].code_sha256, view=REGISTRY[task.function].view,
                           status="error", error=str(error))
            for task, params in jobs
        ]
    rows: list[dict[str, Any]] = []
    with cache:
        try:
            for task, params in jobs:
                rows.append(draw(REGISTRY[task.function], cache, task, params, save_path, source, options))
        except OSError as error:  # disk full: these rows never reach the index, so their files go
            if error.errno in DISK_ERRNOS:
                index.discard_unrecorded(save_path, rows)
            raise
    return rows


def _one_blas_thread() -> None:
    """Workers already fill the cores; a multi-threaded BLAS inside each one oversubscribes them
    (an SVD measured 100x slower on 2 busy cores)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def draw_here(save_path: Path, plan: FigurePlan, options: DrawOptions) -> Iterator[list[dict[str, Any]]]:
    for cache_row, jobs in plan.prompts:
        yield _draw_prompt(save_path, cache_row, jobs, options)


def draw_in_processes(save_path: Path, plan: FigurePlan, workers: int, options: DrawOptions) -> Iterator[list[dict[str, Any]]]:
    # fork keeps figures registered in a notebook's __main__ visible to the workers.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_blas_thread) as pool:
        futures = [pool.submit(_draw_prompt, save_path, cache_row, jobs, options) for cache_row, jobs in plan.prompts]
        for future in as_completed(futures):
            yield future.result()


def draw_on_ray(save_path: Path, plan: FigurePlan, address: str, options: DrawOptions) -> Iterable[list[dict[str, Any]]]:
    """The per-prompt plan on Ray workers (one per CPU slot), a few prompts per shard; each
    shard's rows come back here, the index's only writer. The figure specs travel with the work,
    so functions registered in a notebook draw on the workers too. SAVE_PATH must be a folder
    every worker sees (one machine, or a shared file system)."""
    from lens_pipeline import distributed

    specs = [REGISTRY[name] for name in sorted({task.function for _, jobs in plan.prompts for task, _ in jobs})]
    setup = functools.partial(_register_on_worker, specs)
    work = functools.partial(_draw_shard, save_path=save_path, options=options)
    return distributed.run_shards(setup, work, distributed.chunks(plan.prompts, 2), address=address, use_gpus=False)


def _register_on_worker(specs: list[FigureSpec]) -> None:
    _one_blas_thread()
    for spec in specs:
        REGISTRY[spec.name] = spec


def _draw_shard(
    state: None, shard: list[tuple[dict[str, Any], Jobs]], *, save_path: Path, options: DrawOptions,
) -> list[dict[str, Any]]:
    return [row for cache_row, jobs in shard for row in _draw_prompt(save_path, cache_row, jobs, options)]


def draw_models(save_path: Path, plan: FigurePlan, options: DrawOptions) -> Iterator[list[dict[str, Any]]]:
    """Model-scope figures (comparisons across a model's prompts), after the prompts."""
    for model, rows, fingerprint, todo in plan.models:
        left_out = [row["path"] for row in plan.damaged if row["model"] == model]
        warning = (f"left out {len(left_out)} cache(s) that do not hold their recorded bytes (corrupt or changed; "
                   f"rerun the activations stage): {', '.join(left_out)}") if left_out else None
        opened = [Cache(save_path / row["path"]) for row in rows]
        try:
            for spec, params in todo:
                source = DrawInput(model, "", fingerprint, None)
                row = draw(spec, opened, Task(spec.name), params, save_path, source, options)
                if warning and row["status"] == "ok":
                    row["warnings"] = [warning]
                    tqdm.write(f"warning: {spec.name} on {model}: {warning}", file=sys.stderr)
                yield [row]
        finally:
            for cache in opened:
                cache.close()
