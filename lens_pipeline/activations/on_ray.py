"""`run_prompts` sharded over Ray workers; this process stays the index's only writer."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from lens_pipeline.activations.prompts_run import run_prompts
from lens_pipeline.activations.resume import Todo
from lens_pipeline.activations.settings import ActivationsSettings
from lens_pipeline.capture.models import ModelSource
from lens_pipeline.store import index


def run_on_ray(
    source: ModelSource, todo: Todo, save_path: Path, settings: ActivationsSettings, log: Callable[[str], None],
) -> tuple[int, int]:
    """`run_prompts` on Ray workers (one per GPU, else per CPU slot), each loading the model once.
    Workers write cache files; only this process appends index rows, each shard's exactly once
    even when a killed worker's shard is retried."""
    from lens_pipeline import distributed
    from lens_pipeline.capture import explain
    from lens_pipeline.capture import models as model_sources

    # Shards of similar lengths (characters ~ tokens), so each worker's batches pad little.
    shards = distributed.chunks(sorted(todo, key=lambda item: len(item[0].text)), 4 * settings.batch_size)
    # Ray gives each GPU worker one device, which it sees as "cuda".
    device = "cuda" if settings.device.startswith("cuda") else settings.device
    setup = functools.partial(model_sources.load_model, source, device, explain.model_dtype(settings.extract))
    work = functools.partial(_run_shard, save_path=save_path, settings=settings)
    log(f"{source.name}: {len(todo)} prompt(s) to run in {len(shards)} shard(s) on Ray ...")
    written = failed = 0
    with tqdm(total=len(todo), desc=source.name, unit="prompt", disable=not settings.progress) as bar:
        for rows in distributed.run_shards(setup, work, shards, address=settings.ray, use_gpus=settings.device != "cpu"):
            index.append_rows(save_path, rows)
            ok = sum(row["status"] == "ok" for row in rows)
            written, failed = written + ok, failed + len(rows) - ok
            bar.update(len(rows))
    return written, failed


def _run_shard(model: Any, shard: Todo, *, save_path: Path, settings: ActivationsSettings) -> list[dict[str, Any]]:
    """In a Ray worker: one shard's caches written, its index rows returned to the driver."""
    rows: list[dict[str, Any]] = []
    run_prompts(model, list(shard), save_path, settings.extract, batch_size=settings.batch_size, record=rows.extend)
    return rows
