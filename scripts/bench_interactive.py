"""Sizes and load times of the interactive (Plotly) figures of one prompt of a save path.

    python scripts/bench_interactive.py --save-path attn_data [--prompt HASH] [--layer 17] [--head 6] [--repeats 3]

Draws interactive_attention (one head), interactive_layer (one layer), interactive_neurons,
interactive_layer_stats and architecture_3d for the prompt (with --force), then opens each page
from file:// in headless Chromium (software WebGL, network off) and reports the file size and the
median time from navigation to the figure drawn (the page's data-ready mark), plus plotly.min.js.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import chromium  # noqa: E402

from lens_pipeline.draw import interactive  # noqa: E402
from lens_pipeline.figures import run_figures  # noqa: E402
from lens_pipeline.store import index  # noqa: E402

FIGURES = ["interactive_attention", "interactive_layer", "interactive_neurons", "interactive_layer_stats", "architecture_3d"]


def load_seconds(driver, url: str) -> float:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    started = time.perf_counter()
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "const f = document.querySelector('.lens-figure'); return f && f.dataset.ready === '1';"))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        driver = chromium(1300, 1000, profile, flags=("--enable-unsafe-swiftshader",))
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                    "downloadThroughput": -1, "uploadThroughput": -1})
        try:
            print("| figure | file | load (median of %d, s) |" % args.repeats)
            print("|---|---|---|")
            for row in sorted(rows, key=lambda r: FIGURES.index(r["function"])):
                url = (save_path / row["path"]).resolve().as_uri()
                times = [load_seconds(driver, url) for _ in range(args.repeats)]
                print(f"| `{row['function']}` | {row['bytes'] / 1e3:.0f} kB | {statistics.median(times):.2f} |")
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
