"""The activations stage: prompts -> model -> one cache file per (model, prompt) + index rows.

    python -m lens_pipeline.activations --prompts data/prompts.jsonl --save-path attn_data

Resumable: prompts with a complete cache (file present with the recorded sha256) made with
settings that cover this run's are skipped, and the model is not loaded when nothing is left.
A cache's identity is (model, prompt, settings): a run with other settings writes its caches
beside the earlier ones and never removes them, unless asked to with --prune.
Caches are compressed between forward passes on all the forward's threads, then written
atomically on a background thread while the next batch runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm

from lens_pipeline.capture.models import DEFAULT_MODEL, ModelLoadError, ModelSource, slug
from lens_pipeline.capture.prompts import Prompt, PromptFileError, read_prompts, target_request
from lens_pipeline.corpus.basis import NeuronSpecError, resolve_basis
from lens_pipeline.distributed import DistributedError
from lens_pipeline.store import index
from lens_pipeline.store.cache import (
    DEFAULT_PATTERN_ENCODING,
    PATTERN_ENCODINGS,
    PATTERN_MAX_ERROR,
    CacheContents,
    ExtractSettings,
    prompt_hash,
    remove_orphan_temp_files,
    serialize,
    write_atomic,
)
from lens_pipeline.store.integrity import ContentCheck

DEFAULT_PROMPTS = "data/prompts.jsonl"
DEFAULT_SAVE_PATH = "attn_data"
Todo = list[tuple[Prompt, str]]  # (prompt, prompt hash) pairs still to cache
Record = Callable[[list[dict[str, Any]]], Any]


class SavePathError(OSError):
    """The save path cannot be written (read-only, full, or not a folder); one line says which."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True)
class ActivationsSettings:
    """How the stage runs, as one object: built by keyword from the CLI or from Python, passed
    whole to every path (local, Ray). What changes a cache's contents lives in `extract`."""

    extract: ExtractSettings = ExtractSettings()
    batch_size: int = 8
    device: str = "auto"
    random_weights: bool = False
    ray: str | None = None
    force: bool = False
    prune: bool = False
    strict: bool = False
    progress: bool = True

    @classmethod
    def build(cls, **options: Any) -> "ActivationsSettings":
        """From flat keywords (batch_size=4, logit_lens=True, ...): each goes where it belongs."""
        extract_fields = {f.name for f in dataclasses.fields(ExtractSettings)}
        stage_fields = {f.name for f in dataclasses.fields(cls)} - {"extract"}
        unknown = set(options) - extract_fields - stage_fields
        if unknown:
            raise TypeError(f"unknown activations option(s) {sorted(unknown)}; known: {sorted(extract_fields | stage_fields)}")
        extract = {k: v for k, v in options.items() if k in extract_fields}
        if "hooks" in extract:
            extract["hooks"] = tuple(extract["hooks"])
        if isinstance(extract.get("neuron_ids"), (str, dict)):  # "3:1,5;7:2" or {3: [1, 5]}: a user's basis
            from lens_pipeline.corpus.basis import given_rows

            extract.update(given_rows(extract["neuron_ids"]))
        return cls(extract=ExtractSettings(**extract), **{k: v for k, v in options.items() if k in stage_fields})


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


def cache_relpath(source: ModelSource, hash_: str, settings: ExtractSettings) -> str:
    return f"caches/{slug(source.name)}/{hash_}-{settings.settings_id}.zip"


