"""Viewer speed on a large index: how fast a save path with N figure rows opens and pages.

    python -m scripts.bench.server [--rows 100000] [--browser]

Writes a synthetic index (rows in exactly the figures stage's shape, all pointing at one PNG) to a
temporary save path, starts the viewer on a free port and times, over real HTTP:
  - server start (reading the whole index),
  - opening the page: index.html + style.css + every ES module + /api/display + /api/summary + the
    first page of figures,
  - later pages, a deep page, a filtered and a text-searched query (first call and repeated),
  - following the index: the request after 1,000 rows are appended.
With --browser, also the time from navigation to the first figure cards in headless Chromium,
and to 20 pages loaded by scrolling. Target: the page opens in under 2 s.
"""

from __future__ import annotations

import http.client
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from lens_pipeline.server import STATIC_DIR, make_server
from lens_pipeline.store import index

from .common import command_parser, screenshots, timed

TARGET_OPEN_S = 2.0


def synthetic_index(save_path: Path, n_figures: int, png: bytes | None = None) -> list[dict[str, Any]]:
    """An index of `n_figures` figure rows (exactly the figures stage's row shape) over 2 x 50 cache
    rows, every figure pointing at one PNG (`png`, else a 64 x 64 one). Returns the figure rows."""
    if png is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (68, 1, 84)).save(buffer, format="PNG")
        png = buffer.getvalue()
    (save_path / "figures").mkdir(parents=True, exist_ok=True)
    (save_path / "figures" / "one.png").write_bytes(png)
    entry = {"path": "figures/one.png", "bytes": len(png), "sha256": index.sha256_bytes(png), "format": "png"}
    models, n_prompts, n_layers, n_heads = ("model-a", "model-b"), 50, 25, 40
    index.append_rows(save_path, [
        index.make_row("cache", model=m, prompt_hash=f"{m[-1]}{p:015d}", text=f"synthetic prompt {p} of {m}",
                       n_tokens=8, path=f"caches/{m}/{p}.zip") for m in models for p in range(n_prompts)])
    rows = []
    for i in range(n_figures):
        m, rest = divmod(i, n_prompts * n_layers * n_heads)
        p, rest = divmod(rest, n_layers * n_heads)
        layer, head = divmod(rest, n_heads)
        model = models[m % 2]
        rows.append(index.make_row(
            "figure", model=model, prompt_hash=f"{model[-1]}{p:015d}", function="attention_heatmap", scope="head",
            layer=layer, head=head, path=entry["path"], format="png", files=[entry], bytes=entry["bytes"],
            sha256=entry["sha256"], params={"cmap": "viridis"}, view="image"))
    index.append_rows(save_path, rows)
    return rows


class Client:
    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # keep-alive, like a browser

    def get(self, path: str) -> bytes:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status} {body[:200]!r}")
        return body


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("--rows", type=int, default=100_000, help="figure rows in the index (default: %(default)s)")
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        save_path = Path(tmp)
        results["write synthetic index (s)"], _ = timed(lambda: synthetic_index(save_path, args.rows))
        size_mb = index.index_path(save_path).stat().st_size / 1e6
        results["server start: read the whole index (s)"], server = timed(lambda: make_server(save_path, port=0))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        client = Client(server.server_address[1])

        def open_page() -> int:
            for path in ("/", "/static/style.css", *(f"/static/{m.name}" for m in sorted(STATIC_DIR.glob("*.js"))),
                         "/api/display", "/api/summary"):
                client.get(path)
            return json.loads(client.get("/api/figures?offset=0&limit=60"))["total"]

        results["open page: html+css+modules+display+summary+first page (s)"], total = timed(open_page)
        assert total == args.rows, total
        pages = [timed(lambda o=o: client.get(f"/api/figures?offset={o}&limit=60"))[0] for o in range(60, 60 * 21, 60)]
        results["next page, median of 20 (ms)"] = 1000 * statistics.median(pages)
        deep, filtered = f"/api/figures?offset={args.rows - 60}&limit=60", "/api/figures?model=model-b&layer=3&head=7"
        results["deep page offset=rows-60 (ms)"] = 1000 * timed(lambda: client.get(deep))[0]
        results["filter model+layer+head, first (ms)"] = 1000 * timed(lambda: client.get(filtered))[0]
        results["filter model+layer+head, repeated (ms)"] = 1000 * timed(lambda: client.get(filtered + "&offset=0"))[0]
        results["prompt text search, first (ms)"] = 1000 * timed(lambda: client.get("/api/figures?q=prompt+17+of"))[0]
        results["figure PNG (ms)"] = 1000 * timed(lambda: client.get("/files/figures/one.png"))[0]
        synthetic_more = [dict(json.loads(client.get("/api/figures?limit=1"))["rows"][0], kind="figure", layer=100 + i)
                          for i in range(1000)]
        index.append_rows(save_path, synthetic_more)
        results["first request after +1,000 appended rows (ms)"] = 1000 * timed(lambda: client.get("/api/summary"))[0]
        if args.browser:
            results.update(browser_timings(server.url))
        server.shutdown()

    print(f"viewer benchmark: {args.rows:,} figure rows, index.jsonl {size_mb:.0f} MB")
    for name, value in results.items():
        print(f"  {name:<50} {value:10.2f}")
    opened = results["open page: html+css+modules+display+summary+first page (s)"]
    verdict = "ok" if opened < TARGET_OPEN_S else "SLOWER THAN TARGET"
    print(f"page open over HTTP: {opened:.3f} s (target < {TARGET_OPEN_S} s): {verdict}")
    return 0 if opened < TARGET_OPEN_S else 1


def browser_timings(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = screenshots().chromium(1400, 1000, profile)  # the same headless Chromium
        try:
            driver.get("about:blank")
            start = time.perf_counter()
            driver.get(url)
            while not driver.execute_script("return document.querySelectorAll('.card img').length >= 12"):
                time.sleep(0.01)
            out["browser: navigation -> first cards (s)"] = time.perf_counter() - start
            start = time.perf_counter()
            while driver.execute_script("return document.querySelectorAll('.card').length") < 60 * 20:
                driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
                time.sleep(0.02)
            out["browser: scroll until 20 pages loaded (s)"] = time.perf_counter() - start
        finally:
            driver.quit()
    return out


if __name__ == "__main__":
    sys.exit(main())
