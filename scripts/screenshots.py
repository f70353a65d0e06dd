"""Screenshots of the viewer for the docs: docs/viewer.png (figure grid) and docs/single_head.png,
docs/notebook_head.png (the notebook widget, `show.head`), and on request the other views
(--views grid,head,widget,tokens,prompts,knit,figure,overview,predictions).

    python scripts/screenshots.py --save-path attn_data [--out docs] [--head 3,5] [--views grid,head,widget]

Starts the viewer on a free port in this process and drives the system Chromium headless
(Debian `chromium` + `chromium-driver`; pip `selenium`). The widget is shown as a notebook front
end would show it: its ES module loaded from a blob, rendered with a stand-in for the kernel's
model (`widget_page`, which the widget's browser test uses too).
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
from lens_pipeline.viewer.transport import script_json

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium(width: int, height: int, profile: str, log_network: bool = False, flags: tuple[str, ...] = ()) -> webdriver.Chrome:
    """Headless system Chromium; `log_network` records requests and console messages (the tests read them);
    `flags`: more command-line switches (e.g. --enable-unsafe-swiftshader: software WebGL for 3-D figures)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                 "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
                 "--force-device-scale-factor=1", *flags):
        options.add_argument(flag)
    if log_network:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def figure_browser(width: int, height: int, profile: str) -> webdriver.Chrome:
    """`chromium` for figure pages opened from file://: software WebGL (3-D figures), the network off."""
    driver = chromium(width, height, profile, flags=("--enable-unsafe-swiftshader",))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                "downloadThroughput": -1, "uploadThroughput": -1})
    return driver


def wait_figure_drawn(driver: webdriver.Chrome, timeout: float = 60) -> None:
    """Until the figure page marks itself drawn (`.lens-figure` with data-ready="1")."""
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "const f = document.querySelector('.lens-figure'); return f && f.dataset.ready === '1';"))


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


# A page that renders an anywidget widget as JupyterLab does (its ES module imported from a blob URL,
# `render({model, el})`), with a stand-in model: `get` reads the widget state, `send` answers from a
# table of kernel replies computed in Python (viewer.transport.ask). window.__ready: milliseconds
# from navigation start until the view has drawn; window.__sent: the messages sent to the "kernel".
WIDGET_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lens_pipeline widget</title></head>
<body style="margin:0;padding:18px 22px;background:#fff;font:13px system-ui,sans-serif">
<pre style="margin:0 0 8px;padding:8px 10px;background:#f5f5f5;border:1px solid #e0e0e0;border-radius:4px;font:13px monospace"
  >[CODE]</pre>