def check_writable(save_path: Path) -> None:
    """Fail in one line, before any model loads, when nothing can be written under `save_path`."""
    probe = save_path / "caches" / f".write-check.{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as error:
        raise SavePathError(error.errno, f"cannot write to {save_path}: {error.strerror or error}") from None
    finally:
        probe.unlink(missing_ok=True)


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
    if not settings.needs_targets:
        return True
    return target_request(row.get("prompt_metadata") or {}) == target_request(prompt.metadata)


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
    from lens_pipeline.capture import model_card
    from lens_pipeline.capture import models as model_sources

    settings = settings or ActivationsSettings.build(**options)
    log = log or _to_stderr
    if settings.extract.explains:  # a wrong method name fails now, not after the model loads
        from lens_pipeline.capture import explain

        explain.check_settings(settings.extract)
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
            if not model_card.is_current(save_path, source, newest):  # a save path from before model cards
                model_card.ensure(model or model_sources.load_model(source, settings.device, settings.extract.dtype),
                                  save_path, functools.partial(index.append_rows, save_path), log)
                summary.models_loaded.append(source.name)
        if settings.prune:
            summary.pruned += prune_caches(source, save_path, log)
    if settings.extract.ig_tolerance and "ig" in settings.extract.attribution:
        summary.ig_over_tolerance = ig_over_tolerance(save_path, sources, good)
    summary.seconds = time.perf_counter() - started
    return summary


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
        counts = _run_model_on_ray(source, todo, save_path, settings, log)
        if not model_card.is_current(save_path, source):  # the workers' models are gone: the card is made here
            model_card.ensure(model or model_sources.load_model(source, "cpu", explain.model_dtype(settings.extract)),
                              save_path, functools.partial(index.append_rows, save_path), log)
        return counts
    log(f"{source.name}: {len(todo)} prompt(s) to run; loading model ...")
    model = model or model_sources.load_model(source, settings.device, explain.model_dtype(settings.extract))
    model_card.load_basis(save_path, source)  # --embedding-views projects on the saved card's basis when there is one
    counts = run_prompts(model, todo, save_path, settings.extract, batch_size=settings.batch_size,
                         progress=settings.progress, log=log)
    model_card.ensure(model, save_path, functools.partial(index.append_rows, save_path), log)  # after the caches: they come first
    return counts


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


class CacheWriter:
    """Compresses a batch's caches (their members side by side on a thread pool, between forward
    passes: one long prompt's cache uses every thread too), writes them atomically
    on a background thread while the next batch runs, and records their index rows as they land.
    On Ctrl-C or a failed write, what was written is recorded before the error goes on."""

    def __init__(self, save_path: Path, record: Record, threads: int, batch_size: int):
        self.save_path, self.record = save_path, record
        self.compress_pool = ThreadPoolExecutor(max_workers=max(1, threads))
        self.disk = ThreadPoolExecutor(max_workers=1)
        self.in_flight: list[Future[dict[str, Any]]] = []
        self.keep = 2 * batch_size  # bound memory: at most ~two batches wait for the disk
        self.written = 0

    def submit(self, jobs: Iterable[tuple[Callable[..., Any], Any]]) -> None:
        """Each job is (compress, args): compress(args, map_members) -> (path, bytes, row)."""
        for compress, args in jobs:
            path, data, row = compress(args, self.compress_pool.map)
            self.in_flight.append(self.disk.submit(_write_file, path, data, row))
        self.drain(self.keep)

    def drain(self, keep: int = 0) -> None:
        """Record the rows of written caches, oldest first, until `keep` writes are pending: one
        index append for them all, also when a wait is interrupted or a write fails."""
        done = []
        try:
            while len(self.in_flight) > keep:
                done.append(self.in_flight[0].result())
                self.in_flight.pop(0)
        finally:
            if done:
                try:
                    self.record(done)
                except OSError:  # disk full: caches the index does not record must not stay
                    index.discard_unrecorded(self.save_path, done)
                    raise
                self.written += len(done)

    def close(self) -> None:
        for future in self.in_flight:  # after a failure: let queued writes end before the pools go
            future.cancel()
        self.compress_pool.shutdown(wait=True)
        self.disk.shutdown(wait=True)
        # Writes that landed after the failure were never recorded: their files go too.
        late = [f.result() for f in self.in_flight if not f.cancelled() and f.exception() is None]
        if late:
            index.discard_unrecorded(self.save_path, late)


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

    source, save_path, log = model.source, Path(save_path), log or _to_stderr
    record = record or (lambda rows: index.append_rows(save_path, rows))
    unknown = [h for h in settings.hooks if h not in model.bridge.hook_dict]
    if unknown:
        raise ModelLoadError(f"--hooks {unknown[0]!r} is not a hook of {source.name} (e.g. blocks.0.hook_resid_mid)")
    if settings.explains:
        from lens_pipeline.capture import explain

        explain.check_model(model, settings)
    limit = extract.context_limit(model, settings)
    token_strings = extract.TokenStrings(model.tokenizer)
    memory = extract.MemoryLimit()  # shrinks after an out-of-memory, for the rest of the run
    items = [(prompt, hash_, extract.tokenize(model, prompt.text, limit)) for prompt, hash_ in todo]
    rejected = _attach_targets(model, settings, items)  # a target that is not one token: that prompt fails
    for prompt, hash_, error in rejected:
        log(f"error: {error}")
    if rejected:
        record([_error_row(source, hash_, prompt, error, settings) for prompt, hash_, error in rejected])
    items.sort(key=lambda item: len(item[2].ids))  # similar lengths together: less padding
    base_meta = _model_meta(model, settings)

    def compress(job: tuple[tuple[Prompt, str, Any], Any], map_members: Callable[..., Any]) -> tuple[Path, bytes, dict[str, Any]]:
        (prompt, hash_, tokens), result = job
        meta = dict(base_meta, prompt_hash=hash_, text=prompt.text, n_tokens=len(tokens.ids),
                    prompt_source=prompt.source, prompt_metadata=prompt.metadata)
        warnings = []
        if tokens.truncated_from:
            warnings.append(f"truncated from {tokens.truncated_from} to {len(tokens.ids)} tokens")
            meta["truncated_from"] = tokens.truncated_from
        return _serialize_cache(save_path, source, hash_, prompt, meta, result.arrays, warnings, settings, map_members)

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
            except Exception as error:  # a batch that breaks is recorded per prompt and retried next run
                failed += len(batch)
                record([_error_row(source, h, p, error, settings) for p, h, _ in batch])
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


