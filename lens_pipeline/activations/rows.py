"""A cache's file name, bytes and index row (ok or error)."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Callable

from lens_pipeline.capture.models import ModelSource, slug
from lens_pipeline.capture.prompts import Prompt
from lens_pipeline.store import index
from lens_pipeline.store.cache import (
    CacheContents,
    ExtractSettings,
    serialize,
)


def cache_relpath(source: ModelSource, hash_: str, settings: ExtractSettings) -> str:
    return f"caches/{slug(source.name)}/{hash_}-{settings.settings_id}.zip"


def ig_misses(row: dict[str, Any]) -> str | None:
    """What a cache row says of targets whose integrated gradients stayed over the tolerance at the cap."""
    ig = (row.get("explain") or {}).get("ig") or {}
    over = ig.get("over_tolerance")
    if not over:
        return None
    worst = max(entry["error"] for entry in over)
    return (f"integrated gradients: {len(over)} target(s) over the {ig['tolerance']:.2%} tolerance at the "
            f"{ig['max_steps']}-step cap (worst completeness error {worst:.2%}; raise --ig-max-steps or try "
            f"another --ig-rule)")


def serialize_cache(
    save_path: Path, source: ModelSource, hash_: str, prompt: Prompt, meta: dict[str, Any],
    arrays: dict[str, Any], warnings: list[str], settings: ExtractSettings, map_members: Callable[..., Any] = map,
) -> tuple[Path, bytes, dict[str, Any]]:
    """(where it goes, the cache file's bytes, its index row): the CPU part of saving a cache."""
    explained = {}
    if "target_ids" in arrays:  # the targets and the IG completeness error, in the meta and the index row
        from lens_pipeline.capture import explain

        explained = {"explain": explain.summary(arrays, settings)}
        meta = dict(meta, **explained)
        missed = ig_misses(explained)
        warnings = warnings + [missed] if missed else warnings
    if "cause" in meta:  # what the patching was made for (reruns reuse it) and where its estimate can be trusted
        explained = dict(explained, causal_request=meta["cause"]["request"],
                         causal_correlation=meta["cause"].get("attribution_patching_correlation"))
    data = serialize(CacheContents(meta, arrays), map_members)
    relpath = cache_relpath(source, hash_, settings)
    row = index.make_row(
        "cache",
        model=source.name,
        model_id=source.model_id,
        prompt_hash=hash_,
        settings_id=settings.settings_id,
        text=prompt.text[:200],
        n_tokens=meta["n_tokens"],
        path=relpath,
        format="zip+npy.zst",
        bytes=len(data),
        sha256=index.sha256_bytes(data),
        params=meta["settings"],
        random_weights=meta["random_weights"],
        warnings=warnings,
        prompt_metadata=prompt.metadata,
        **explained,
    )
    return save_path / relpath, data, row


def error_row(source: ModelSource, hash_: str, prompt: Prompt, error: Exception, settings: ExtractSettings) -> dict[str, Any]:
    return index.make_row(
        "cache", model=source.name, model_id=source.model_id, prompt_hash=hash_, settings_id=settings.settings_id,
        text=prompt.text[:200], path=cache_relpath(source, hash_, settings), status="error",
        error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
    )
