"""What a run draws, decided from the index and each cache's meta; draws and writes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lens_pipeline.draw.registry import FigureSpec
from lens_pipeline.figures.choose import effective_params
from lens_pipeline.figures.settings import FiguresSettings
from lens_pipeline.figures.task import Jobs, Task
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache, CacheError
from lens_pipeline.store.integrity import ContentCheck


def _tasks_for(spec: FigureSpec, cache: Cache, layers: frozenset[int] | None, heads: frozenset[int] | None) -> list[Task]:
    layer_range = [layer for layer in range(cache.n_layers) if layers is None or layer in layers]
    if spec.scope == "head":
        return [Task(spec.name, layer, head) for layer in layer_range for head in range(cache.n_heads)
                if heads is None or head in heads]
    if spec.scope == "layer":
        return [Task(spec.name, layer) for layer in layer_range]
    return [Task(spec.name)]


@dataclass
class FigurePlan:
    """What a run draws: per cache, the figure calls whose recorded row is missing or out of date
    (other code, params or cache); model-scope calls; and rows of figures that went stale."""

    prompts: list[tuple[dict[str, Any], Jobs]] = field(default_factory=list)
    models: list[tuple[str, list[dict[str, Any]], str, list[tuple[FigureSpec, dict[str, Any]]]]] = field(default_factory=list)
    stale: list[dict[str, Any]] = field(default_factory=list)
    up_to_date: list[dict[str, Any]] = field(default_factory=list)  # recorded rows that need no redraw
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[dict[str, Any]] = field(default_factory=list)  # current caches not holding their recorded bytes
    planned: set[index.Key] = field(default_factory=set)  # the figure keys this run draws

    @property
    def size(self) -> int:
        return sum(len(jobs) for _, jobs in self.prompts) + sum(len(specs) for *_, specs in self.models) + len(self.unreadable)


def is_current(
    row: dict[str, Any] | None, spec: FigureSpec, params: dict[str, Any], cache_sha: str | None, save_path: Path,
    image_formats: tuple[str, ...] = (),
) -> bool:
    """A recorded figure that needs no redraw: same code, params, cache and formats, files intact."""
    if row is None or row.get("status") not in ("ok", "skipped"):
        return False
    if (row.get("params"), row.get("cache_sha256"), row.get("code_sha256")) != (params, cache_sha, spec.code_sha256):
        return False
    if row["status"] == "ok" and tuple(row.get("image_formats") or ()) != image_formats:
        return False
    assets = row.get("assets")  # the shared scripts an interactive page loads: there, at their recorded size
    return row["status"] == "skipped" or (index.is_complete(row, save_path)
                                          and (not assets or index.is_complete({"status": "ok", "files": assets}, save_path)))


def model_fingerprint(cache_rows: Sequence[dict[str, Any]]) -> str:
    """A model-scope figure's input is the set of its model's caches: a new one makes it out of date."""
    return index.sha256_bytes("".join(sorted(r.get("sha256") or "" for r in cache_rows)).encode())


def _to_draw(plan: FigurePlan, row: dict[str, Any] | None, key: index.Key, spec: FigureSpec, params: dict[str, Any],
             source_sha: str | None, save_path: Path, settings: FiguresSettings) -> bool:
    """Whether the figure at `key` is drawn this run (then planned); else its recorded row is kept as up to date."""
    if row is not None and not settings.force and is_current(row, spec, params, source_sha, save_path, settings.image_formats):
        plan.up_to_date.append(row)
        return False
    plan.planned.add(key)
    return True


def plan_figures(save_path: Path, specs: Sequence[FigureSpec], settings: FiguresSettings,
                 newest: dict[index.Key, dict[str, Any]]) -> FigurePlan:
    """Decide what to draw from the index (and each cache's meta.json); draws and writes nothing."""
    plan = FigurePlan()
    current = index.current_caches(newest.values())
    check = ContentCheck(save_path)
    present = {key: row for key, row in current.items() if check.holds(row)}
    check.save()
    selected = lambda row: ((not settings.models or row["model"] in settings.models)  # noqa: E731
                            and (not settings.prompts or any(row["prompt_hash"].startswith(p) for p in settings.prompts)))
    caches = [row for row in present.values() if selected(row)]
    # A cache file that is there but not with its recorded bytes (truncated, flipped): every figure of it
    # is redrawn, which records an error naming the file, and the model's figures leave it out.
    damaged = [row for key, row in current.items() if key not in present and selected(row)
               and (save_path / row["path"]).is_file()]
    plan.damaged = damaged
    damaged_paths = {row["path"] for row in damaged}
    figures = {key: row for key, row in newest.items() if row["kind"] == "figure"}
    per_prompt = [s for s in specs if s.scope != "model"]
    shapes: dict[str, Any] = {}  # cache path -> its meta (layers, heads); read from the file only
    for cache_row in caches + damaged if per_prompt else []:
        try:
            with Cache(save_path / cache_row["path"]) as cache:  # reads only meta.json
                shapes[cache_row["path"]] = cache
        except CacheError:
            plan.unreadable.append(cache_row)
    by_model = {row["model"]: shapes[row["path"]] for row in caches + damaged if row["path"] in shapes}
    for cache_row in caches + damaged if per_prompt else []:
        # An unreadable cache gets its model's layers and heads, so its error rows have the keys
        # the figures will have once it is recomputed (and are replaced by them).
        shape = shapes.get(cache_row["path"]) or by_model.get(cache_row["model"])
        jobs = []
        for spec in per_prompt:
            params = effective_params(spec, settings.params)
            for task in _tasks_for(spec, shape, settings.layers, settings.heads) if shape else [Task(spec.name)]:
                key = ("figure", cache_row["model"], cache_row["prompt_hash"], task.function, task.layer, task.head, "")
                recorded = None if cache_row["path"] in damaged_paths else figures.get(key)
                if _to_draw(plan, recorded, key, spec, params, cache_row.get("sha256"), save_path, settings):
                    jobs.append((task, params))
        if jobs:
            plan.prompts.append((cache_row, jobs))
    for model in sorted({row["model"] for row in caches}):
        rows = [row for row in caches if row["model"] == model]
        fingerprint = model_fingerprint(rows)
        todo = []
        for spec in (s for s in specs if s.scope == "model"):
            params = effective_params(spec, settings.params)
            key = ("figure", model, "", spec.name, None, None, "")
            if _to_draw(plan, figures.get(key), key, spec, params, fingerprint, save_path, settings):
                todo.append((spec, params))
        if todo:
            plan.models.append((model, rows, fingerprint, todo))
    plan.stale = stale_rows(figures, present, plan.planned, {(r["model"], r["prompt_hash"]): r for r in damaged})
    return plan


def stale_rows(figures: dict[index.Key, dict[str, Any]], current: dict[tuple[str, str], dict[str, Any]],
               planned: set[index.Key], damaged: dict[tuple[str, str], dict[str, Any]] | None = None,
               ) -> list[dict[str, Any]]:
    """Rows marking as stale each ok figure (not redrawn now) whose cache is gone, damaged (known to the
    figures stage, which checks content) or no longer current."""
    damaged = damaged or {}
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in current.values():
        by_model.setdefault(row["model"], []).append(row)
    stale = []
    for key, row in figures.items():
        if row.get("status") != "ok" or key in planned:
            continue
        model, prompt_hash = row.get("model", ""), row.get("prompt_hash", "")
        if prompt_hash:
            cache = current.get((model, prompt_hash))
            if (model, prompt_hash) in damaged:
                reason = (f"its cache {damaged[model, prompt_hash]['path']} does not hold its recorded bytes "
                          f"(corrupt or changed); rerun the activations stage")
            elif cache is None:
                reason = "its cache is gone (file deleted, pruned or failed); rerun the activations stage"
            elif row.get("cache_sha256") != cache.get("sha256"):
                reason = f"drawn from another cache than the current one ({cache['path']}); rerun figures to redraw"
            else:
                continue
        elif model not in by_model:
            reason = f"no current cache of {model} is left"
        elif row.get("cache_sha256") != model_fingerprint(by_model[model]):
            reason = f"drawn from another set of {model}'s caches; rerun figures to redraw"
        else:
            continue
        stale.append(dict(row, status="stale", reason=reason))
    return stale
