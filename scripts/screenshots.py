"""Screenshots of the viewer for the docs: docs/viewer.png (figure grid) and docs/single_head.png.

    python scripts/screenshots.py --save-path attn_data [--out docs] [--head 3,5]

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


def chromium(width: int, height: int, profile: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-path", required=True, help="a save path with caches and figures")
    parser.add_argument("--out", default="docs", help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--head", default="16,0", help="LAYER,HEAD for the single-head view (default: %(default)s)")
    parser.add_argument("--grid-filter", default="function=attention_heatmap&layer=3",
                        help="hash parameters for the grid screenshot (default: %(default)s)")
    args = parser.parse_args(argv)
    layer, head = (int(x) for x in args.head.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    server = make_server(args.save_path, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    summary = server.api.handle("/api/summary", "")
    caches = [row for row in server.api.index.view().caches.values() if row.get("status") == "ok"]
    if not caches:
        print(f"error: {args.save_path} has no caches", file=sys.stderr)
        return 2
    # A prompt of 10-20 tokens reads well at screenshot size.
    first_model = min(row["model"] for row in caches)
    shown = min((row for row in caches if row["model"] == first_model), key=lambda row: abs((row.get("n_tokens") or 0) - 16))
    model, prompt = shown["model"], shown["prompt_hash"]
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(1400, 1000, profile)
        try:
            wait = WebDriverWait(driver, 20)
            driver.get(f"{server.url}#view=grid&{args.grid_filter}")
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card img")) >= 8)
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('.card img')].slice(0, 12).every(i => i.complete)"))
            driver.save_screenshot(str(out / "viewer.png"))

            driver.get(f"{server.url}#view=head&model={model}&prompt={prompt}&layer={layer}&head={head}&token=4")
            canvas = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"canvas.heatmap[data-layer='{layer}']"))
            query = min(9, int(canvas.get_attribute("data-n")) - 1)
            hover_cell(driver, canvas, q=query, k=query - 1)
            time.sleep(0.2)
            driver.save_screenshot(str(out / "single_head.png"))
        finally:
            driver.quit()
            server.shutdown()
    print(f"wrote {out / 'viewer.png'} and {out / 'single_head.png'} ({summary['n_figures']} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
