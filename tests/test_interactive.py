"""Interactive (Plotly) figures and the 3-D architecture view, for real: the figures stage writes
their pages from tiny-llama random-weight caches (and SmolLM2's, marked slow); headless Chromium
(software WebGL) opens them from file:// with the network off, in the viewer (its CSP, a sandboxed
frame) and in a static export; a real mouse hover and the figure's own data equal the cache; a click
on a head opens its head view; no page names a URL outside the save path; a real Jupyter kernel
shows them inline with Plotly's script once.

These tests FAIL when Chromium is missing; set LENS_SKIP_BROWSER=1 to skip them explicitly.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from lens_pipeline.capture import model_card
from lens_pipeline.draw import interactive
from lens_pipeline.draw.builtins.attention_stats import prompt_statistics
from lens_pipeline.figures import run_figures
from lens_pipeline.server import FILE_CSP, INTERACTIVE_CSP
from lens_pipeline.store import cache as cache_mod
from viewer_data import VIEWER_PROMPTS, css, latest_rows, running_server, tiny_save_path, wait

FIGURES = ["interactive_*", "architecture_3d"]
PAGES = ("interactive_attention", "interactive_layer", "interactive_neurons", "interactive_layer_stats", "architecture_3d")
URL = re.compile(r"(?:[a-z][a-z0-9+.-]*:)?//[\w.-][^\s\"'<>)]*", re.I)  # a scheme URL or a protocol-relative one
NAMESPACES = ("http://www.w3.org/",)  # XML namespaces name, they do not fetch


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny save path with every interactive figure drawn (and token_values: an HTML
    figure that is not interactive)."""
    save_path = tmp_path_factory.mktemp("interactive") / "data"
    shutil.copytree(tiny_save_path(tmp_path_factory), save_path)
    summary = run_figures(save_path, figures=[*FIGURES, "token_values"], progress=False)
    assert summary.written and not summary.failed, [r.get("error") for r in summary.rows if r["status"] == "error"][:3]
    return save_path


@pytest.fixture(scope="module", name="driver")
def webgl_browser() -> Iterator[Any]:
    """Headless Chromium recording requests and console messages, with software WebGL for the 3-D view."""
    from viewer_data import _require_browser

    _require_browser()
    from screenshots import chromium  # scripts/ is on sys.path (conftest)

    with tempfile.TemporaryDirectory() as profile:
        browser = chromium(1300, 1000, profile, log_network=True, flags=("--enable-unsafe-swiftshader",))
        try:
            yield browser
        finally:
            browser.quit()


def prompt_hash(save_path: Path, prompt_id: str = "capital") -> str:
    text = next(p["text"] for p in VIEWER_PROMPTS if p["id"] == prompt_id)
    return next(r["prompt_hash"] for r in latest_rows(save_path, "cache") if r["text"] == text[:200])


def figure_row(save_path: Path, function: str, prompt: str, layer: int | None = None, head: int | None = None) -> dict:
    return next(r for r in latest_rows(save_path, "figure") if r["function"] == function and r["prompt_hash"] == prompt
                and r["layer"] == layer and r["head"] == head and r["status"] == "ok")


def open_cache(save_path: Path, row: dict[str, Any]) -> cache_mod.Cache:
    return cache_mod.load(save_path / row["cache_path"])


# ----------------------------------------------------------------------------- the browser


def offline(driver: Any, on: bool) -> None:
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": on, "latency": 0, "downloadThroughput": -1,
                                                                "uploadThroughput": -1})


def fresh_logs(driver: Any) -> None:
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get_log("performance")


def problems(driver: Any) -> list[str]:
    """Console errors (a favicon the sandboxed page may not load aside)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]


def requested(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def drawn_figure(driver: Any, timeout: float = 30) -> Any:
    """The page's Plotly figure, once drawn."""
    return wait(driver, lambda d: [f for f in css(d, ".lens-figure") if f.get_attribute("data-ready") == "1"][0], timeout)


def framed_figure(driver: Any, timeout: float = 30) -> Any:
    """Into the viewer's interactive frame, once its figure is drawn (a re-render may replace the frame)."""
    def ready(d: Any) -> Any:
        d.switch_to.default_content()
        d.switch_to.frame(css(d, "iframe.figure-interactive")[0])
        return [f for f in css(d, ".lens-figure") if f.get_attribute("data-ready") == "1"][0]

    return wait(driver, ready, timeout)


