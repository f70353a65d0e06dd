"""Benchmark the built-in figures on one CPU core; prints figures per second.

    python -m scripts.bench.figures                          # synthetic 100-token caches, SmolLM2's shape
    python -m scripts.bench.figures --save-path attn_data    # the caches an activations run wrote
    python -m scripts.bench.figures --all --stage            # also every built-in, and the full stage
    python -m scripts.bench.figures --save-path D --builtins  # figures/s of every default built-in on D's caches

Synthetic caches are real cache files (written with lens_pipeline.store.cache.serialize in the default
pattern encoding, read back through the lazy reader) holding random causal softmax patterns, so the measured path is the
one the stage runs: open cache, decode each layer once, colour, enlarge, PNG-encode. Target
for attention_heatmap: >= 2,000 figures/s/core on 100-token prompts.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core means one thread

import shutil  # noqa: E402  (the thread counts above come first)
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from lens_pipeline.store import index  # noqa: E402
from lens_pipeline.store.cache import (  # noqa: E402
    DEFAULT_PATTERN_ENCODING,
    PATTERN_MAX_ERROR,
    CacheContents,
    encode_pattern,
    load,
    pattern_member,
    prompt_hash,
    serialize,
    write_atomic,
)

from .common import command_parser  # noqa: E402


def synthetic_caches(folder: Path, n_prompts: int, n_tokens: int, n_layers: int, n_heads: int, seed: int = 0) -> list[Path]:
    """Cache files with random causal attention (peaked rows, like real heads) and small extras."""
    rng = np.random.default_rng(seed)
    mask = np.triu(np.ones((n_tokens, n_tokens), dtype=bool), k=1)
    paths, rows = [], []
    for p in range(n_prompts):
        text = f"synthetic prompt {p}"
        hash_ = prompt_hash("synthetic", text)
        arrays: dict[str, np.ndarray] = {
            "tokens": np.arange(n_tokens, dtype=np.int32),
            "token_strs": np.array([f" t{i}" for i in range(n_tokens)]),
        }
        for layer in range(n_layers):
            scores = rng.normal(scale=3.0, size=(n_heads, n_tokens, n_tokens)).astype(np.float32)
            scores[:, mask] = -np.inf
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            arrays[pattern_member(layer)] = encode_pattern(
                weights / weights.sum(-1, keepdims=True), DEFAULT_PATTERN_ENCODING, causal=True)
        k = 10
        arrays["topk_ids"] = rng.integers(0, 1000, (n_tokens, k), dtype=np.int32)
        arrays["topk_probs"] = np.sort(rng.dirichlet(np.ones(k * 3), n_tokens)[:, :k], axis=1)[:, ::-1].astype(np.float16)
        arrays["topk_strs"] = np.array([[f" w{i}" for i in row] for row in arrays["topk_ids"]])
        arrays["resid_norms"] = rng.gamma(4.0, 10.0, (n_layers + 1, n_tokens)).astype(np.float32)
        arrays["neuron_ids"] = np.tile(np.arange(32, dtype=np.int32), (n_layers, 1))
        arrays["neuron_acts"] = rng.normal(size=(n_layers, 32, n_tokens)).astype(np.float16)
        meta = {"model": "synthetic", "model_id": "synthetic", "family": "llama", "causal": True,
                "n_layers": n_layers, "n_heads": n_heads, "d_model": 576, "pattern_encoding": DEFAULT_PATTERN_ENCODING,
                "pattern_max_error": PATTERN_MAX_ERROR[DEFAULT_PATTERN_ENCODING], "settings": {}, "prompt_hash": hash_,
                "text": text, "n_tokens": n_tokens}
        data = serialize(CacheContents(meta, arrays))
        relpath = f"caches/synthetic/{hash_}.zip"
        write_atomic(folder / relpath, data)
        paths.append(folder / relpath)
        rows.append(index.make_row("cache", model="synthetic", prompt_hash=hash_, path=relpath, bytes=len(data),
                                   sha256=index.sha256_bytes(data), n_tokens=n_tokens, params={}))
    index.append_rows(folder, rows)
    return paths


def cached_paths(save_path: Path, model: str | None, limit: int) -> list[Path]:
    rows = [r for r in index.latest(index.read_rows(save_path)).values()
            if r["kind"] == "cache" and index.is_complete(r, save_path) and (model is None or r["model"] == model)]
    if not rows:
        sys.exit(f"error: no complete caches{f' of {model}' if model else ''} in {save_path}")
    return [save_path / r["path"] for r in rows[:limit]]


def bench_fast_heatmap(paths: list[Path], repeats: int) -> None:
    """Figures/s for attention_heatmap, PNG-encoded as the stage encodes it (compress_level=1)."""
    from lens_pipeline.draw.builtins.attention import attention_heatmap
    from lens_pipeline.draw.colormap import png_bytes

    rates, sizes, tokens = [], [], []
    for _ in range(repeats):
        count, started = 0, time.perf_counter()
        for path in paths:
            with load(path) as cache:  # a fresh open each time: decompression and decoding are counted
                tokens.append(cache.n_tokens)
                for layer in range(cache.n_layers):
                    for head in range(cache.n_heads):
                        sizes.append(len(png_bytes(attention_heatmap(cache, layer, head))))
                        count += 1
        rates.append(count / (time.perf_counter() - started))
    print(f"attention_heatmap: {statistics.median(rates):,.0f} figures/s/core (median of {repeats}, best "
          f"{max(rates):,.0f}); {count} figures per pass, mean {statistics.mean(tokens):.0f} tokens, "
          f"mean PNG {statistics.mean(sizes) / 1024:.1f} KiB")


def rendered_bytes(spec, result: object) -> int:  # type: ignore[no-untyped-def]
    """Bytes of a figure's files, rendered as the stage renders them (one file, or a dict of them)."""
    from lens_pipeline.figures import render

    outputs = result if len(spec.formats) > 1 else {spec.formats[0]: result}
    return sum(len(render(obj, key.rsplit(".", 1)[-1])) for key, obj in outputs.items())  # type: ignore[union-attr]


