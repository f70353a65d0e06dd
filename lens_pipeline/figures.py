"""The figures stage: every registered figure function over every cache -> files + index rows.

    python -m lens_pipeline.figures --save-path attn_data --figures 'attention_*' --workers 2

From a notebook:

    from lens_pipeline.registry import register_figure
    from lens_pipeline.figures import run_figures

    @register_figure(scope="prompt", formats="png")
    def my_figure(cache): ...

    run_figures("attn_data", figures=["my_figure"], display=True)

Work is split per prompt: a worker opens a cache once, draws every figure of that prompt
(heads in layer order, so each layer is decoded once), and hands the index rows back to the
parent, the index's only writer. Figures already recorded as ok for the same cache and params
are skipped; failed ones are recorded with their error and retried on the next run.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import io
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm

from lens_pipeline import index
from lens_pipeline.cache import Cache, CacheError, write_atomic
from lens_pipeline.distributed import DistributedError
from lens_pipeline.models import slug
from lens_pipeline.registry import REGISTRY, FigureSpec, SkipFigure


@dataclass(frozen=True)
class Task:
    """One figure call: a function, and the layer/head it is for (None where not applicable)."""

    function: str
    layer: int | None = None
    head: int | None = None


@dataclass
class FiguresSummary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def load_builtins() -> None:
    """Register the built-in figures (the same decorator a user's functions use)."""
    import lens_pipeline.builtins  # noqa: F401  (importing registers them)


def select_figures(patterns: Sequence[str] | None) -> list[FigureSpec]:
    """Registered figures whose name matches any glob (the default set when none given)."""
    if not patterns:
        return [spec for spec in REGISTRY.values() if spec.default]
    chosen = [spec for name, spec in REGISTRY.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"no registered figure matches {list(patterns)}; see --list")
    return chosen


def parse_range(spec: str | None) -> set[int] | None:
    """'0-3,7' -> {0, 1, 2, 3, 7}; None or '' -> None (all)."""
    if not spec:
        return None
    values: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = part.split("-", 1)
                values.update(range(int(low), int(high) + 1))
            elif part:
                values.add(int(part))
        except ValueError:
            raise ValueError(f"bad range {spec!r}: use numbers and ranges like 0-3,7") from None
    return values


def figure_paths(spec: FigureSpec, model: str, prompt_hash: str, task: Task, keys: Iterable[str]) -> dict[str, str]:
    """Output key -> path relative to the save path. One folder per prompt; a multi-file
    figure gets a sub-folder of its own."""
    stem = spec.name
    if task.layer is not None:
        stem += f".L{task.layer:02d}"
    if task.head is not None:
        stem += f".H{task.head:02d}"
    folder = f"figures/{slug(model)}/{prompt_hash or '_model'}"
    keys = list(keys)
    if len(keys) == 1 and "." not in keys[0]:
        return {keys[0]: f"{folder}/{stem}.{keys[0]}"}
    return {key: f"{folder}/{stem}/{key if '.' in key else f'{spec.name}.{key}'}" for key in keys}


def render(obj: Any, fmt: str) -> bytes:
    """A figure function's return value -> file bytes in `fmt`."""
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, (dict, list)):
        return json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8")
    buffer = io.BytesIO()
    if hasattr(obj, "savefig"):  # a matplotlib Figure
        import matplotlib.pyplot as plt

        obj.savefig(buffer, format=fmt, dpi=100, bbox_inches="tight")
        plt.close(obj)
        return buffer.getvalue()
    if hasattr(obj, "save") and hasattr(obj, "mode"):  # a PIL image
        options = {"compress_level": 1} if fmt == "png" else {}  # speed over a few % of bytes
        obj.save(buffer, format=fmt.upper(), **options)
        return buffer.getvalue()
    raise TypeError(f"cannot write a {type(obj).__name__} as {fmt}; return bytes, str, dict, a PIL image or a matplotlib figure")


def _outputs(spec: FigureSpec, result: Any) -> dict[str, Any]:
    """Normalise a return value to {key: object}, key a format or a file name."""
    if len(spec.formats) > 1:
        if not isinstance(result, dict):
            raise TypeError(f"{spec.name} declares formats {spec.formats}: return a dict of files")
        return result
    return {spec.formats[0]: result}


def _call(spec: FigureSpec, target: Any, task: Task, params: dict[str, Any]) -> Any:
    if spec.scope == "head":
        return spec.func(target, task.layer, task.head, **params)
    if spec.scope == "layer":
        return spec.func(target, task.layer, **params)
    return spec.func(target, **params)


