"""What scripts.bench.stage and its length sweep time: the bridge's bare forward and the
activations stage's per-model loop, on the batches the stage makes of the same prompts."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lens_pipeline import activations
from lens_pipeline.capture import extract, models
from lens_pipeline.store import index
from lens_pipeline.store.cache import ExtractSettings

TARGETS = {"throughput_ratio": 0.85, "bytes_ratio": 1 / 8, "rerun_s": 3.0}


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def resolve(args: argparse.Namespace) -> Any:
    """The ModelSource of --model (and --random-weights), touching no weights."""
    return models.resolve_source(args.model, args.random_weights)


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """(source, loaded model) of --model on --device in --dtype."""
    source = resolve(args)
    return source, models.load_model(source, args.device, args.dtype)


def stage_batches(model: Any, texts: list[str], settings: ExtractSettings,
                  batch_size: int) -> tuple[list[extract.Tokenized], list[list[extract.Tokenized]]]:
    """The batches the stage makes: tokenized the same way, stably sorted by length; (tokens, batches)."""
    limit = extract.context_limit(model, settings)
    tokens = sorted((extract.tokenize(model, text, limit) for text in texts), key=lambda t: len(t.ids))
    return tokens, chunks(tokens, batch_size)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def bare_forward(model: Any, batches: list[list[extract.Tokenized]]) -> tuple[float, float]:
    """(wall, CPU) seconds for the bridge's plain forward over the batches: no hooks, nothing kept."""
    _sync(model.device)
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        input_ids, attention_mask = extract.pad_batch(model, batch)
        model.bridge(input_ids, attention_mask=attention_mask)
    _sync(model.device)
    return time.perf_counter() - wall, time.process_time() - cpu


def stage_run(model: Any, todo: list, save_path: Path, settings: ExtractSettings, batch_size: int) -> tuple[float, float]:
    """(wall, CPU) seconds for the stage's per-model loop, writing caches and index rows to `save_path`."""
    shutil.rmtree(save_path, ignore_errors=True)
    _sync(model.device)
    wall, cpu = time.perf_counter(), time.process_time()
    written, failed = activations.run_prompts(model, todo, save_path, settings, batch_size=batch_size, log=lambda m: None)
    _sync(model.device)
    if failed or written != len(todo):
        raise SystemExit(f"bench: the stage failed on {failed} prompt(s); see {index.index_path(save_path)}")
    return time.perf_counter() - wall, time.process_time() - cpu


def cache_rows(save_path: Path) -> list[dict[str, Any]]:
    """The index rows of the caches written."""
    return [r for r in index.read_rows(save_path) if r["kind"] == "cache" and r["status"] == "ok"]
