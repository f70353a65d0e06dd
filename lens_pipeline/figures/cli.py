"""`python -m lens_pipeline.figures`: the command line of the figures stage."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from lens_pipeline.distributed import DistributedError
from lens_pipeline.draw.registry import REGISTRY
from lens_pipeline.figures.call import DISK_ERRNOS
from lens_pipeline.figures.choose import (
    FigureParamError,
    describe_figure,
    import_figures,
    load_builtins,
)
from lens_pipeline.figures.settings import FiguresSettings
from lens_pipeline.figures.stage import run_figures
from lens_pipeline.store import index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lens_pipeline.figures",
        description="Apply every registered figure function to the caches in SAVE_PATH, write the files "
        "under SAVE_PATH/figures and record each in SAVE_PATH/index.jsonl. Reruns skip what is done.",
    )
    parser.add_argument("--save-path", default="attn_data", help="folder the activations stage wrote (default: %(default)s)")
    parser.add_argument("--figures", default="",
                        help="comma-separated globs over figure names, e.g. 'attention_*,knitting*' (default: all)")
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
    parser.add_argument("--force", action="store_true",
                        help="redraw figures even if up to date (not needed after a code, param or cache change: "
                        "those redraw by themselves)")
    parser.add_argument("--raise", dest="raise_errors", action="store_true",
                        help="stop at the first figure that raises and show its full traceback (draws in this process)")
    parser.add_argument("--list", action="store_true",
                        help="list every registered figure with its options (defaults and types) and exit")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE.py|MODULE",
                        help="register your own figures from a Python file or module before running; repeatable")
    parser.add_argument("--format", dest="image_formats", default="", metavar="png,svg,pdf",
                        help="write matplotlib figures in these formats instead of their own (vector: text as "
                        "paths in SVG, fonts embedded in PDF)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        figure, dot, name = key.partition(".")
        if not sep or not dot:
            raise FigureParamError(f"--param {item!r}: expected FIGURE.NAME=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # bare words are strings: mode=round
        params.setdefault(figure, {})[name] = parsed
    return params


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split = lambda text: [part.strip() for part in text.split(",") if part.strip()]  # noqa: E731
    try:
        load_builtins()
        for name in args.imports:
            import_figures(name)
    except FigureParamError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(describe_figure(spec) for spec in sorted(REGISTRY.values(), key=lambda s: s.name)))
        return 0
    if not index.index_path(args.save_path).exists():
        print(f"error: {index.index_path(args.save_path)} not found; run python -m lens_pipeline.activations first",
              file=sys.stderr)
        return 2
    try:
        settings = FiguresSettings.build(
            figures=split(args.figures), models=split(args.model), prompts=split(args.prompts),
            layers=args.layers, heads=args.heads, params=_parse_params(args.param), workers=args.workers,
            ray=args.ray, force=args.force, raise_errors=args.raise_errors, progress=not args.quiet,
            image_formats=split(args.image_formats),
        )
        summary = run_figures(args.save_path, settings)
    except (FigureParamError, DistributedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except index.IndexWriteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        print(f"error: cannot write figures to {args.save_path}: {error.strerror} (finished figures are "
              f"recorded; free space and rerun to resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished figures are recorded; rerun to resume", file=sys.stderr)
        return 130
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    stale = f", {summary.stale} marked stale" if summary.stale else ""
    not_applicable = sum(summary.not_applicable.values())
    print(f"done: {summary.written} figure(s) written ({rate:.0f}/s), {summary.skipped} already done, "
          f"{summary.failed} failed{stale}" + (f", {not_applicable} not applicable" if not_applicable else "")
          + f"; {summary.seconds:.1f} s", file=sys.stderr)
    for line in summary.not_applicable_lines():
        print(f"  {line}", file=sys.stderr)
    return 1 if summary.failed else 0