def draw(
    spec: FigureSpec, target: Any, task: Task, params: dict[str, Any], save_path: Path,
    model: str, prompt_hash: str, cache_sha: str | None,
) -> dict[str, Any]:
    """Run one figure function, write its files, and return its index row (ok, skipped or error)."""
    row: dict[str, Any] = dict(
        model=model, prompt_hash=prompt_hash, function=spec.name, scope=spec.scope,
        layer=task.layer, head=task.head, params=params, cache_sha256=cache_sha,
    )
    started = time.perf_counter()
    try:
        outputs = _outputs(spec, _call(spec, target, task, params))
        paths = figure_paths(spec, model, prompt_hash, task, outputs)
        files = []
        for key, obj in outputs.items():
            fmt = key.rsplit(".", 1)[-1]
            data = render(obj, fmt)
            write_atomic(save_path / paths[key], data, durable=False)
            files.append({"path": paths[key], "format": fmt, "bytes": len(data), "sha256": index.sha256_bytes(data)})
    except SkipFigure as reason:
        return index.make_row("figure", status="skipped", error=str(reason), **row)
    except Exception as error:  # a broken figure is recorded and retried next run; the others go on
        return index.make_row("figure", status="error", error=f"{type(error).__name__}: {error}", **row)
    primary = files[0]
    return index.make_row(
        "figure", path=primary["path"], format=primary["format"], bytes=primary["bytes"],
        sha256=primary["sha256"], files=files, seconds=round(time.perf_counter() - started, 5), **row,
    )


def _tasks_for(spec: FigureSpec, cache: Cache, layers: set[int] | None, heads: set[int] | None) -> list[Task]:
    layer_range = [l for l in range(cache.n_layers) if layers is None or l in layers]
    if spec.scope == "head":
        return [Task(spec.name, l, h) for l in layer_range for h in range(cache.n_heads) if heads is None or h in heads]
    if spec.scope == "layer":
        return [Task(spec.name, l) for l in layer_range]
    return [Task(spec.name)]