def bench_all(path: Path) -> None:
    """Seconds per figure for every built-in on one cache, rendered as the stage renders them."""
    import lens_pipeline.draw.builtins  # noqa: F401
    from lens_pipeline.draw.registry import REGISTRY, SkipFigure

    with load(path) as cache:
        print(f"every built-in on one cache ({cache.n_tokens} tokens):")
        for spec in REGISTRY.values():
            if any(not cache.has(name) for name in spec.needs):
                print(f"  {spec.name:32s} (cache lacks {spec.needs})")
                continue
            args = {"head": (cache, 0, 0), "layer": (cache, 0), "prompt": (cache,), "model": ([cache],)}[spec.scope]
            started = time.perf_counter()
            try:
                result = spec.func(*args)
            except SkipFigure as reason:
                print(f"  {spec.name:32s} skipped: {reason}")
                continue
            size = rendered_bytes(spec, result)
            print(f"  {spec.name:32s} {time.perf_counter() - started:7.3f} s  {size / 1024:8.1f} KiB")


def _calls(spec, cache: object, caches: list) -> list[tuple]:  # type: ignore[no-untyped-def]
    """The argument tuples the stage would call one cache's figures with (model scope: once per pass)."""
    if spec.scope == "head":
        return [(cache, layer, head) for layer in range(cache.n_layers) for head in range(cache.n_heads)]  # type: ignore[attr-defined]
    if spec.scope == "layer":
        return [(cache, layer) for layer in range(cache.n_layers)]  # type: ignore[attr-defined]
    if spec.scope == "prompt":
        return [(cache,)]
    return [(caches,)] if cache is caches[0] else []