def open_page(driver: Any, url: str) -> tuple[Any, float]:
    """Load a page and wait until its figure is drawn: (the figure element, seconds)."""
    fresh_logs(driver)
    started = time.perf_counter()
    driver.get(url)
    figure = drawn_figure(driver)
    return figure, time.perf_counter() - started


def hover_cell(driver: Any, figure: Any, q: int, k: int, axes: tuple[str, str] = ("xaxis", "yaxis")) -> str:
    """Move the real mouse onto heatmap cell (query q, key k) and return the hover label's text."""
    from selenium.webdriver.common.action_chains import ActionChains

    dx, dy, width, height = driver.execute_script(
        "const gd = arguments[0], xa = gd._fullLayout[arguments[3]], ya = gd._fullLayout[arguments[4]];"
        "const r = gd.getBoundingClientRect();"
        "return [xa._offset + xa.l2p(arguments[2]), ya._offset + ya.l2p(arguments[1]), r.width, r.height];",
        figure, q, k, *axes)
    ActionChains(driver).move_to_element_with_offset(figure, int(dx - width / 2), int(dy - height / 2)).perform()
    return wait(driver, lambda d: d.execute_script(
        "const t = arguments[0].querySelector('.hoverlayer .hovertext'); return t ? t.textContent : null;", figure))


def hovered_number(text: str, name: str) -> float:
    return float(re.search(rf"{name} (-?[0-9.]+(?:e[-+]?[0-9]+)?)", text).group(1))


def click_point(driver: Any, figure: Any, trace: int, point: int) -> None:
    """What Plotly emits when a point is clicked (the 3-D scene picks points in WebGL, which a
    test cannot aim at): the page's own handler then runs."""
    driver.execute_script(
        "const gd = arguments[0], t = gd._fullData[arguments[1]];"
        "gd.emit('plotly_click', {points: [{curveNumber: arguments[1], pointNumber: arguments[2],"
        " customdata: t.customdata[arguments[2]], data: t}]});", figure, trace, point)


# ----------------------------------------------------------------------------- files


def test_pages_load_the_one_copy_of_plotly_and_name_no_outside_url(drawn: Path) -> None:
    rows = [r for r in latest_rows(drawn, "figure") if r["function"] in PAGES]
    n_prompts = len(VIEWER_PROMPTS)
    assert {r["function"] for r in rows} == set(PAGES) and len(rows) == n_prompts * (2 * 4 + 2 + 3)  # 2 layers x 4 heads
    assert {r["view"] for r in rows} == {"interactive"} and {r["status"] for r in rows} == {"ok"}
    plotly_js = interactive.plotly_js_path().read_bytes()
    copies = sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*.js"))
    assert copies == sorted(interactive.asset_paths())  # one copy of each script per save path
    plotly_copy = next(p for p in copies if "plotly-" in p)
    assert (drawn / plotly_copy).read_bytes() == plotly_js
    for row in rows:  # recorded with the bytes and sha256 of the files there
        assert [a["path"] for a in row["assets"]] == interactive.asset_paths()
        for asset in row["assets"]:
            data = (drawn / asset["path"]).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (asset["bytes"], asset["sha256"])
    for page in drawn.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert [u for u in URL.findall(text) if not u.startswith(NAMESPACES)] == [], page
        for src in re.findall(r'<script[^>]*\bsrc="([^"]+)"', text):
            target = (page.parent / src).resolve()
            assert target.is_relative_to(drawn.resolve()) and target.is_file(), (page, src)
        if "lens-figure-data" in text:  # no inline script on an interactive page: the viewer's CSP allows none
            assert re.findall(r"<script(?![^>]*\b(?:src=|type=\"application/json\"))", text) == [], page
    assert URL.findall(interactive.PAGE_JS.read_text(encoding="utf-8")) == []


