"""A screenshot of the 3-D architecture view for the docs: docs/architecture_3d.png.

    python scripts/screenshot_3d.py --save-path attn_data [--prompt HASH] [--color entropy] [--out docs]

Draws `architecture_3d` for the prompt (the first cached one by default) if it is not drawn yet,
opens the page from file:// in headless Chromium (software WebGL, network off) and saves the picture.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import figure_browser, wait_figure_drawn  # noqa: E402

from lens_pipeline.figures import run_figures  # noqa: E402
from lens_pipeline.store import index  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-path", default="attn_data")
    parser.add_argument("--prompt", help="prompt hash prefix (default: the first cached prompt)")
    parser.add_argument("--color", default="entropy", choices=("entropy", "first_token", "neurons"))
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    save_path = Path(args.save_path)
    caches = [r for r in index.latest(index.read_rows(save_path)).values() if r["kind"] == "cache" and r["status"] == "ok"]
    cache_row = next(r for r in caches if not args.prompt or r["prompt_hash"].startswith(args.prompt))
    summary = run_figures(save_path, figures=["architecture_3d"], models=[cache_row["model"]],
                          prompts=[cache_row["prompt_hash"]], params={"architecture_3d": {"color": args.color}},
                          progress=False)
    row = next(r for r in summary.rows + summary.current if r["function"] == "architecture_3d" and r["status"] == "ok")
    out = Path(args.out) / "architecture_3d.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        driver = figure_browser(1100, 800, profile)
        try:
            driver.get((save_path / row["path"]).resolve().as_uri())
            wait_figure_drawn(driver)
            time.sleep(1.0)  # the WebGL scene's first frames
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    print(f"wrote {out} ({cache_row['model']}, prompt {cache_row['prompt_hash']}, colour {args.color})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