<div id="widget"></div>
<script type="application/json" id="esm">[ESM]</script>
<script type="application/json" id="state">[STATE]</script>
<script type="application/json" id="kernel">[KERNEL]</script>
<script type="module">
const read = (id) => JSON.parse(document.getElementById(id).textContent);
const state = read("state"), kernel = read("kernel"), handlers = {};
const key = (path, params) => JSON.stringify([path, Object.entries(params).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))]);
window.__sent = [];
const model = {
  get: (name) => state[name],
  on: (event, f) => { (handlers[event] = handlers[event] || []).push(f); },
  off: (event, f) => { handlers[event] = (handlers[event] || []).filter((g) => g !== f); },
  send(content) {
    window.__sent.push(content);
    const reply = kernel[key(content.path, content.params)] || { error: "not in this test's kernel table", status: 404 };
    const answer = Object.assign({ type: "answer", id: content.id }, reply);
    setTimeout(() => (handlers["msg:custom"] || []).forEach((f) => f(answer)), 0);
  },
};
const host = document.getElementById("widget");
const url = URL.createObjectURL(new Blob([read("esm")], { type: "text/javascript" }));
const widget = (await import(url)).default;
widget.render({ model, el: host });
const drawn = "canvas.heatmap[data-layer], .tv, table.predictions tbody tr, .error-box";
const tick = () => (host.shadowRoot.querySelector(drawn) ? (window.__ready = performance.now()) : requestAnimationFrame(tick));
tick();
</script>
</body></html>
"""


def widget_page(widget: Any, kernel: dict[str, dict[str, Any]] | None = None, code: str = "") -> str:
    """The HTML page of WIDGET_PAGE for a lens_pipeline.notebook.show widget; `kernel`: answer_key -> reply."""
    import html
    import re

    state = {"params": widget.params, "answers": widget.answers, "routes": widget.routes}
    parts = {"CODE": html.escape(code or repr(widget)), "ESM": script_json(widget._esm), "STATE": script_json(state),
             "KERNEL": script_json(kernel or {})}
    return re.sub(r"\[(CODE|ESM|STATE|KERNEL)\]", lambda match: parts[match.group(1)], WIDGET_PAGE)


def _ready(driver: webdriver.Chrome, selector: str, images: bool = False) -> None:
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, selector))
    if images:
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('img')].slice(0, 12).every(i => i.complete)"))
    time.sleep(0.2)


def _widget_head(driver: webdriver.Chrome, cache_path: Path, layer: int, head: int, folder: Path) -> None:
    """`show.head(cache, layer, head)` as a notebook shows it, a cell hovered."""
    from lens_pipeline.notebook import show
    from lens_pipeline.store.cache import load

    widget = show.head(load(cache_path), layer, head, token=4)
    page = folder / "widget.html"
    page.write_text(widget_page(widget, code=f"show.head(cache, {layer}, {head})"), encoding="utf-8")
    driver.set_window_size(1100, 1100)  # about a notebook's width; tall enough for the whole widget
    driver.get(page.as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return window.__ready"))
    root = driver.find_element(By.ID, "widget").shadow_root
    canvas = root.find_element(By.CSS_SELECTOR, "canvas.heatmap")
    query = min(9, int(canvas.get_attribute("data-n")) - 1)
    hover_cell(driver, canvas, q=query, k=query - 1)
    time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-path", required=True, help="a save path with caches and figures")
    parser.add_argument("--out", default="docs", help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--head", default="16,0", help="LAYER,HEAD for the single-head view (default: %(default)s)")
    parser.add_argument("--grid-filter", default="function=attention_heatmap&layer=3",
                        help="hash parameters for the grid screenshot (default: %(default)s)")
    parser.add_argument("--views", default="grid,head,widget",
                        help="which views: grid, head, widget (show.head in a notebook), tokens, prompts, knit, overview, "
                        "predictions, why (a cache made with --logit-attribution), "
                        "figure (the first figure that is not drawn and current: stale, failed or skipped) "
                        "(default: %(default)s)")
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
    explained = max((r for r in caches if (r.get("params") or {}).get("logit_attribution")),
                    key=lambda row: row.get("n_tokens") or 0, default=None)
    written = []
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(1400, 1000, profile)
        try:
            for view in views:
                name = {"grid": "viewer.png", "head": "single_head.png", "widget": "notebook_head.png"}.get(view, f"{view}.png")
                if view == "grid":
                    driver.get(f"{server.url}#view=grid&{args.grid_filter}")
                    _ready(driver, ".card img", images=True)
                elif view == "head":
                    driver.set_window_size(1400, 1080)  # the whole heatmap without scrolling
                    driver.get(f"{server.url}#view=head&{cache}&layer={layer}&head={head}&token=4")
                    canvas = WebDriverWait(driver, 20).until(
                        lambda d: d.find_element(By.CSS_SELECTOR, f"canvas.heatmap[data-layer='{layer}']"))
                    query = min(9, int(canvas.get_attribute("data-n")) - 1)
                    hover_cell(driver, canvas, q=query, k=query - 1)
                    time.sleep(0.2)
                elif view == "widget":
                    _widget_head(driver, Path(args.save_path) / shown["path"], layer, head, Path(profile))
                elif view in ("overview", "predictions"):
                    driver.get(f"{server.url}#view={view}&{cache}")
                    _ready(driver, ".overview-cell canvas" if view == "overview" else "td.pred")
                elif view == "why" and explained:
                    driver.set_window_size(1400, 1500)
                    where = f"model={explained['model']}&prompt={explained['prompt_hash']}"
                    driver.get(f"{server.url}#view=why&{where}")  # the last position the cache explains
                    _ready(driver, ".why-grid")
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
                driver.set_window_size(1400, 1000)
        finally:
            driver.quit()
            server.shutdown()
    print(f"wrote {', '.join(written)} ({summary['n_figures']} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
