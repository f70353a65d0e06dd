"""The activations stage: prompts -> model -> one cache file per (model, prompt) + index rows.

    python -m lens_pipeline.activations --prompts data/prompts.jsonl --save-path attn_data

Resumable: prompts whose cache the index records as complete (same settings, file present with
the recorded size) are skipped, and the model is not even loaded when nothing is left to do.
Caches are compressed between forward passes on all the forward's threads, then written
atomically on a background thread while the next batch runs.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from lens_pipeline import index
from lens_pipeline.cache import (
    DEFAULT_PATTERN_ENCODING,
    PATTERN_ENCODINGS,
    PATTERN_MAX_ERROR,
    CacheContents,
    ExtractSettings,
    prompt_hash,
    serialize,
    write_atomic,
)
from lens_pipeline.distributed import DistributedError
from lens_pipeline.models import DEFAULT_MODEL, ModelLoadError, ModelSource, resolve, slug
from lens_pipeline.prompts import Prompt, PromptFileError, read_prompts
from lens_pipeline.random_models import resolve as resolve_random

DEFAULT_PROMPTS = "data/prompts.jsonl"
DEFAULT_SAVE_PATH = "attn_data"


@dataclass
class StageSummary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    bad_lines: int = 0
    models_loaded: list[str] = field(default_factory=list)
    seconds: float = 0.0


def cache_relpath(source: ModelSource, hash_: str) -> str:
    return f"caches/{slug(source.name)}/{hash_}.zip"


def _pending(
    source: ModelSource, prompts: Sequence[Prompt], save_path: Path, settings: dict[str, Any], force: bool
) -> tuple[list[tuple[Prompt, str]], int]:
    """(prompt, hash) pairs that still need a cache, and how many are already cached, without
    loading anything heavy."""
    done = index.latest(r for r in index.read_rows(save_path) if r["kind"] == "cache")
    todo, seen, cached = [], set(), 0
    for prompt in prompts:
        hash_ = prompt_hash(source.model_id, prompt.text)
        if hash_ in seen:  # the same text twice in one file is one cache
            continue
        seen.add(hash_)
        row = done.get(("cache", source.name, hash_, "", None, None))
        if not force and index.is_complete(row, save_path) and row.get("params") == settings:
            cached += 1
            continue
        todo.append((prompt, hash_))
    return todo, cached


def run_activations(
    models: Sequence[str] | str | None = None,
    prompts: str | Path = DEFAULT_PROMPTS,
    save_path: str | Path = DEFAULT_SAVE_PATH,
    *,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    pattern_encoding: str = DEFAULT_PATTERN_ENCODING,
    top_k: int = 10,
    n_neurons: int = 32,
    hooks: Sequence[str] = (),
    logit_lens: bool = False,
    max_tokens: int = 1024,
    random_weights: bool = False,
    ray: str | None = None,
    force: bool = False,
    strict: bool = False,
    progress: bool = True,
    log: Any = None,
) -> StageSummary:
    """Run the stage from Python; returns counts. Raises ModelLoadError / PromptFileError."""
    log = log or (lambda message: print(message, file=sys.stderr))
    started = time.perf_counter()
    save_path = Path(save_path)
    if isinstance(models, str) or models is None:
        models = [m.strip() for m in (models or DEFAULT_MODEL).split(",") if m.strip()]
    settings = ExtractSettings(pattern_encoding, top_k, n_neurons, tuple(hooks), logit_lens, max_tokens)
    good, bad = read_prompts(prompts)
    summary = StageSummary(bad_lines=len(bad))
    for problem in bad:
        log(f"warning: skipped {problem}")
    if bad and strict:
        raise PromptFileError(f"{len(bad)} bad prompt line(s), first: {bad[0]} (--strict stops here)")

    for name in models:
        source = resolve_random(name) if random_weights else resolve(name)
        todo, cached = _pending(source, good, save_path, settings.as_dict(), force)
        summary.skipped += cached
        if not todo:
            log(f"{source.name}: all {len(good)} prompts already cached in {save_path}")
            continue
        if ray:
            written, failed = _run_model_on_ray(source, todo, save_path, settings, batch_size, device, dtype, progress, log, ray)
        else:
            log(f"{source.name}: {len(todo)} prompt(s) to run; loading model ...")
            model = load_model(source, device, dtype)
            written, failed = run_prompts(model, todo, save_path, settings, batch_size, progress, log)
        summary.models_loaded.append(source.name)
        summary.written += written
        summary.failed += failed
    summary.seconds = time.perf_counter() - started
    return summary


def load_model(source: ModelSource, device: str = "auto", dtype: str = "auto") -> Any:
    """The stage's model: random-weight sources are built, the others loaded (or reused)."""
    from lens_pipeline import models, random_models

    if source.kind == "random":
        return random_models.load(source, device=device, dtype=dtype)
    return models.load_reusing(source, device=device, dtype=dtype)


