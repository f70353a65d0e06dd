"""Prompts through a loaded model, batch by batch, into caches and index rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from lens_pipeline.activations.resume import Todo
from lens_pipeline.activations.rows import error_row, serialize_cache
from lens_pipeline.activations.writer import CacheWriter, Record, SavePathError
from lens_pipeline.capture.models import ModelLoadError, slug
from lens_pipeline.capture.prompts import Prompt
from lens_pipeline.store import index
from lens_pipeline.store.cache import (
    PATTERN_MAX_ERROR,
    ExtractSettings,
)


def run_prompts(
    model: Any,
    todo: Todo,
    save_path: str | Path,
    settings: ExtractSettings,
    *,
    batch_size: int = 8,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    record: Record | None = None,
) -> tuple[int, int]:
    """Run (prompt, hash) pairs through a loaded model: write their caches and pass their index
    rows to `record` (default: append them to the index). Returns (written, failed)."""
    import torch

    from lens_pipeline.capture import extract

    source, save_path, log = model.source, Path(save_path), log or to_stderr
    record = record or (lambda rows: index.append_rows(save_path, rows))
    unknown = [h for h in settings.hooks if h not in model.bridge.hook_dict]
    if unknown:
        raise ModelLoadError(f"--hooks {unknown[0]!r} is not a hook of {source.name} (e.g. blocks.0.hook_resid_mid)")
    if settings.explains:
        from lens_pipeline.capture import explain

        explain.check_model(model, settings)
    if settings.causal:
        from lens_pipeline.capture import causal

        causal.check_model(model, settings)
    limit = extract.context_limit(model, settings)
    token_strings = extract.TokenStrings(model.tokenizer)
    memory = extract.MemoryLimit()  # shrinks after an out-of-memory, for the rest of the run
    items = [(prompt, hash_, extract.tokenize(model, prompt.text, limit)) for prompt, hash_ in todo]
    rejected = _attach_targets(model, settings, items)  # a target that is not one token: that prompt fails
    causal_run = CausalRun.start(model, settings, items, save_path, limit, rejected)  # a corrupt prompt of another length too
    for prompt, hash_, error in rejected:
        log(f"error: {error}")
    if rejected:
        record([error_row(source, hash_, prompt, error, settings) for prompt, hash_, error in rejected])
    items.sort(key=lambda item: len(item[2].ids))  # similar lengths together: less padding
    base_meta = _model_meta(model, settings)

    def compress(job: tuple[tuple[Prompt, str, Any], Any], map_members: Callable[..., Any]) -> tuple[Path, bytes, dict[str, Any]]:
        (prompt, hash_, tokens), result = job
        meta = dict(base_meta, prompt_hash=hash_, text=prompt.text, n_tokens=len(tokens.ids),
                    prompt_source=prompt.source, prompt_metadata=prompt.metadata, **causal_run.meta.pop(hash_, {}))
        warnings = []
        if tokens.truncated_from:
            warnings.append(f"truncated from {tokens.truncated_from} to {len(tokens.ids)} tokens")
            meta["truncated_from"] = tokens.truncated_from
        return serialize_cache(save_path, source, hash_, prompt, meta, result.arrays, warnings, settings, map_members)

    failed = len(rejected)
    # Compression runs between forward passes on as many threads as the forward uses (zstd frees
    # the GIL): overlapping it with the forward made torch's threads wait on each other.
    writer = CacheWriter(save_path, record, torch.get_num_threads(), batch_size)
    bar = tqdm(total=len(items), desc=source.name, unit="prompt", disable=not progress)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            try:
                results = extract.run_batch_with_oom_split(model, [t for _, _, t in batch], settings, token_strings, log, memory)
                causal_run.add(batch, results)  # patching and ablation, when asked for
            except Exception as error:  # a batch that breaks is recorded per prompt and retried next run
                failed += len(batch)
                record([error_row(source, h, p, error, settings) for p, h, _ in batch])
                log(f"error: {source.name} batch of {len(batch)} failed: {error}")
                bar.update(len(batch))
                continue
            writer.submit((compress, job) for job in zip(batch, results))
            del results  # the batch's encoded patterns, compressed now: not held through the next forward
            bar.update(len(batch))
        writer.drain(0)
    except KeyboardInterrupt:
        writer.drain(0)  # keep what is finished: wait for queued writes, record them, then stop
        bar.close()
        log(f"interrupted: {writer.written} cache(s) of {source.name} saved; rerun the same command to resume")
        raise
    except OSError as error:  # disk full or gone: what was written is recorded; the rest reruns
        bar.close()
        raise SavePathError(error.errno, f"cannot write caches to {save_path}: {error.strerror or error} "
                            f"({writer.written} cache(s) of {source.name} saved; free space and rerun to resume)") from None
    finally:
        writer.close()
        bar.close()
    return writer.written, failed


class CausalRun:
    """The patching and ablation of a run's prompts (lens_pipeline/capture/causal): each prompt's
    corruption checked before any forward, arrays added to its batch's results, meta kept for its cache."""

    def __init__(self, model: Any, settings: ExtractSettings, corruptions: dict[str, Any], stored: dict[str, Path],
                 means: dict[str, Any] | None):
        self.model, self.settings, self.corruptions, self.stored, self.means = model, settings, corruptions, stored, means
        self.meta: dict[str, dict[str, Any]] = {}  # prompt hash -> its cache's meta entries

    @classmethod
    def start(cls, model: Any, settings: ExtractSettings, items: list[Any], save_path: Path, limit: int,
              rejected: list[tuple[Prompt, str, Exception]]) -> "CausalRun":
        """Corruptions of every item (items that cannot be corrupted move to `rejected`), earlier caches to reuse, the means."""
        if not settings.causal:
            return cls(model, settings, {}, {}, None)
        from lens_pipeline.activations.resume import reusable_causal
        from lens_pipeline.capture import causal
        from lens_pipeline.corpus.ablation_means import read_means

        corruptions, kept = {}, []
        for prompt, hash_, tokens in items:
            try:
                corruptions[hash_] = causal.corruption_of(model, prompt, tokens.ids, limit)
                kept.append((prompt, hash_, tokens))
            except causal.CorruptionError as error:
                rejected.append((prompt, hash_, error))
        items[:] = kept
        stored = reusable_causal(save_path, model.source, settings, [(p, h) for p, h, _ in kept])
        means = read_means(save_path, slug(model.source.name)) if settings.ablate and settings.ablation == "mean" else None
        return cls(model, settings, corruptions, stored, means)

    def add(self, batch: list[Any], results: list[Any]) -> None:
        """Each prompt's causal arrays into its result, and its meta into self.meta."""
        if not self.settings.causal:
            return
        from lens_pipeline.capture import causal
        from lens_pipeline.capture.explain.targets import Targets
        from lens_pipeline.store.cache import load

        names = (causal.PATCH_PREFIX, causal.ESTIMATE_PREFIX, causal.ABLATE_PREFIX)
        for (prompt, hash_, tokens), result in zip(batch, results):
            stored = {}
            if hash_ in self.stored:
                earlier = load(self.stored[hash_])
                stored = {name: earlier.array(name) for name in earlier.names() if name.startswith(names)}
            arrays, meta = causal.causal_arrays(
                self.model, tokens.ids, tokens.targets or Targets(), self.corruptions.get(hash_), self.settings,
                lambda i: self.model.tokenizer.decode([i]), self.means, stored)
            result.arrays.update(arrays)
            meta["request"] = causal.request(self.settings, prompt.metadata)
            self.meta[hash_] = {"cause": meta}  # not "causal": that key says whether the model is a causal LM