def test_a_missing_or_damaged_plotly_copy_is_written_again(drawn: Path, tmp_path: Path) -> None:
    save_path = tmp_path / "data"
    shutil.copytree(drawn, save_path)
    plotly_copy = save_path / interactive.asset_paths()[0]
    for damage in (lambda: plotly_copy.unlink(), lambda: plotly_copy.write_bytes(plotly_copy.read_bytes()[:1000])):
        damage()
        summary = run_figures(save_path, figures=["interactive_layer_stats"], progress=False)
        assert summary.written == len(VIEWER_PROMPTS) and not summary.failed  # the pages need it: redrawn
        assert plotly_copy.read_bytes() == interactive.plotly_js_path().read_bytes()
    again = run_figures(save_path, figures=["interactive_layer_stats"], progress=False)
    assert again.written == 0 and again.skipped == len(VIEWER_PROMPTS)


# ----------------------------------------------------------------------------- from file://


def test_pages_open_from_file_offline_and_hover_shows_the_cache(driver, drawn: Path) -> None:
    prompt = prompt_hash(drawn)
    offline(driver, True)
    try:
        timings = {}
        head = figure_row(drawn, "interactive_attention", prompt, 1, 2)
        figure, timings["interactive_attention"] = open_page(driver, (drawn / head["path"]).as_uri())
        with open_cache(drawn, head) as cache:
            pattern, n = cache.pattern(1, 2), cache.n_tokens
            z = np.array(driver.execute_script(
                "return Array.from(arguments[0]._fullData[0].z, (row) => Array.from(row, (v) => v === null ? NaN : v));",
                figure), dtype=np.float64)
            below = np.tril(np.ones((n, n), dtype=bool))  # causal: the future keys are gaps
            assert (z[below] == pattern[below]).all() and np.isnan(z[~below]).all()
            q, k = n - 1, 1
            text = hover_cell(driver, figure, q, k)
            assert f"query {q}: " in text and f"key {k}: " in text
            assert hovered_number(text, "weight") == pytest.approx(float(pattern[q, k]), rel=1e-6, abs=1e-9)
        assert problems(driver) == []

        for function in ("interactive_layer", "interactive_neurons", "interactive_layer_stats"):
            row = figure_row(drawn, function, prompt, 0 if function == "interactive_layer" else None)
            figure, timings[function] = open_page(driver, (drawn / row["path"]).as_uri())
            assert problems(driver) == [], function
            if function == "interactive_neurons":  # every stored activation, as cached (float16 -> float32)
                z = driver.execute_script("return Array.from(arguments[0]._fullData[0].z, (row) => Array.from(row));", figure)
                with open_cache(drawn, row) as cache:
                    assert np.array_equal(np.array(z, dtype=np.float32), cache.neuron_acts.reshape(len(z), -1))
        stats_row = figure_row(drawn, "interactive_layer_stats", prompt)
        with open_cache(drawn, stats_row) as cache:
            entropy = prompt_statistics(cache)["entropy"]
        figure = drawn_figure(driver)
        text = hover_cell(driver, figure, 1, 3)  # layer 1, head 3 of the entropy panel
        assert "layer 1 head 3" in text and hovered_number(text, r"entropy \(nats\)") == pytest.approx(entropy[1, 3], rel=1e-6)

        row = figure_row(drawn, "architecture_3d", prompt)
        figure, timings["architecture_3d"] = open_page(driver, (drawn / row["path"]).as_uri())
        assert problems(driver) == []
        assert all(u.startswith("file://") for u in requested(driver) if not u.startswith(("data:", "blob:", "about:")))
        click_point(driver, figure, 0, 4 + 3)  # layer 1, head 3: nothing to open here, so the page names it
        picked = wait(driver, lambda d: css(d, ".lens-picked")[0].text)
        assert picked.startswith("L1 H3")
        print("load times from file:// (s):", {k: round(v, 2) for k, v in timings.items()})
    finally:
        offline(driver, False)