def _attach_targets(model: Any, settings: ExtractSettings, items: list[Any]) -> list[tuple[Prompt, str, Exception]]:
    """Give each (prompt, hash, tokens) item its targets, in place; items whose target cannot be
    explained are removed and returned with the error."""
    if not settings.needs_targets:
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
    from lens_pipeline.capture import models

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
        "n_params": sum(p.numel() for p in model.bridge.original_model.parameters()),
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


def _run_model_on_ray(
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


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)  # in a Ray worker: Ray forwards it to the driver's terminal


def _serialize_cache(
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


def _write_file(path: Path, data: bytes, row: dict[str, Any]) -> dict[str, Any]:
    write_atomic(path, data)
    return row


def _error_row(source: ModelSource, hash_: str, prompt: Prompt, error: Exception, settings: ExtractSettings) -> dict[str, Any]:
    return index.make_row(
        "cache", model=source.name, model_id=source.model_id, prompt_hash=hash_, settings_id=settings.settings_id,
        text=prompt.text[:200], path=cache_relpath(source, hash_, settings), status="error",
        error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lens_pipeline.activations",
        description="Run prompts through TransformerLens models and write one compressed cache per "
        "(model, prompt) plus a row in SAVE_PATH/index.jsonl. Reruns skip what is already cached.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model(s), comma-separated: 'smollm2' (default, embedded SmolLM2-135M-Instruct), "
                        "'minilm' (embedded all-MiniLM-L6-v2), a local Hugging Face model folder, or a hub id "
                        "such as gpt2 (needs the hub or a filled HF cache)")
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS,
                        help='JSONL with a "text" field per line (other fields are kept as metadata), or a '
                        "text file with one prompt per line (default: %(default)s)")
    parser.add_argument("--save-path", default=DEFAULT_SAVE_PATH, help="output folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="model weights and activations; auto = float16 on cuda, float32 on cpu")
    parser.add_argument("--pattern-encoding", default=DEFAULT_PATTERN_ENCODING, choices=list(PATTERN_ENCODINGS),
                        help="how attention weights are stored, with the worst absolute error per weight: q12 "
                        "(default, 12-bit fixed point, 1.2e-4), q16 (7.7e-6), q8 (2.0e-3), float16 (2.4e-4), float32 (exact)")
    parser.add_argument("--top-k", type=int, default=10, help="next-token predictions kept per position (default: %(default)s)")
    parser.add_argument("--neurons", default="32",
                        help="MLP neurons kept per layer (default: %(default)s; 0 = none): a count, chosen as "
                        "--neuron-basis says, or exactly these neurons for every prompt: 'L:i,j;L:k,...'")
    parser.add_argument("--neurons-file", default=None, metavar="FILE",
                        help="exactly these neurons for every prompt: 'L:i,j,...' per line or ';'-separated")
    parser.add_argument("--neuron-basis", default="prompt", choices=["prompt", "variance", "max"],
                        help="prompt (default): per prompt, the N with the largest variance over it; variance or max: "
                        "one basis for every prompt of the model, the top N per layer over the whole prompt set, "
                        "from a first pass, recorded in caches/<model>/neuron_basis.json and kept by later runs")
    parser.add_argument("--hooks", default="", help="extra TransformerLens hook names to store, comma-separated "
                        "(e.g. blocks.3.hook_resid_mid); stored as float16 with padding removed")
    parser.add_argument("--logit-lens", action="store_true",
                        help="also store each layer's top-1 token through the unembedding (costs about one extra "
                        "forward pass per layer on large vocabularies)")
    parser.add_argument("--attribution", default="", metavar="METHODS",
                        help="input attribution to each prompt's target, comma-separated: grad_x_input, grad_norm, "
                        "ig (integrated gradients), or all; stored per target and source token (README: Explaining a "
                        "prediction)")
    parser.add_argument("--ig-steps", type=int, default=None, metavar="N",
                        help=f"integrated-gradients steps: where --ig-tolerance starts (default {IG_START_STEPS}); "
                        "given alone, N fixed steps (no doubling)")
    parser.add_argument("--ig-tolerance", type=float, default=None, metavar="E",
                        help=f"double the integrated-gradients steps per prompt and target until the completeness "
                        f"error is at most E (default {IG_DEFAULT_TOLERANCE} = 1 %%; 0 = fixed steps); steps used are "
                        "stored per target, targets still over E at the cap are named in the index row and summary")
    parser.add_argument("--ig-max-steps", type=int, default=ExtractSettings.ig_max_steps, metavar="N",
                        help="the cap of --ig-tolerance's doubling (default: %(default)s)")
    parser.add_argument("--ig-baseline", default="space",
                        help="where the integrated-gradients path starts: space (default: the ' ' token's embedding "
                        "at every position), zero, or pad; a leading BOS keeps its own embedding")
    parser.add_argument("--ig-rule", default="gausslegendre",
                        help="integration rule, as Captum names it: gausslegendre (default), riemann_trapezoid, "
                        "riemann_left, riemann_right, riemann_middle")
    parser.add_argument("--logit-attribution", action="store_true",
                        help="split each target's logit over the embeddings, every head and every MLP (direct logit "
                        "attribution, final norm's scale frozen)")
    parser.add_argument("--lens-trajectory", action="store_true",
                        help="extends --logit-lens (implies it): per layer and position the top-5 tokens, the actual "
                        "next token's probability and rank, entropy, KL to the final distribution; and per-token loss")
    parser.add_argument("--lens-resid-mid", action="store_true",
                        help="the lens trajectory after each attention block too (implies --lens-trajectory)")
    parser.add_argument("--embedding-views", action="store_true",
                        help="also store each layer's residual stream projected on the model card's shared basis and "
                        "each token's nearest neighbours in the input embeddings (for the embedding figures)")
    parser.add_argument("--max-tokens", type=int, default=1024,
                        help="truncate prompts to this many tokens (and the model context); recorded as a warning")
    parser.add_argument("--random-weights", action="store_true",
                        help="build --model's architecture with seeded random weights, downloading nothing: a shape "
                        "(gpt2, gpt2-medium, llama-1b, tiny-gpt2, tiny-llama, tiny-bert), a transformers model type "
                        "(its config defaults) or a config JSON; the model is named NAME-random")
    parser.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                        help="split the prompts into shards run by Ray workers (one per GPU, else per CPU), each "
                        "loading the model once; auto = the running cluster, else a new local one (pip install ray)")
    parser.add_argument("--force", action="store_true", help="recompute caches even if the index has them")
    parser.add_argument("--prune", action="store_true",
                        help="remove this model's caches made with other settings (each run with new settings "
                        "otherwise writes its caches beside the old ones); prints what it removed")
    parser.add_argument("--strict", action="store_true", help="stop on the first bad prompt line instead of skipping it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def stop_gracefully_on_signals() -> None:
    """Ctrl-C and `kill` (SIGTERM) both stop the run the same clean way (KeyboardInterrupt), also
    when SIGINT was inherited as ignored, as it is for jobs a shell starts in the background."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def settings_from_args(args: argparse.Namespace) -> ActivationsSettings:
    """The parsed command line as the stage's one settings object."""
    return ActivationsSettings(
        extract=ExtractSettings(
            pattern_encoding=args.pattern_encoding, top_k=args.top_k, **neuron_options(args),
            hooks=tuple(h.strip() for h in args.hooks.split(",") if h.strip()),
            logit_lens=args.logit_lens or args.lens_trajectory or args.lens_resid_mid,
            max_tokens=args.max_tokens, dtype=args.dtype,
            attribution="grad_x_input,grad_norm,ig" if args.attribution.strip() == "all" else args.attribution,
            **ig_options(args.ig_steps, args.ig_tolerance), ig_max_steps=args.ig_max_steps,
            ig_baseline=args.ig_baseline, ig_rule=args.ig_rule,
            logit_attribution=args.logit_attribution, lens_trajectory=args.lens_trajectory or args.lens_resid_mid,
            lens_resid_mid=args.lens_resid_mid, embedding_views=args.embedding_views,
        ),
        batch_size=args.batch_size, device=args.device, random_weights=args.random_weights, ray=args.ray,
        force=args.force, prune=args.prune, strict=args.strict, progress=not args.quiet,
    )


IG_START_STEPS = ExtractSettings.ig_steps
IG_DEFAULT_TOLERANCE = 0.01


def ig_options(steps: int | None, tolerance: float | None) -> dict[str, Any]:
    """--ig-steps and --ig-tolerance as ExtractSettings fields: steps given alone stay fixed (as
    before the tolerance existed); otherwise the steps double up to the tolerance (default 1 %)."""
    if tolerance is None:
        tolerance = 0.0 if steps is not None else IG_DEFAULT_TOLERANCE
    return {"ig_steps": IG_START_STEPS if steps is None else steps, "ig_tolerance": tolerance}


def neuron_options(args: argparse.Namespace) -> dict[str, Any]:
    """--neurons N, --neurons 'L:i,j;...', --neurons-file and --neuron-basis as ExtractSettings fields."""
    from lens_pipeline.corpus.basis import NeuronSpecError, given_rows

    if args.neurons_file:
        try:
            return given_rows(Path(args.neurons_file).read_text(), where=args.neurons_file)
        except OSError as error:
            raise NeuronSpecError(f"--neurons-file: cannot read {args.neurons_file} ({error.strerror or error})") from None
    if ":" in args.neurons:
        return given_rows(args.neurons)
    try:
        return {"n_neurons": int(args.neurons), "neuron_basis": args.neuron_basis if int(args.neurons) > 0 else "prompt"}
    except ValueError:
        raise NeuronSpecError(f"--neurons: {args.neurons!r} is neither a count nor 'L:i,j;...'") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_gracefully_on_signals()
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        summary = run_activations(args.model, args.prompts, args.save_path, settings_from_args(args))
    except (ModelLoadError, PromptFileError, DistributedError, SavePathError, index.IndexWriteError,
            NeuronSpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, OSError) else 2
    except KeyboardInterrupt:
        return 130
    print(
        f"done: {summary.written} cache(s) written, {summary.skipped} already cached, {summary.failed} failed, "
        f"{summary.bad_lines} bad prompt line(s) skipped"
        + (f", {len(summary.pruned)} pruned" if summary.pruned else "")
        + f"; {summary.seconds:.1f} s; index: {index.index_path(args.save_path)}",
        file=sys.stderr,
    )
    for line in summary.ig_over_tolerance:
        print(f"warning: {line}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