def bench_builtins(paths: list[Path], repeats: int, only: list[str] | None) -> None:
    """Figures/s of each default built-in over the caches, rendered to file bytes as the stage renders them."""
    import lens_pipeline.draw.builtins  # noqa: F401
    from lens_pipeline.draw.registry import REGISTRY, SkipFigure

    caches = [load(path) for path in paths]
    tokens = statistics.mean(c.n_tokens for c in caches)
    # CPU seconds of this process: on a shared machine, wall time also counts other processes' turns.
    print(f"default built-ins, one core, {len(caches)} caches of mean {tokens:.0f} tokens, median of {repeats} passes:")
    specs = [s for s in REGISTRY.values() if (s.name in only if only else s.default)]
    warm = {}
    for spec in specs:  # one untimed call each: imports, fonts, lookup tables
        if any(not caches[0].has(name) for name in spec.needs):
            warm[spec.name] = f"cache lacks {spec.needs}"
            continue
        try:
            spec.func(*_calls(spec, caches[0], caches)[0])
        except SkipFigure as reason:
            warm[spec.name] = f"skipped: {reason}"
        except Exception as error:  # a figure that cannot draw these caches is reported, not timed
            warm[spec.name] = f"failed: {type(error).__name__}: {str(error)[:80]}"
    for spec in specs:
        if spec.name in warm:
            print(f"  {spec.name:32s} {warm[spec.name]}")
            continue
        rates, cpu_rates, size = [], [], 0
        for _ in range(repeats):
            count, started, cpu = 0, time.perf_counter(), time.process_time()
            for cache in caches:
                for args in _calls(spec, cache, caches):
                    result = spec.func(*args)
                    size += rendered_bytes(spec, result)
                    count += 1
            rates.append(count / (time.perf_counter() - started))
            cpu_rates.append(count / max(time.process_time() - cpu, 1e-9))
        print(f"  {spec.name:32s} {statistics.median(cpu_rates):9.1f} figures per CPU-second  "
              f"{statistics.median(rates):9.1f} figures/s wall  ({count} per pass, mean {size / count / repeats / 1024:.0f} KiB)")
    for cache in caches:
        cache.close()


def bench_stage(save_path: Path) -> None:
    """attention_heatmap through the whole stage (files, index rows) on a scratch copy."""
    from lens_pipeline.figures import run_figures

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "data"
        shutil.copytree(save_path, copy, ignore=shutil.ignore_patterns("figures"))
        summary = run_figures(copy, figures=["attention_heatmap"], force=True, progress=False, workers=1)
        print(f"stage, attention_heatmap only, 1 worker: {summary.written / summary.seconds:,.0f} figures/s "
              f"({summary.written} written in {summary.seconds:.2f} s, files and index rows included)")


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("--save-path", type=Path, help="benchmark the caches this activations run wrote (default: synthetic)")
    parser.add_argument("--model", help="only this model's caches (with --save-path)")
    parser.add_argument("--prompts", type=int, default=4, help="caches to use (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=100, help="synthetic prompt length (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=30, help="synthetic layers (default: %(default)s, SmolLM2)")
    parser.add_argument("--heads", type=int, default=9, help="synthetic heads (default: %(default)s, SmolLM2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (default: %(default)s)")
    parser.add_argument("--all", action="store_true", help="also time every built-in once")
    parser.add_argument("--stage", action="store_true", help="also time attention_heatmap through the figures stage")
    parser.add_argument("--builtins", action="store_true", help="figures/s of every default built-in (or --only)")
    parser.add_argument("--only", nargs="+", help="with --builtins: just these figures")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # "per core" means one core

    with tempfile.TemporaryDirectory() as scratch:
        if args.save_path:
            save_path, paths = args.save_path, cached_paths(args.save_path, args.model, args.prompts)
        else:
            save_path = Path(scratch)
            paths = synthetic_caches(save_path, args.prompts, args.tokens, args.layers, args.heads)
        if args.builtins:
            bench_builtins(paths, args.repeats, args.only)
            return
        bench_fast_heatmap(paths, args.repeats)
        if args.all:
            bench_all(paths[0])
        if args.stage:
            bench_stage(save_path)


if __name__ == "__main__":
    main()
