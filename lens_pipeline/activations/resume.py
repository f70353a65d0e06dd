"""Which prompts still need a cache: the index and the files, checked, loading nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lens_pipeline.activations.settings import ActivationsSettings
from lens_pipeline.capture.models import ModelSource
from lens_pipeline.capture.prompts import Prompt, target_request
from lens_pipeline.store import index
from lens_pipeline.store.cache import (
    ExtractSettings,
    prompt_hash,
)
from lens_pipeline.store.integrity import ContentCheck

Todo = list[tuple[Prompt, str]]  # (prompt, prompt hash) pairs still to cache


@dataclass
class Pending:
    """What a model still needs: prompts to run, rows that re-select an existing cache as current,
    and caches found corrupt."""

    todo: Todo = field(default_factory=list)
    cached: int = 0
    reselect: list[dict[str, Any]] = field(default_factory=list)
    corrupt: list[dict[str, Any]] = field(default_factory=list)  # their recorded rows


def find_pending(
    source: ModelSource, prompts: Sequence[Prompt], save_path: Path, settings: ActivationsSettings,
    newest: dict[index.Key, dict[str, Any]],
) -> Pending:
    """Which prompts need a cache, loading nothing heavy. A prompt is done when one of its
    complete caches (sha256 checked) covers the requested settings; that one becomes current."""
    caches: dict[str, list[dict[str, Any]]] = {}
    for row in newest.values():
        if row["kind"] == "cache" and row.get("model") == source.name and row.get("status") == "ok":
            caches.setdefault(row["prompt_hash"], []).append(row)
    pending, seen, check = Pending(), set(), ContentCheck(save_path)
    for prompt in prompts:
        hash_ = prompt_hash(source.model_id, prompt.text)
        if hash_ in seen:  # the same text twice in one file is one cache
            continue
        seen.add(hash_)
        rows = caches.get(hash_, [])
        covering = [row for row in rows if settings.extract.covers(row.get("params") or {})
                    and _same_targets(settings.extract, row, prompt)]
        usable = None
        for row in reversed(covering):  # the newest first
            if check.holds(row):
                usable = row
                break
            if (save_path / row["path"]).exists():
                pending.corrupt.append(row)
        if usable is None or settings.force:
            pending.todo.append((prompt, hash_))
            continue
        pending.cached += 1
        if usable is not rows[-1]:  # another settings' cache is current: this run's request wins
            pending.reselect.append(dict(usable, selected=index.now_iso()))
    check.save()
    return pending


def _same_targets(settings: ExtractSettings, row: dict[str, Any], prompt: Prompt) -> bool:
    """A cache that explains targets is current only for the target fields it was made for."""
    if not (settings.needs_targets or settings.causal):
        return True
    return target_request(row.get("prompt_metadata") or {}) == target_request(prompt.metadata)


def reusable_causal(save_path: Path, source: ModelSource, settings: ExtractSettings,
                    prompts: Sequence[tuple[Prompt, str]]) -> dict[str, Path]:
    """prompt hash -> an earlier intact cache of that prompt made for the same causal request (pair, target,
    metric, ablation): its patching and ablation arrays are kept, so a rerun that adds sites computes only those."""
    from lens_pipeline.capture.causal import request

    wanted = {hash_: request(settings, prompt.metadata) for prompt, hash_ in prompts}
    check, found = ContentCheck(save_path), {}
    rows = index.latest(index.read_rows(save_path, warn=lambda message: None)).values()
    for row in sorted(rows, key=lambda r: str(r.get("created", ""))):  # the newest last, so it wins
        hash_ = row.get("prompt_hash")
        if (row.get("kind") == "cache" and row.get("model") == source.name and row.get("status") == "ok"
                and hash_ in wanted and row.get("causal_request") == wanted[hash_] and check.holds(row)):
            found[hash_] = save_path / row["path"]
    check.save()
    return found
