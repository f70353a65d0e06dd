"""The activations stage from Python: `run_activations`."""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from lens_pipeline.activations.on_ray import run_on_ray
from lens_pipeline.activations.prompts_run import run_prompts, to_stderr
from lens_pipeline.activations.resume import Todo, find_pending
from lens_pipeline.activations.rows import ig_misses
from lens_pipeline.activations.settings import DEFAULT_PROMPTS, DEFAULT_SAVE_PATH, ActivationsSettings
from lens_pipeline.activations.writer import check_writable
from lens_pipeline.capture.models import DEFAULT_MODEL, ModelSource, slug
from lens_pipeline.capture.prompts import Prompt, PromptFileError, read_prompts
from lens_pipeline.corpus.ablation_means import resolve_means
from lens_pipeline.corpus.basis import resolve_basis
from lens_pipeline.store import index
from lens_pipeline.store.cache import (
    prompt_hash,
    remove_orphan_temp_files,
)


@dataclass
class StageSummary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    bad_lines: int = 0
    pruned: list[str] = field(default_factory=list)
    models_loaded: list[str] = field(default_factory=list)
    ig_over_tolerance: list[str] = field(default_factory=list)  # "file:line: ..." of prompts whose IG missed it
    seconds: float = 0.0


def run_activations(
    models: Sequence[str] | str | None = None,
    prompts: str | Path = DEFAULT_PROMPTS,
    save_path: str | Path = DEFAULT_SAVE_PATH,
    settings: ActivationsSettings | None = None,
    *,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> StageSummary:
    """Run the stage from Python; returns counts. `settings`, or its fields as keywords (batch_size=4,
    logit_lens=True, ...; see ActivationsSettings and ExtractSettings). Raises ModelLoadError,
    PromptFileError, SavePathError."""
    from lens_pipeline.capture import models as model_sources

    settings = settings or ActivationsSettings.build(**options)
    log = log or to_stderr
    if settings.extract.explains:  # a wrong method name fails now, not after the model loads
        from lens_pipeline.capture import explain

        explain.check_settings(settings.extract)
    if settings.extract.causal:  # likewise an unknown --patch site or metric
        from lens_pipeline.capture import causal

        causal.check_settings(settings.extract)
    started = time.perf_counter()
    save_path = Path(save_path)
    if isinstance(models, str) or models is None:
        models = [m.strip() for m in (models or DEFAULT_MODEL).split(",") if m.strip()]
    good, bad = read_prompts(prompts)
    summary = StageSummary(bad_lines=len(bad))
    for problem in bad:
        log(f"warning: skipped {problem}")
    if bad and settings.strict:
        raise PromptFileError(f"{len(bad)} bad prompt line(s), first: {bad[0]} (--strict stops here)")
    sources = [model_sources.resolve_source(name, settings.random_weights) for name in models]
    check_writable(save_path)
    remove_orphan_temp_files(save_path / "caches")  # left by a run killed with -9
    index.repair(save_path, lambda message: log(f"warning: {save_path}/{message}"))  # as the figures stage says it

    newest = index.latest(index.read_rows(save_path))
    for source in sources:
        extract, model = resolve_basis(source, slug(source.name), list(dict.fromkeys(p.text for p in good)), save_path,
                                       settings.extract, device=settings.device, batch_size=settings.batch_size,
                                       force=settings.force, log=log)
        extract, model = resolve_means(source, slug(source.name), list(dict.fromkeys(p.text for p in good)), save_path,
                                       extract, device=settings.device, batch_size=settings.batch_size,
                                       force=settings.force, log=log, model=model)
        chosen = dataclasses.replace(settings, extract=extract)  # this model's basis filled in (corpus/basis.py)
        pending = find_pending(source, good, save_path, chosen, newest)
        for row in pending.corrupt:
            log(f"warning: {save_path / row['path']} does not match its recorded sha256 (corrupt or changed); "
                f"marked corrupt in the index and not used")
        # The index no longer vouches for a file it knows is corrupt (--prune removes it).
        index.append_rows(save_path, [dict(row, status="corrupt", reason="does not match its recorded sha256 "
                                           "(corrupt or changed)") for row in pending.corrupt] + pending.reselect)
        summary.skipped += pending.cached
        if pending.todo:
            model_sources.check_available(source)  # before anything heavy: an unreachable hub fails fast
            written, failed = _run_model(source, pending.todo, save_path, chosen, log, model)
            summary.models_loaded.append(source.name)
            summary.written += written
            summary.failed += failed
        else:
            log(f"{source.name}: all {len(good)} prompts already cached in {save_path}")
            if not model_outputs_current(save_path, source, newest):  # a save path from before model cards or head roles
                ensure_model_outputs(model or model_sources.load_model(source, settings.device, settings.extract.dtype),
                                     save_path, log)
                summary.models_loaded.append(source.name)
        if settings.prune:
            summary.pruned += prune_caches(source, save_path, log)
    if settings.extract.ig_tolerance and "ig" in settings.extract.attribution:
        summary.ig_over_tolerance = ig_over_tolerance(save_path, sources, good)
    summary.seconds = time.perf_counter() - started
    return summary


def ig_over_tolerance(save_path: Path, sources: Sequence[ModelSource], prompts: Sequence[Prompt]) -> list[str]:
    """The prompts whose current cache has targets over the IG tolerance, as "file:line: what"."""
    current = index.current_caches(index.latest(index.read_rows(save_path, warn=lambda message: None)).values())
    found = []
    for source in sources:
        for prompt in prompts:
            row = current.get((source.name, prompt_hash(source.model_id, prompt.text)))
            message = ig_misses(row) if row else None
            if message:
                found.append(f"{prompt.source}: {source.name} {row['path']}: {message}")
    return found


def _run_model(
    source: ModelSource, todo: Todo, save_path: Path, settings: ActivationsSettings, log: Callable[[str], None],
    model: Any = None,
) -> tuple[int, int]:
    from lens_pipeline.capture import explain, model_card
    from lens_pipeline.capture import models as model_sources

    if settings.ray:
        counts = run_on_ray(source, todo, save_path, settings, log)
        if not model_outputs_current(save_path, source):  # the workers' models are gone: the card and roles are made here
            ensure_model_outputs(model or model_sources.load_model(source, "cpu", explain.model_dtype(settings.extract)),
                                 save_path, log)
        return counts
    log(f"{source.name}: {len(todo)} prompt(s) to run; loading model ...")
    model = model or model_sources.load_model(source, settings.device, explain.model_dtype(settings.extract))
    model_card.load_basis(save_path, source)  # --embedding-views projects on the saved card's basis when there is one
    counts = run_prompts(model, todo, save_path, settings.extract, batch_size=settings.batch_size,
                         progress=settings.progress, log=log)
    ensure_model_outputs(model, save_path, log)  # after the caches: they come first
    return counts


def model_outputs_current(save_path: Path, source: ModelSource, newest: dict[index.Key, dict[str, Any]] | None = None) -> bool:
    """Whether the save path holds this version's model card and head roles of `source`."""
    from lens_pipeline.capture import head_roles, model_card

    return model_card.is_current(save_path, source, newest) and head_roles.is_current(save_path, source, newest)


def ensure_model_outputs(model: Any, save_path: Path, log: Callable[[str], None]) -> None:
    """The model-level outputs (the model card, then the head roles), each written once per model and version."""
    from lens_pipeline.capture import head_roles, model_card

    record = functools.partial(index.append_rows, save_path)
    model_card.ensure(model, save_path, record, log)
    head_roles.ensure(model, save_path, record, log)


def prune_caches(source: ModelSource, save_path: Path, log: Callable[[str], None]) -> list[str]:
    """Remove the caches of `source` that are not current (made with other settings), recording
    each removal in the index; returns their paths. Only --prune calls this."""
    newest = index.latest(index.read_rows(save_path)).values()
    current = {id(row) for row in index.current_caches(newest).values()}
    removed, rows, freed = [], [], 0
    for row in newest:
        if row["kind"] != "cache" or row.get("model") != source.name or id(row) in current or row.get("status") == "removed":
            continue
        target = save_path / row["path"]
        if target.exists():
            freed += target.stat().st_size
            target.unlink()
        removed.append(row["path"])
        rows.append(dict(row, status="removed", reason="pruned: not the current cache of its prompt"))
    index.append_rows(save_path, rows)
    if removed:
        log(f"pruned {len(removed)} cache(s) of {source.name} made with other settings ({freed / 1e6:.1f} MB): "
            + ", ".join(removed[:3]) + (" ..." if len(removed) > 3 else ""))
    return removed