def test_the_3d_view_has_the_models_shape_and_the_cached_values(driver, drawn: Path) -> None:
    prompt = prompt_hash(drawn)
    row = figure_row(drawn, "architecture_3d", prompt)
    figure, _ = open_page(driver, (drawn / row["path"]).as_uri())
    heads = driver.execute_script(
        "const t = arguments[0]._fullData[0];"
        "return {n: t.z.length, layer: Array.from(t.z), color: Array.from(t.marker.color), hover: t.hovertext,"
        " x: Array.from(t.x)};", figure)
    neurons = driver.execute_script(
        "const t = arguments[0]._fullData[1]; return {n: t.z.length, hover: t.hovertext, x: Array.from(t.x)};", figure)
    with open_cache(drawn, row) as cache:
        stats = prompt_statistics(cache)
        assert heads["n"] == cache.n_layers * cache.n_heads
        assert heads["layer"] == [float(layer) for layer in range(cache.n_layers) for _ in range(cache.n_heads)]
        assert np.array_equal(np.array(heads["color"], dtype=np.float32), stats["entropy"].ravel().astype(np.float32))
        first = stats["first_token_share"].ravel()
        for i in (0, len(first) - 1):
            assert hovered_number(heads["hover"][i], "first-token share") == pytest.approx(first[i], rel=1e-6)
        acts, ids = cache.neuron_acts, cache.neuron_ids
        assert neurons["n"] == ids.size
        width = model_card.card_for(cache).architecture["d_mlp"]  # the model's MLP width, from its model card
        assert width > int(ids.max()) + 1  # (not the largest stored neuron index + 1)
        assert np.allclose(neurons["x"], ids.ravel() / width)
        peak = np.take_along_axis(acts, np.abs(acts).argmax(-1)[..., None], -1)[..., 0].ravel()
        for i in (0, ids.size - 1):
            assert hovered_number(neurons["hover"][i], "activation") == pytest.approx(float(peak[i]), rel=1e-6)


# ----------------------------------------------------------------------------- the viewer and the export


def test_the_viewer_frames_interactive_pages_and_a_click_opens_the_head(driver, drawn: Path) -> None:
    prompt = prompt_hash(drawn)
    with running_server(drawn) as server:
        page_row = figure_row(drawn, "architecture_3d", prompt)
        headers = lambda path: urllib.request.urlopen(server.url + "files/" + path).headers  # noqa: E731
        assert headers(page_row["path"])["Content-Security-Policy"] == INTERACTIVE_CSP
        assert headers(figure_row(drawn, "token_values", prompt)["files"][0]["path"])["Content-Security-Policy"] == FILE_CSP
        assert headers(interactive.asset_paths()[0])["Cross-Origin-Resource-Policy"] == "cross-origin"
        assert headers(page_row["path"])["Cross-Origin-Resource-Policy"] == "same-origin"

        head_row = figure_row(drawn, "interactive_attention", prompt, 1, 2)
        fresh_logs(driver)
        driver.get(server.url + f"#view=figure&model={head_row['model']}&prompt={prompt}&function=interactive_attention"
                                f"&layer=1&head=2")
        assert wait(driver, lambda d: css(d, "iframe.figure-interactive")[0]).get_attribute("sandbox") == "allow-scripts"
        try:
            figure = framed_figure(driver)
            assert driver.execute_script("return window.origin") == "null"  # not the viewer's origin
            with open_cache(drawn, head_row) as cache:
                text = hover_cell(driver, figure, 3, 2)
                assert hovered_number(text, "weight") == pytest.approx(float(cache.pattern(1, 2)[3, 2]), rel=1e-6, abs=1e-9)
        finally:
            driver.switch_to.default_content()

        driver.get(server.url + f"#view=figure&model={page_row['model']}&prompt={prompt}&function=architecture_3d")
        try:
            click_point(driver, framed_figure(driver), 0, 4 + 2)  # layer 1, head 2
        finally:
            driver.switch_to.default_content()
        wait(driver, lambda d: "view=head" in d.current_url)
        params = {k: v[0] for k, v in parse_qs(urlsplit(driver.current_url).fragment).items()}
        assert params == {"view": "head", "model": page_row["model"], "prompt": prompt, "layer": "1", "head": "2"}
        wait(driver, lambda d: css(d, "canvas.heatmap"))
        assert problems(driver) == []
        assert all(u.startswith(server.url) for u in requested(driver) if not u.startswith(("data:", "blob:", "about:")))