def run_prompts(
    model: Any,
    todo: list[tuple[Prompt, str]],
    save_path: str | Path,
    settings: ExtractSettings,
    batch_size: int,
    progress: bool,
    log: Any,
    record: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[int, int]:
    """Run (prompt, hash) pairs through a loaded model: write their caches and pass their index
    rows to `record` (default: append them to the index). Returns (written, failed)."""
    import torch

    from lens_pipeline import extract, models

    source, save_path = model.source, Path(save_path)
    record = record or (lambda rows: index.append_rows(save_path, rows))
    unknown = [h for h in settings.hooks if h not in model.bridge.hook_dict]
    if unknown:
        raise ModelLoadError(f"--hooks {unknown[0]!r} is not a hook of {source.name} (e.g. blocks.0.hook_resid_mid)")
    limit = extract.context_limit(model, settings)
    token_strings = extract.TokenStrings(model.tokenizer)
    memory = extract.MemoryLimit()  # shrinks after an out-of-memory, for the rest of the run
    items = [(prompt, hash_, extract.tokenize(model, prompt.text, limit)) for prompt, hash_ in todo]
    items.sort(key=lambda item: len(item[2].ids))  # similar lengths together: less padding
    base_meta = {
        "model": source.name,
        "model_id": source.model_id,
        "random_weights": source.kind == "random",
        "family": model.family,
        "causal": model.causal,
        "n_layers": model.bridge.cfg.n_layers,
        "n_heads": model.bridge.cfg.n_heads,
        "d_model": model.bridge.cfg.d_model,
        "n_params": sum(p.numel() for p in model.bridge.original_model.parameters()),
        "device": model.device,
        "dtype": model.dtype,
        "pattern_encoding": settings.pattern_encoding,
        "pattern_max_error": PATTERN_MAX_ERROR[settings.pattern_encoding],
        "settings": settings.as_dict(),
    }
    if model.family in models.ENCODER_TYPES:
        base_meta["note"] = "encoder without a trained LM head here: top-k predictions are not meaningful"

    written = failed = 0
    # Compression runs between forward passes on as many threads as the forward uses (zstd frees
    # the GIL): overlapping it with the forward instead made torch's threads wait on each other
    # and cost more than it hid. Only the disk writes overlap the next batch.
    compress_pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()))
    writer = ThreadPoolExecutor(max_workers=1)
    in_flight: list[Future[dict[str, Any]]] = []

    def drain(keep: int) -> None:
        """Record the rows of written caches, oldest first, until `keep` writes are pending:
        one index append for them all, also when a wait is interrupted."""
        nonlocal written
        done = []
        try:
            while len(in_flight) > keep:
                done.append(in_flight[0].result())
                in_flight.pop(0)
        finally:
            if done:
                record(done)
                written += len(done)

    def compress(job: tuple[tuple[Prompt, str, Any], Any]) -> tuple[Path, bytes, dict[str, Any]]:
        (prompt, hash_, tokens), result = job
        meta = dict(base_meta, prompt_hash=hash_, text=prompt.text, n_tokens=len(tokens.ids),
                    prompt_source=prompt.source, prompt_metadata=prompt.metadata)
        warnings = []
        if tokens.truncated_from:
            warnings.append(f"truncated from {tokens.truncated_from} to {len(tokens.ids)} tokens")
            meta["truncated_from"] = tokens.truncated_from
        return _serialize_cache(save_path, source, hash_, prompt, meta, result.arrays, warnings)

    bar = tqdm(total=len(items), desc=source.name, unit="prompt", disable=not progress)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            try:
                results = extract.run_batch_with_oom_split(model, [t for _, _, t in batch], settings, token_strings, log, memory)
            except Exception as error:  # a batch that breaks is recorded per prompt and retried next run
                failed += len(batch)
                record([_error_row(source, h, p, error) for p, h, _ in batch])
                log(f"error: {source.name} batch of {len(batch)} failed: {error}")
                bar.update(len(batch))
                continue
            for path, data, row in compress_pool.map(compress, zip(batch, results)):
                in_flight.append(writer.submit(_write_file, path, data, row))
            drain(keep=2 * batch_size)  # bound memory: at most ~two batches wait for the disk
            bar.update(len(batch))
        drain(keep=0)
    except KeyboardInterrupt:
        # Keep what is finished: wait for queued writes, record them, then stop.
        drain(keep=0)
        bar.close()
        log(f"interrupted: {written} cache(s) of {source.name} saved; rerun the same command to resume")
        raise
    finally:
        compress_pool.shutdown(wait=True)
        writer.shutdown(wait=True)
        bar.close()
    return written, failed


