"""Sizes and load times of the interactive (Plotly) figures of one prompt of a save path.

    python -m scripts.bench.interactive --save-path attn_data [--prompt HASH] [--layer 17] [--head 6] [--repeats 3]

Draws interactive_attention (one head), interactive_layer (one layer), interactive_neurons,
interactive_layer_stats and architecture_3d for the prompt (with --force), then opens each page
from file:// in headless Chromium (software WebGL, network off) and reports the file size and the
median time from navigation to the figure drawn (the page's data-ready mark), plus plotly.min.js.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lens_pipeline.draw import interactive
from lens_pipeline.figures import run_figures
from lens_pipeline.store import index

from .common import command_parser, markdown_header, markdown_row, screenshots, timed

FIGURES = ["interactive_attention", "interactive_layer", "interactive_neurons", "interactive_layer_stats", "architecture_3d"]


def load_seconds(driver: Any, url: str) -> float:
    """From navigation to the figure drawn."""
    wait_figure_drawn = screenshots().wait_figure_drawn
    driver.get("about:blank")
    return timed(lambda: (driver.get(url), wait_figure_drawn(driver)))[0]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("--save-path", required=True)
    parser.add_argument("--prompt", help="prompt hash prefix (default: the longest cached prompt)")
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--head", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    save_path = Path(args.save_path)
    caches = [r for r in index.latest(index.read_rows(save_path)).values() if r["kind"] == "cache" and r["status"] == "ok"]
    chosen = [r for r in caches if r["prompt_hash"].startswith(args.prompt)] if args.prompt else caches
    cache_row = max(chosen, key=lambda r: r.get("n_tokens") or 0)
    started = time.perf_counter()
    summary = run_figures(save_path, figures=FIGURES, models=[cache_row["model"]], prompts=[cache_row["prompt_hash"]],
                          layers=str(args.layer), heads=str(args.head), force=True, progress=False)
    print(f"drew {summary.written} page(s) in {time.perf_counter() - started:.2f} s "
          f"({cache_row['model']}, prompt {cache_row['prompt_hash']}, {cache_row.get('n_tokens')} tokens)")
    rows = [r for r in summary.rows if r["status"] == "ok"]
    plotly_copy = save_path / interactive.asset_paths()[0]
    print(f"{plotly_copy.relative_to(save_path)}: {plotly_copy.stat().st_size / 1e6:.2f} MB (one copy per save path)")
    with tempfile.TemporaryDirectory() as profile:
        driver = screenshots().figure_browser(1300, 1000, profile)
        try:
            print(markdown_header(["figure", "file", f"load (median of {args.repeats}, s)"]))
            for row in sorted(rows, key=lambda r: FIGURES.index(r["function"])):
                url = (save_path / row["path"]).resolve().as_uri()
                times = [load_seconds(driver, url) for _ in range(args.repeats)]
                print(markdown_row([f"`{row['function']}`", f"{row['bytes'] / 1e3:.0f} kB", f"{statistics.median(times):.2f}"]))
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