def test_the_static_export_carries_plotly_and_draws_offline(driver, drawn: Path, tmp_path: Path) -> None:
    from lens_pipeline.export import Selection, export_static

    prompt = prompt_hash(drawn)
    out = tmp_path / "export"
    export_static(drawn, out, Selection(prompts=(prompt,)))
    for asset in interactive.asset_paths():
        assert (out / "files" / asset).read_bytes() == (drawn / asset).read_bytes()
    row = figure_row(drawn, "interactive_layer_stats", prompt)  # no WebGL: the viewer test clicks the 3-D view
    offline(driver, True)
    try:
        fresh_logs(driver)
        driver.get((out / "index.html").as_uri() + f"#view=figure&model={row['model']}&prompt={prompt}"
                                                   "&function=interactive_layer_stats")
        try:
            figure = framed_figure(driver)
            # From file:// the frame may load file scripts (same-origin in its sandbox), yet each file is an
            # origin of its own: the figure cannot reach the page around it.
            assert driver.execute_script("try { return parent.document.title; } catch (e) { return e.name; }") == "SecurityError"
            with open_cache(drawn, row) as cache:
                text = hover_cell(driver, figure, 0, 1)
                assert hovered_number(text, r"entropy \(nats\)") == pytest.approx(prompt_statistics(cache)["entropy"][0, 1],
                                                                                rel=1e-6)
        finally:
            driver.switch_to.default_content()
        assert problems(driver) == []
    finally:
        offline(driver, False)


# ----------------------------------------------------------------------------- a notebook


def test_a_notebook_shows_them_inline_with_plotly_once(driver, drawn: Path, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    prompt = prompt_hash(drawn)
    code = (f"from lens_pipeline.figures import run_figures\n"
            f"run_figures({str(drawn)!r}, figures=['interactive_layer_stats', 'architecture_3d'], prompts=[{prompt!r}],"
            f" display=True, progress=False)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o["data"]["text/html"] for o in nb.cells[0].outputs if "text/html" in o.get("data", {})]
    pages = [h for h in shown if "lens-figure-data" in h]
    assert len(pages) == 2
    plotly_js = interactive.plotly_js_path().read_text(encoding="utf-8")
    marker = plotly_js[:200].replace("</script", "<\\/script")
    assert sum(marker in h for h in pages) == 1  # Plotly's script in the first output only
    for html_text in pages:
        own = html_text.replace(plotly_js.replace("</script", "<\\/script"), "")
        assert [u for u in URL.findall(own) if not u.startswith(NAMESPACES)] == []
    # The outputs as a notebook front end shows them, one after the other: both draw, offline.
    page = tmp_path / "outputs.html"
    page.write_text("<!doctype html><meta charset='utf-8'><body>" + "\n".join(shown) + "</body>", encoding="utf-8")
    offline(driver, True)
    try:
        fresh_logs(driver)
        driver.get(page.as_uri())
        wait(driver, lambda d: len([f for f in css(d, ".lens-figure") if f.get_attribute("data-ready") == "1"]) == 2, 40)
        assert problems(driver) == []
    finally:
        offline(driver, False)


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_3d_view_is_30_layers_by_9_heads_and_hovers_the_cache(driver, smollm2_run: Path, tmp_path: Path) -> None:
    save_path = tmp_path / "data"
    shutil.copytree(smollm2_run, save_path)
    prompt = max(latest_rows(save_path, "cache"), key=lambda r: r["n_tokens"])["prompt_hash"]
    summary = run_figures(save_path, figures=FIGURES, prompts=[prompt], layers="17", heads="6", progress=False,
                          params={"architecture_3d": {"color": "first_token"}})
    assert summary.written == len(PAGES) and not summary.failed
    row = figure_row(save_path, "architecture_3d", prompt)
    assert row["params"]["color"] == "first_token"
    offline(driver, True)
    try:
        figure, seconds = open_page(driver, (save_path / row["path"]).as_uri())
        color = driver.execute_script("return Array.from(arguments[0]._fullData[0].marker.color);", figure)
        with open_cache(save_path, row) as cache:
            assert (cache.n_layers, cache.n_heads) == (30, 9) and len(color) == 270
            first = prompt_statistics(cache)["first_token_share"]
            assert np.array_equal(np.array(color, dtype=np.float32), first.ravel().astype(np.float32))
        head = figure_row(save_path, "interactive_attention", prompt, 17, 6)
        figure, _ = open_page(driver, (save_path / head["path"]).as_uri())
        with open_cache(save_path, head) as cache:
            q = cache.n_tokens - 1
            text = hover_cell(driver, figure, q, 0)
            assert hovered_number(text, "weight") == pytest.approx(float(cache.pattern(17, 6)[q, 0]), rel=1e-6)
        assert problems(driver) == []
        print(f"SmolLM2 architecture_3d: {row['bytes']} bytes, drawn in {seconds:.2f} s from file://")
    finally:
        offline(driver, False)
