"""Screenshots of the viewer for the docs: docs/viewer.png (figure grid) and docs/single_head.png,
and on request the other views (--views grid,head,tokens,prompts,knit,figure).

    python scripts/screenshots.py --save-path attn_data [--out docs] [--head 3,5] [--views grid,head]

Starts the viewer on a free port in this process and drives the system Chromium headless
(Debian `chromium` + `chromium-driver`; pip `selenium`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from lens_pipeline.server import make_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium(width: int, height: int, profile: str, log_network: bool = False) -> webdriver.Chrome:
    """Headless system Chromium; `log_network` records requests and console messages (the tests read them)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                 "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                 "--force-device-scale-factor=1"):
        options.add_argument(flag)
    if log_network:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def hover_cell(driver: webdriver.Chrome, canvas: Any, q: int, k: int) -> None:
    """Put the mouse on heatmap cell (query q, key k), in viewport coordinates."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", canvas)
    x, y = driver.execute_script(
        "const c = arguments[0], r = c.getBoundingClientRect(), d = c.dataset;"
        "return [r.left + +d.originX + (arguments[2] + 0.5) * +d.cell, r.top + +d.originY + (arguments[1] + 0.5) * +d.cell];",
        canvas, q, k)
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(x), int(y))
    actions.perform()


def _ready(driver: webdriver.Chrome, selector: str, images: bool = False) -> None:
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, selector))
    if images:
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('img')].slice(0, 12).every(i => i.complete)"))
    time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-path", required=True, help="a save path with caches and figures")
    parser.add_argument("--out", default="docs", help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--head", default="16,0", help="LAYER,HEAD for the single-head view (default: %(default)s)")
    parser.add_argument("--grid-filter", default="function=attention_heatmap&layer=3",
                        help="hash parameters for the grid screenshot (default: %(default)s)")
    parser.add_argument("--views", default="grid,head", help="which views: grid, head, tokens, prompts, knit, figure "
                        "(the first figure that is not drawn and current: stale, failed or skipped) (default: %(default)s)")
    args = parser.parse_args(argv)
    layer, head = (int(x) for x in args.head.split(","))
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    server = make_server(args.save_path, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    summary = server.api.handle("/api/summary", "")
    caches = list(server.api.index.view().current.values())
    if not caches:
        print(f"error: {args.save_path} has no caches", file=sys.stderr)
        return 2
    # A prompt of 10-20 tokens reads well at screenshot size.
    first_model = min(row["model"] for row in caches)
    shown = min((row for row in caches if row["model"] == first_model), key=lambda row: abs((row.get("n_tokens") or 0) - 16))
    cache = f"model={shown['model']}&prompt={shown['prompt_hash']}"
    figures = server.api.handle("/api/figures", "status=all&limit=500")["rows"]
    knit = next((r for r in figures if r["view"] == "knitting" and r["status"] == "ok"), None)
    odd = next((r for r in figures if r["status"] != "ok"), None)
    written = []
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(1400, 1000, profile)
        try:
            for view in views:
                name = {"grid": "viewer.png", "head": "single_head.png"}.get(view, f"{view}.png")
                if view == "grid":
                    driver.get(f"{server.url}#view=grid&{args.grid_filter}")
                    _ready(driver, ".card img", images=True)
                elif view == "head":
                    driver.get(f"{server.url}#view=head&{cache}&layer={layer}&head={head}&token=4")
                    canvas = WebDriverWait(driver, 20).until(
                        lambda d: d.find_element(By.CSS_SELECTOR, f"canvas.heatmap[data-layer='{layer}']"))
                    query = min(9, int(canvas.get_attribute("data-n")) - 1)
                    hover_cell(driver, canvas, q=query, k=query - 1)
                    time.sleep(0.2)
                elif view == "tokens":
                    driver.get(f"{server.url}#view=tokens&{cache}&value=resid_norm&layer={layer}")
                    _ready(driver, ".tv")
                elif view == "prompts":
                    driver.get(f"{server.url}#view=prompts")
                    _ready(driver, ".prompt-card")
                elif view == "knit" and knit:
                    driver.get(f"{server.url}#view=knit&model={knit['model']}&prompt={knit['prompt_hash']}&function={knit['function']}")
                    _ready(driver, ".chart-img", images=True)
                elif view == "figure" and odd:
                    driver.get(f"{server.url}#view=figure&model={odd['model']}&prompt={odd['prompt_hash']}&function={odd['function']}"
                               + "".join(f"&{k}={odd[k]}" for k in ("layer", "head") if odd[k] is not None))
                    _ready(driver, ".page[data-status]")
                else:
                    print(f"skipped {view}: nothing to show", file=sys.stderr)
                    continue
                driver.save_screenshot(str(out / name))
                written.append(str(out / name))
        finally:
            driver.quit()
            server.shutdown()
    print(f"wrote {', '.join(written)} ({summary['n_figures']} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
