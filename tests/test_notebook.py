"""The notebook experience with real components: a real Jupyter kernel (nbclient + ipykernel) runs a
notebook that registers figures, runs the figures stage with 1 and 2 workers, redraws a redefined
function, displays figures and opens `lens_pipeline.notebook.show` views; the widget's front end in headless
Chromium, drawing from the values Python computed (viewer_data: the browser and a tiny save path)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lens_pipeline.draw.token_values import per_token_values
from lens_pipeline.store import cache as cache_mod
from viewer_data import (  # noqa: F401  (fixture driver)
    VIEWER_PROMPTS,
    XSS_IMG,
    browser_fixture,
    css,
    latest_rows,
    tiny_save_path,
    wait,
)

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# XML namespaces name, they do not fetch; anything else with a scheme would be a request out.
NAMESPACES = ("http://www.w3.org/",)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_save_path(tmp_path_factory)


def tiny_cache(save_path: Path, prompt_id: str = "capital") -> cache_mod.Cache:
    text = next(p["text"] for p in VIEWER_PROMPTS if p["id"] == prompt_id)
    row = next(r for r in latest_rows(save_path, "cache") if r["text"] == text[:200])
    return cache_mod.load(save_path / row["path"])


def f32(packed: dict[str, Any]) -> np.ndarray:
    """A float array as the widget state carries it (viewer.transport.pack)."""
    return np.frombuffer(base64.b64decode(packed["f32"]), dtype="<f4").reshape(packed["shape"])


# ----------------------------------------------------------------------------- a real kernel


def notebook_cells(save_path: Path) -> list[str]:
    heat = '''
        @register_figure(scope="head", formats="png")
        def nb_heat(cache, layer, head):
            """One head as grey pixels."""
            import PIL.Image
            return PIL.Image.fromarray((cache.pattern(layer, head) * {scale}).astype("uint8"))
        '''
    return [textwrap.dedent(cell).strip() for cell in [
        f'''
        from pathlib import Path
        from lens_pipeline.notebook import show
        from lens_pipeline.store.cache import load
        from lens_pipeline.figures import run_figures
        from lens_pipeline.draw.registry import register_figure
        SAVE = Path({str(save_path)!r})
        ''',
        heat.format(scale=255) + '''
        @register_figure(scope="prompt", formats="json")
        def nb_norms(cache):
            """Mean residual norm after each layer."""
            return {"norms": cache.resid_norms.mean(axis=1).tolist()}
        ''',
        'one = run_figures(SAVE, figures=["nb_heat"], workers=1, progress=False)\none',
        'two = run_figures(SAVE, figures=["nb_norms"], workers=2, progress=False)\nprint(two.written, two.skipped)',
        heat.format(scale=128),  # redefined: its code changed, so its figures are drawn again
        'again = run_figures(SAVE, figures=["nb_heat", "nb_norms"], workers=2, progress=False)\n'
        'print(again.written, again.skipped)',
        'shown = run_figures(SAVE, figures=["nb_heat", "nb_norms"], layers="1", heads="2", display=True, progress=False)',
        'cache = load(sorted((SAVE / "caches").rglob("*.zip"))[0])\ncache',
        'show.head(cache, 1, 2)',
        'show.tokens(cache, kind="resid_norm", layer=1)',
    ]]


def test_a_notebook_runs_figures_and_opens_views(tiny: Path, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    save_path = tmp_path / "data"
    shutil.copytree(tiny, save_path)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in notebook_cells(save_path)])
    started = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"notebook ran in {time.perf_counter() - started:.1f} s")
    outputs = [cell.outputs for cell in nb.cells]

    def text(i: int) -> str:  # what the cell printed, and its value as text
        return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs[i])

    n_prompts, heads = len(VIEWER_PROMPTS), 2 * 4  # tiny-llama: 2 layers x 4 heads
    assert f"{n_prompts * heads} written" in text(2)  # workers=1, in the kernel; the summary's short repr
    assert text(3).split() == [str(n_prompts), "0"]  # workers=2: forked workers run the notebook's function
    assert text(5).split() == [str(n_prompts * heads), str(n_prompts)]  # redefined: redrawn; the other is current
    rows = {(r["function"], r["prompt_hash"], r["layer"], r["head"]): r for r in latest_rows(save_path, "figure")}
    assert sum(f == "nb_heat" for f, *_ in rows) == n_prompts * heads and sum(f == "nb_norms" for f, *_ in rows) == n_prompts

    # display=True: the figures of the call, drawn before, shown with captions naming them.
    shown = outputs[6]
    images = [o for o in shown if "image/png" in o.get("data", {})]
    assert len(images) == n_prompts  # nb_heat L1 H2 of each prompt (nb_norms writes JSON: no picture)
    assert sum("nb_heat" in o.get("data", {}).get("text/html", "") for o in shown) == n_prompts

    # The Cache's rich repr, and the two widgets with their first answers in the widget state.
    assert "layers × heads" in outputs[7][0]["data"]["text/html"]
    widgets = nb.metadata["widgets"][WIDGET_STATE]["state"]
    views = [widgets[o["data"][WIDGET_MIME]["model_id"]]["state"] for i in (8, 9) for o in outputs[i] if WIDGET_MIME in o["data"]]
    assert [v["params"]["view"] for v in views] == ["head", "tokens"]
    head, tokens = views
    assert head["_model_module"] == "anywidget" and "lensViewer" in head["_esm"]
    with cache_mod.load(sorted((save_path / "caches").rglob("*.zip"))[0]) as cache:
        pattern = next(a["body"] for k, a in head["answers"].items() if json.loads(k)[0] == "pattern")
        assert (f32(pattern["values"]) == cache.pattern(1, 2)).all()
        norms = next(a["body"] for k, a in tokens["answers"].items() if json.loads(k)[0] == "tokens")
        assert (f32(norms["values"]) == cache.resid_norms[1]).all()

    # Nothing in the outputs or the widget state points outside the package: no CDN, no http(s).
    everything = json.dumps([outputs, nb.metadata["widgets"]])
    urls = [u for u in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"'<>)]*", everything) if not u.startswith(NAMESPACES)]
    assert urls == []


# ----------------------------------------------------------------------------- the widget in Chromium


def open_widget(driver: Any, widget: Any, kernel: dict[str, Any], tmp_path: Path) -> Any:
    """The widget rendered as a notebook front end renders it (scripts/screenshots.widget_page);
    returns its shadow root once drawn."""
    from screenshots import widget_page

    page = tmp_path / f"widget-{widget.params['view']}.html"
    page.write_text(widget_page(widget, kernel), encoding="utf-8")
    driver.get(page.as_uri())
    ready = wait(driver, lambda d: d.execute_script("return window.__ready"))
    print(f"{widget.params['view']} widget drawn {ready:.0f} ms after navigation start")
    return css(driver, "#widget")[0].shadow_root


def kernel_replies(widget: Any, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """What the kernel would answer (the widget's own handler computes it)."""
    from lens_pipeline.viewer.transport import answer_key, ask

    where = widget.params["model"], widget.params["prompt"]
    full = [(path, {"model": where[0], "prompt": where[1], **params}) for path, params in requests]
    return {answer_key(path, params): ask(widget.api, path, params) for path, params in full}


def test_widget_front_end_shows_the_cached_values(driver, tiny: Path, tmp_path: Path) -> None:
    from screenshots import hover_cell

    from lens_pipeline.notebook import show

    cache = tiny_cache(tiny, "xss")
    widget = show.head(cache, 1, 2)
    every_head = [("pattern", {"layer": la, "head": h}) for la in range(cache.n_layers) for h in range(cache.n_heads)]
    root = open_widget(driver, widget, kernel_replies(widget, every_head), tmp_path)
    canvas = wait(driver, lambda d: css(root, "canvas.heatmap[data-layer='1'][data-head='2']")[0])
    for q, k in ((5, 3), (cache.n_tokens - 1, 0)):
        hover_cell(driver, canvas, q, k)
        tip = wait(driver, lambda d: [t for t in css(root, "#tooltip .tip") if t.get_attribute("data-q") == str(q)
                                      and t.get_attribute("data-k") == str(k)][0])
        assert float(css(tip, "[data-field='weight']")[0].get_attribute("data-value")) == float(cache.pattern(1, 2)[q, k])
    assert driver.execute_script("return window.__sent") == []  # the first view came from the widget state
    # The prompt is text, never markup.
    assert XSS_IMG in css(root, ".prompt-text")[0].text
    assert driver.execute_script("return window.__dialogs") == [] and not css(root, "img")

    # Another head: asked of the kernel by message, drawn from its answer.
    css(root, ".nav-cell[data-layer='0'][data-head='3']")[0].click()
    canvas = wait(driver, lambda d: css(root, "canvas.heatmap[data-layer='0'][data-head='3']")[0])
    assert [m["path"] for m in driver.execute_script("return window.__sent")] == ["pattern"]
    hover_cell(driver, canvas, 4, 4)
    tip = wait(driver, lambda d: [t for t in css(root, "#tooltip .tip") if t.get_attribute("data-q") == "4"][0])
    assert float(css(tip, "[data-field='weight']")[0].get_attribute("data-value")) == float(cache.pattern(0, 3)[4, 4])
    assert driver.execute_script("return location.hash") == ""  # the notebook page's address is left alone

    # Layers x heads: click a head to open it; the back button returns.
    widget = show.overview(cache)
    root = open_widget(driver, widget, {}, tmp_path)
    wait(driver, lambda d: len(css(root, ".overview-cell canvas.heatmap")) == cache.n_layers * cache.n_heads)
    css(root, ".overview-cell[data-layer='1'][data-head='3'] canvas")[0].click()
    wait(driver, lambda d: css(root, "canvas.heatmap[data-layer='1'][data-head='3']:not(.small)"))
    css(root, ".widget-back")[0].click()
    wait(driver, lambda d: css(root, ".overview-cell"))

    # Tokens coloured by a value, and next-token predictions.
    widget = show.tokens(cache, kind="neuron", layer=1)
    root = open_widget(driver, widget, {}, tmp_path)
    spans = wait(driver, lambda d: (s := css(root, ".tv")) and len(s) == cache.n_tokens and s)
    expected = per_token_values(cache, "neuron", 1, int(cache.neuron_ids[1][0])).values
    assert [float(s.get_attribute("data-value")) for s in spans] == expected.astype(np.float64).tolist()
    widget = show.predictions(cache)
    root = open_widget(driver, widget, {}, tmp_path)
    rows = wait(driver, lambda d: (r := css(root, "table.predictions tbody tr")) and len(r) == cache.n_tokens and r)
    probs = [float(c.get_attribute("data-prob")) for c in css(rows[3], "td.pred")]
    assert probs == cache.topk_probs[3].astype(np.float64).tolist()
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_show_refuses_what_the_cache_cannot_give(tiny: Path) -> None:
    from lens_pipeline.notebook import show

    cache = tiny_cache(tiny)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        show.head(cache, 9, 0)
    with pytest.raises(ValueError, match="unknown value kind"):
        show.tokens(cache, kind="nope")
    with pytest.raises(ValueError, match="neuron 99999 is not offered; the neurons stored for layer 0"):
        show.tokens(cache, kind="neuron", layer=0, neuron=99999)
    assert "&lt;img src=x" in tiny_cache(tiny, "xss")._repr_html_()  # the prompt in the repr is escaped text


def test_every_module_bundles_and_unsupported_forms_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lens_pipeline.viewer import bundle

    script = bundle.bundle("app")
    for path in bundle.STATIC_DIR.glob("*.js"):
        if path.stem not in ("main", "widget", "exported"):  # entries: each imports app.js
            assert f"// ---- static/{path.name}" in script, path.name
    (tmp_path / "bad.js").write_text('import * as util from "./util.js";\n', encoding="utf-8")
    (tmp_path / "live.js").write_text("export let count = 0;\n", encoding="utf-8")
    monkeypatch.setattr(bundle, "STATIC_DIR", tmp_path)
    for name, words in (("bad", "bad.js:1: only `import"), ("live", "live.js:1: only `export")):
        with pytest.raises(bundle.BundleError, match=re.escape(words)):
            bundle.bundle.__wrapped__(name)