def _attach_targets(model: Any, settings: ExtractSettings, items: list[Any]) -> list[tuple[Prompt, str, Exception]]:
    """Give each (prompt, hash, tokens) item its targets, in place; items whose target cannot be
    explained are removed and returned with the error."""
    if not (settings.needs_targets or settings.causal):
        return []
    from lens_pipeline.capture import explain

    rejected, kept = [], []
    for prompt, hash_, tokens in items:
        try:
            tokens.targets = explain.resolve_targets(model, prompt)
            kept.append((prompt, hash_, tokens))
        except explain.TargetError as error:
            rejected.append((prompt, hash_, error))
    items[:] = kept
    return rejected


def _model_meta(model: Any, settings: ExtractSettings) -> dict[str, Any]:
    """What every cache of this model and these settings says about where it came from."""
    from lens_pipeline.capture import model_card, models

    meta = {
        "model": model.source.name,
        "model_id": model.source.model_id,
        "random_weights": model.source.random_weights,
        "family": model.family,
        "causal": model.causal,
        "lm_head": model.causal,  # encoders here have no trained LM head (their checkpoints lack it)
        "n_layers": model.bridge.cfg.n_layers,
        "n_heads": model.bridge.cfg.n_heads,
        "d_model": model.bridge.cfg.d_model,
        "n_params": model_card.n_params(model),  # each tensor once, as the model card counts them
        "device": model.device,
        "dtype": model.dtype,
        "pattern_encoding": settings.pattern_encoding,
        "pattern_max_error": PATTERN_MAX_ERROR[settings.pattern_encoding],
        "settings": settings.as_dict(),
        "settings_id": settings.settings_id,
    }
    if model.family in models.ENCODER_TYPES:
        meta["note"] = "encoder without a trained LM head here: top-k predictions are not meaningful"
    return meta


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr)  # in a Ray worker: Ray forwards it to the driver's terminal