def _draw_prompt(save_path: Path, cache_row: dict[str, Any], jobs: list[tuple[Task, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Worker: open one cache once and draw all of its figures, layer by layer."""
    try:
        cache = Cache(save_path / cache_row["path"])
    except CacheError as error:
        return [
            index.make_row("figure", model=cache_row["model"], prompt_hash=cache_row["prompt_hash"],
                           function=task.function, layer=task.layer, head=task.head,
                           status="error", error=str(error))
            for task, _ in jobs
        ]
    with cache:
        return [
            draw(REGISTRY[task.function], cache, task, params, save_path, cache.model, cache.prompt_hash, cache_row.get("sha256"))
            for task, params in jobs
        ]


def _one_blas_thread() -> None:
    """Workers already fill the cores; a multi-threaded BLAS inside each one oversubscribes them
    (an SVD measured 100x slower on 2 busy cores)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def run_figures(
    save_path: str | Path = "attn_data",
    *,
    figures: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    layers: str | set[int] | None = None,
    heads: str | set[int] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    workers: int = 1,
    ray: str | None = None,
    force: bool = False,
    progress: bool = True,
    display: bool = False,
) -> FiguresSummary:
    """Draw figures for the caches in `save_path`; returns the rows it wrote.

    figures: globs over registered names; models: model names; prompts: prompt-hash prefixes;
    layers/heads: sets or '0-3,7' strings; params: {figure name: {param: value}} overrides;
    workers: local processes; ray: 'auto' or a cluster address, to draw on Ray workers instead.
    """
    started = time.perf_counter()
    load_builtins()
    save_path = Path(save_path)
    specs = select_figures(figures)
    layers = parse_range(layers) if isinstance(layers, str) or layers is None else set(layers)
    heads = parse_range(heads) if isinstance(heads, str) or heads is None else set(heads)
    rows = index.read_rows(save_path)
    caches = [
        row for row in index.latest(r for r in rows if r["kind"] == "cache").values()
        if index.is_complete(row, save_path)
        and (not models or row["model"] in models)
        and (not prompts or any(row["prompt_hash"].startswith(p) for p in prompts))
    ]
    done = index.latest(r for r in rows if r["kind"] == "figure")
    summary = FiguresSummary()

    def is_done(model: str, prompt_hash: str, task: Task, spec_params: dict[str, Any], cache_sha: str | None) -> bool:
        row = done.get(("figure", model, prompt_hash, task.function, task.layer, task.head))
        if force or row is None or row.get("params") != spec_params or row.get("cache_sha256") != cache_sha:
            return False
        return row.get("status") == "skipped" or index.is_complete(row, save_path)

    # Plan: per prompt, the (task, params) pairs still to draw.
    plan: list[tuple[dict[str, Any], list[tuple[Task, dict[str, Any]]]]] = []
    per_prompt_specs = [s for s in specs if s.scope != "model"]
    for cache_row in caches:
        if not per_prompt_specs:
            break
        try:
            with Cache(save_path / cache_row["path"]) as cache:  # reads only meta.json
                jobs = []
                for spec in per_prompt_specs:
                    spec_params = effective_params(spec, params)
                    if any(not cache.has(name) for name in spec.needs):
                        continue  # e.g. the logit lens on a cache made without --logit-lens
                    for task in _tasks_for(spec, cache, layers, heads):
                        if is_done(cache.model, cache.prompt_hash, task, spec_params, cache_row.get("sha256")):
                            summary.skipped += 1
                        else:
                            jobs.append((task, spec_params))
        except CacheError as error:
            print(f"warning: {error}", file=sys.stderr)
            continue
        if jobs:
            plan.append((cache_row, jobs))

    total = sum(len(jobs) for _, jobs in plan)
    bar = tqdm(total=total, desc="figures", unit="fig", disable=not progress or total == 0)

    def record(new_rows: list[dict[str, Any]]) -> None:
        index.append_rows(save_path, new_rows)
        summary.rows.extend(new_rows)
        for row in new_rows:
            if row["status"] == "error":
                summary.failed += 1
                tqdm.write(f"error: {row['function']} on {row['prompt_hash']} L{row['layer']} H{row['head']}: {row['error']}", file=sys.stderr)
            elif row["status"] == "ok":
                summary.written += 1
        bar.update(len(new_rows))

    try:
        if ray and plan:
            for rows_of_shard in _draw_on_ray(save_path, plan, ray):
                record(rows_of_shard)
        elif workers > 1 and len(plan) > 1:
            # fork keeps figures registered in a notebook's __main__ visible to the workers.
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_blas_thread) as pool:
                futures = [pool.submit(_draw_prompt, save_path, cache_row, jobs) for cache_row, jobs in plan]
                for future in as_completed(futures):
                    record(future.result())
        else:
            for cache_row, jobs in plan:
                record(_draw_prompt(save_path, cache_row, jobs))
        _draw_model_figures(save_path, specs, caches, params, is_done, record, summary)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - started
    if display:
        show(summary.rows, save_path)
    return summary


def _draw_on_ray(
    save_path: Path, plan: list[tuple[dict[str, Any], list[tuple[Task, dict[str, Any]]]]], address: str
) -> Iterable[list[dict[str, Any]]]:
    """The per-prompt plan on Ray workers (one per CPU slot), a few prompts per shard; each
    shard's rows come back here, the index's only writer. The figure specs travel with the work,
    so functions registered in a notebook draw on the workers too. SAVE_PATH must be a folder
    every worker sees (one machine, or a shared file system)."""
    from lens_pipeline import distributed

    specs = [REGISTRY[name] for name in sorted({task.function for _, jobs in plan for task, _ in jobs})]
    setup = functools.partial(_register_on_worker, specs)
    work = functools.partial(_draw_shard, save_path=save_path)
    return distributed.run_shards(setup, work, distributed.chunks(plan, 2), address=address, use_gpus=False)


def _register_on_worker(specs: list[FigureSpec]) -> None:
    _one_blas_thread()
    for spec in specs:
        REGISTRY[spec.name] = spec


def _draw_shard(
    state: None, shard: list[tuple[dict[str, Any], list[tuple[Task, dict[str, Any]]]]], *, save_path: Path
) -> list[dict[str, Any]]:
    return [row for cache_row, jobs in shard for row in _draw_prompt(save_path, cache_row, jobs)]


def effective_params(spec: FigureSpec, overrides: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """A figure's keyword defaults with the caller's overrides on top: what is called and recorded."""
    return {**spec.params, **(overrides or {}).get(spec.name, {})}


def _draw_model_figures(
    save_path: Path,
    specs: Sequence[FigureSpec],
    caches: Sequence[dict[str, Any]],
    params: dict[str, dict[str, Any]] | None,
    is_done: Callable[..., bool],
    record: Callable[[list[dict[str, Any]]], None],
    summary: FiguresSummary,
) -> None:
    """Model-scope figures (comparisons across a model's prompts) run after the prompts."""
    model_specs = [s for s in specs if s.scope == "model"]
    for model in sorted({row["model"] for row in caches}):
        rows = [row for row in caches if row["model"] == model]
        # The set of caches is this figure's input: a new prompt makes it stale.
        fingerprint = index.sha256_bytes("".join(sorted(r.get("sha256") or "" for r in rows)).encode())
        opened = None
        for spec in model_specs:
            spec_params = effective_params(spec, params)
            if is_done(model, "", Task(spec.name), spec_params, fingerprint):
                summary.skipped += 1
                continue
            if opened is None:
                opened = [Cache(save_path / row["path"]) for row in rows]
            record([draw(spec, opened, Task(spec.name), spec_params, save_path, model, "", fingerprint)])
        for cache in opened or []:
            cache.close()


def show(rows: Sequence[dict[str, Any]], save_path: str | Path, limit: int = 12) -> None:
    """Display written figures inline in Jupyter (PNG, SVG, HTML, Markdown); a no-op elsewhere."""
    try:
        from IPython.display import HTML, SVG, Image, Markdown, display
    except ImportError:
        return
    viewers = {"png": lambda p: Image(filename=p), "svg": lambda p: SVG(filename=p),
               "html": lambda p: HTML(filename=p), "md": lambda p: Markdown(filename=p)}
    shown = 0
    for row in rows:
        for entry in row.get("files", []):
            if entry["format"] in viewers and shown < limit:
                display(viewers[entry["format"]](str(Path(save_path) / entry["path"])))
                shown += 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lens_pipeline.figures",
        description="Apply every registered figure function to the caches in SAVE_PATH, write the files "
        "under SAVE_PATH/figures and record each in SAVE_PATH/index.jsonl. Reruns skip what is done.",
    )
    parser.add_argument("--save-path", default="attn_data", help="folder the activations stage wrote (default: %(default)s)")
    parser.add_argument("--figures", default="", help="comma-separated globs over figure names, e.g. 'attention_*,knitting*' (default: all)")
    parser.add_argument("--model", default="", help="comma-separated model names to draw (default: all in the index)")
    parser.add_argument("--prompts", default="", help="comma-separated prompt-hash prefixes (default: all)")
    parser.add_argument("--layers", default="", help="layers for per-layer/per-head figures, e.g. 0-3,7 (default: all)")
    parser.add_argument("--heads", default="", help="heads for per-head figures, e.g. 0,2 (default: all)")
    parser.add_argument("--param", action="append", default=[], metavar="FIGURE.NAME=VALUE",
                        help="override a figure's parameter (JSON value), e.g. knitting_pattern.width=30; repeatable")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, parallel across prompts (default: %(default)s)")
    parser.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                        help="draw on Ray workers (one per CPU slot) instead of local processes; auto = the running "
                        "cluster, else a new local one (pip install 'lens_pipeline[ray]'); SAVE_PATH must be shared")
    parser.add_argument("--force", action="store_true", help="redraw figures even if the index has them")
    parser.add_argument("--list", action="store_true", help="list registered figure functions and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        figure, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--param {item!r}: expected FIGURE.NAME=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # bare words are strings: mode=round
        params.setdefault(figure, {})[name] = parsed
    return params


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split = lambda text: [part.strip() for part in text.split(",") if part.strip()]  # noqa: E731
    if args.list:
        load_builtins()
        width = max(len(name) for name in REGISTRY)
        for spec in sorted(REGISTRY.values(), key=lambda s: s.name):
            optional = "" if spec.default else "  (only when named with --figures)"
            print(f"{spec.name:<{width}}  {spec.scope:<6}  {','.join(spec.formats):<12}  {spec.description}{optional}")
        return 0
    if not index.index_path(args.save_path).exists():
        print(f"error: {index.index_path(args.save_path)} not found; run python -m lens_pipeline.activations first", file=sys.stderr)
        return 2
    try:
        summary = run_figures(
            args.save_path, figures=split(args.figures), models=split(args.model), prompts=split(args.prompts),
            layers=args.layers, heads=args.heads, params=_parse_params(args.param),
            workers=args.workers, ray=args.ray, force=args.force, progress=not args.quiet,
        )
    except (ValueError, DistributedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished figures are recorded; rerun to resume", file=sys.stderr)
        return 130
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    print(f"done: {summary.written} figure(s) written ({rate:.0f}/s), {summary.skipped} already done, "
          f"{summary.failed} failed; {summary.seconds:.1f} s", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