def _run_model_on_ray(
    source: ModelSource,
    todo: list[tuple[Prompt, str]],
    save_path: Path,
    settings: ExtractSettings,
    batch_size: int,
    device: str,
    dtype: str,
    progress: bool,
    log: Any,
    address: str,
) -> tuple[int, int]:
    """`run_prompts` on Ray workers (one per GPU, else per CPU slot), each loading the model once.
    Workers write cache files; only this process appends index rows, each shard's exactly once
    even when a killed worker's shard is retried."""
    from lens_pipeline import distributed

    # Shards of similar lengths (characters ~ tokens), so each worker's batches pad little.
    shards = distributed.chunks(sorted(todo, key=lambda item: len(item[0].text)), 4 * batch_size)
    # Ray gives each GPU worker one device, which it sees as "cuda".
    setup = functools.partial(load_model, source, "cuda" if device.startswith("cuda") else device, dtype)
    work = functools.partial(_run_shard, save_path=save_path, settings=settings, batch_size=batch_size)
    log(f"{source.name}: {len(todo)} prompt(s) to run in {len(shards)} shard(s) on Ray ...")
    written = failed = 0
    with tqdm(total=len(todo), desc=source.name, unit="prompt", disable=not progress) as bar:
        for rows in distributed.run_shards(setup, work, shards, address=address, use_gpus=device != "cpu"):
            index.append_rows(save_path, rows)
            ok = sum(row["status"] == "ok" for row in rows)
            written, failed = written + ok, failed + len(rows) - ok
            bar.update(len(rows))
    return written, failed


def _run_shard(
    model: Any, shard: list[tuple[Prompt, str]], *, save_path: Path, settings: ExtractSettings, batch_size: int
) -> list[dict[str, Any]]:
    """In a Ray worker: one shard's caches written, its index rows returned to the driver."""
    rows: list[dict[str, Any]] = []
    run_prompts(model, list(shard), save_path, settings, batch_size, False, _to_stderr, record=rows.extend)
    return rows


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)  # in a Ray worker: Ray forwards it to the driver's terminal


def _serialize_cache(
    save_path: Path, source: ModelSource, hash_: str, prompt: Prompt, meta: dict[str, Any],
    arrays: dict[str, Any], warnings: list[str],
) -> tuple[Path, bytes, dict[str, Any]]:
    """(where it goes, the cache file's bytes, its index row): the CPU part of saving a cache."""
    data = serialize(CacheContents(meta, arrays))
    relpath = cache_relpath(source, hash_)
    row = index.make_row(
        "cache",
        model=source.name,
        model_id=source.model_id,
        prompt_hash=hash_,
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
    )
    return save_path / relpath, data, row


def _write_file(path: Path, data: bytes, row: dict[str, Any]) -> dict[str, Any]:
    write_atomic(path, data)
    return row


def _error_row(source: ModelSource, hash_: str, prompt: Prompt, error: Exception) -> dict[str, Any]:
    return index.make_row(
        "cache", model=source.name, model_id=source.model_id, prompt_hash=hash_, text=prompt.text[:200],
        path=cache_relpath(source, hash_), status="error", error=f"{type(error).__name__}: {error}",
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
    parser.add_argument("--neurons", type=int, default=32,
                        help="MLP neurons kept per layer: those with the largest activation variance over the prompt "
                        "(default: %(default)s; 0 = none)")
    parser.add_argument("--hooks", default="", help="extra TransformerLens hook names to store, comma-separated "
                        "(e.g. blocks.3.hook_resid_mid); stored as float16 with padding removed")
    parser.add_argument("--logit-lens", action="store_true",
                        help="also store each layer's top-1 token through the unembedding (costs about one extra "
                        "forward pass per layer on large vocabularies)")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_gracefully_on_signals()
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        summary = run_activations(
            args.model, args.prompts, args.save_path,
            batch_size=args.batch_size, device=args.device, dtype=args.dtype,
            pattern_encoding=args.pattern_encoding, top_k=args.top_k, n_neurons=args.neurons,
            hooks=[h.strip() for h in args.hooks.split(",") if h.strip()], logit_lens=args.logit_lens,
            max_tokens=args.max_tokens, random_weights=args.random_weights, ray=args.ray,
            force=args.force, strict=args.strict, progress=not args.quiet,
        )
    except (ModelLoadError, PromptFileError, DistributedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(
        f"done: {summary.written} cache(s) written, {summary.skipped} already cached, {summary.failed} failed, "
        f"{summary.bad_lines} bad prompt line(s) skipped; {summary.seconds:.1f} s; index: "
        f"{index.index_path(args.save_path)}",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
