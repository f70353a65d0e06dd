"""What a newcomer sees right after the activations and figures stages, in a real headless Chromium:
no view writes a stray "null"; each empty corpus tab (Neurons, Compare prompts, Corpus PCA) shows
the commands that fill it, written by Python with this save path filled in, and running them does
fill it; a one-head picture is shown large with its tokens along its axes; the interactive head
opened from it uses the picture's colour scale.

These tests FAIL when Chromium is missing; set LENS_SKIP_BROWSER=1 to skip them explicitly.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import numpy as np
import pytest

from conftest import REPO
from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins.attention import first_shown
from lens_pipeline.figures import run_figures
from lens_pipeline.server import flags_for
from lens_pipeline.store import cache as cache_mod
from lens_pipeline.viewer import ViewerApi, next_steps
from viewer_data import (  # noqa: F401  (fixture driver)
    VIEWER_PROMPTS,
    browser_fixture,
    css,
    latest_rows,
    running_server,
    tiny_save_path,
    wait,
)

FIGURES = ["attention_heatmap", "attention_layer_grid", "knitting_pattern", "model_summary", "topk_heatmap"]
CORPUS_TABS = {"neurons": "Neurons", "phrasings": "Compare prompts", "pca": "Corpus PCA"}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny save path (activations with --logit-lens, no shared neuron basis, no groups) with a
    few figures drawn: what `make run` leaves, small."""
    save_path = tmp_path_factory.mktemp("newcomer") / "data"
    shutil.copytree(tiny_save_path(tmp_path_factory), save_path)
    summary = run_figures(save_path, figures=FIGURES, progress=False)
    assert summary.written and not summary.failed
    return save_path


@pytest.fixture(scope="module")
def server(drawn: Path) -> Iterator[Any]:
    with running_server(drawn) as running:
        yield running


def open_view(driver: Any, server: Any, params: dict[str, Any]) -> None:
    driver.get("about:blank")
    driver.get(server.url + "#" + urlencode(params))


def prompt_hash(save_path: Path, prompt_id: str = "capital") -> str:
    text = next(p["text"] for p in VIEWER_PROMPTS if p["id"] == prompt_id)
    return next(r["prompt_hash"] for r in latest_rows(save_path, "cache") if r["text"] == text[:200])


def heatmap_row(save_path: Path, prompt: str, layer: int = 1, head: int = 2) -> dict[str, Any]:
    return next(r for r in latest_rows(save_path, "figure") if r["function"] == "attention_heatmap"
                and r["prompt_hash"] == prompt and r["layer"] == layer and r["head"] == head)


# ----------------------------------------------------------------------------- 1. no stray "null"


def test_no_view_shows_the_word_null(driver, server, drawn: Path) -> None:
    api = ViewerApi(drawn, flags_for=flags_for)
    model = latest_rows(drawn, "cache")[0]["model"]
    prompt, other = prompt_hash(drawn), prompt_hash(drawn, "repeat")
    where = {"model": model, "prompt": prompt}
    knit = next(r for r in latest_rows(drawn, "figure") if r["function"] == "knitting_pattern" and r["prompt_hash"] == prompt)
    views: list[tuple[dict[str, Any], str]] = [
        ({"view": "grid"}, ".card"),
        ({"view": "prompts"}, ".prompt-card"),
        ({"view": "figure", **where, "function": "attention_heatmap", "layer": 1, "head": 2}, ".tg-key"),
        ({"view": "figure", "model": model, "function": "model_summary"}, "pre.figure-text[data-view]"),
        ({"view": "knit", **where, "function": "knitting_pattern"}, ".knit .files a"),
        ({"view": "head", **where, "layer": 1, "head": 0}, "canvas.heatmap[data-layer='1']"),
        ({"view": "overview", **where}, ".overview-cell canvas"),
        ({"view": "overview", **where, "layer": 0}, ".overview-cell canvas"),
        ({"view": "predictions", **where}, "table.predictions tbody tr"),
        ({"view": "compare", "across": "models", **where, "layer": 0, "head": 1}, ".panel"),
        ({"view": "compare", "across": "layers", **where, "function": "attention_heatmap", "head": 1}, ".panel img"),
        ({"view": "compare", "across": "prompts", "model": model, "prompts": f"{prompt},{other}", "layer": 0, "head": 0},
         ".panel canvas"),
        ({"view": "why", **where}, ".error-box"),  # made without explanations: it says so
        *[({"view": name}, ".next-steps li") for name in CORPUS_TABS],
    ]
    info = api.handle("/api/cache", urlencode(where))
    for kind in info["value_kinds"]:  # every value the tokens view offers, in every colour range
        if kind["reason"] or kind["by_neuron"]:
            continue
        for colour_range in [name for name, _ in kind["ranges"] or []] or [""]:
            views.append(({"view": "tokens", **where, "value": kind["name"], "range": colour_range}, ".legend-title"))
    views.append(({"view": "tokens", **where, "value": "neuron", "layer": 1}, ".legend-title"))
    assert knit and len(views) > 20
    for params, ready in views:
        open_view(driver, server, params)
        wait(driver, lambda d: css(d, f"main {ready}") and "Loading" not in css(d, "main")[0].text)
        if params["view"] == "tokens":
            wait(driver, lambda d: css(d, ".tv"))
        shown = driver.execute_script("return document.body.innerText + '\\n' + document.querySelector('main').textContent")
        assert not re.search(r"\bnull\b", shown, re.I), (params, [line for line in shown.splitlines() if "null" in line])


# ----------------------------------------------------------------------------- 2. empty corpus tabs


def shown_steps(driver: Any) -> list[str]:
    return [c.get_attribute("textContent") for c in css(driver, ".next-steps .command code")]


def test_each_empty_corpus_tab_shows_the_commands_that_fill_it(driver, server, drawn: Path) -> None:
    api = ViewerApi(drawn, flags_for=flags_for)
    cache = latest_rows(drawn, "cache")[0]
    with cache_mod.load(drawn / cache["path"]) as opened:
        prompts_file = opened.meta["prompt_source"].rsplit(":", 1)[0]
    assert cache["params"]["logit_lens"] and "neuron_basis" not in cache["params"]  # what `make run` makes
    for view in CORPUS_TABS:
        open_view(driver, server, {"view": "grid"})
        wait(driver, lambda d: css(d, f"nav.tabs a[data-tab='{view}']"))[0].click()
        wait(driver, lambda d: css(d, ".next-steps .command code"))
        answer = api.handle("/api/next_steps", f"view={view}")
        assert not answer["ready"] and answer["reason"] in css(driver, ".next-steps")[0].text
        commands = shown_steps(driver)
        assert commands == [step["command"] for step in answer["steps"] if step["command"]]  # Python's text, as is
        activations = next(c for c in commands if c.startswith("python -m lens_pipeline.activations"))
        words = shlex.split(activations)
        assert words[words.index("--save-path") + 1] == str(drawn) and words[words.index("--prompts") + 1] == prompts_file
        assert "--logit-lens" in words and words[words.index("--neuron-basis") + 1] == "variance"  # settings kept
        assert words[words.index("--model") + 1] == "tiny-llama" and "--random-weights" in words
        if view == "phrasings":
            assert "--force" in words and '"group"' in css(driver, ".next-steps pre.example")[0].text
        else:
            corpus = next(c for c in commands if c.startswith("python -m lens_pipeline.corpus"))
            assert corpus == f"python -m lens_pipeline.corpus --save-path {drawn}" + (" --pca" if view == "pca" else "")
        assert commands[-1] == f"python -m lens_pipeline.figures --save-path {drawn} --figures {next_steps.FIGURES[view]}"
        assert "optional" in css(driver, ".next-steps li")[-1].get_attribute("class")


def test_running_the_shown_commands_fills_the_neurons_and_pca_tabs(driver, drawn: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(drawn, copy)
    with running_server(copy) as server:
        open_view(driver, server, {"view": "pca"})
        wait(driver, lambda d: css(d, ".next-steps .command code"))
        steps = [c for c, li in zip(shown_steps(driver), css(driver, ".next-steps li:has(.command)"))
                 if "optional" not in (li.get_attribute("class") or "")]
        assert [s.split()[2] for s in steps] == ["lens_pipeline.activations", "lens_pipeline.corpus", "lens_pipeline.figures"]
        for step in steps:  # as pasted into a shell in the repository
            done = subprocess.run([sys.executable, *shlex.split(step)[1:]], cwd=REPO, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, (step, done.stderr[-2000:])
        open_view(driver, server, {"view": "neurons"})
        wait(driver, lambda d: css(d, "table.contexts tr.context"))
        open_view(driver, server, {"view": "pca"})
        wait(driver, lambda d: css(d, "svg.pca-plot circle"))
        # The figures were redrawn from the new caches.
        assert not ViewerApi(copy, flags_for=flags_for).handle("/api/summary", "")["n_stale"]


# ----------------------------------------------------------------------------- 3. the picture, large, with its tokens


def test_a_one_head_picture_is_shown_large_with_its_tokens(driver, server, drawn: Path) -> None:
    prompt = prompt_hash(drawn)
    row = heatmap_row(drawn, prompt)
    open_view(driver, server, {"view": "figure", "model": row["model"], "prompt": prompt, "function": "attention_heatmap",
                               "layer": 1, "head": 2})
    box = wait(driver, lambda d: [b for b in css(d, ".token-grid-figure") if b.get_attribute("data-zoom")])[0]
    image = css(box, "img.tg-image")[0]
    size = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height, r.top, "
                                 "arguments[0].naturalWidth, getComputedStyle(arguments[0]).imageRendering];", image)
    assert size[0] >= 400 and size[1] >= 400 and size[4] == "pixelated", size
    zoom = float(box.get_attribute("data-zoom"))
    assert size[0] == pytest.approx(size[3] * zoom)
    with cache_mod.load(drawn / row["cache_path"]) as cache:
        first = first_shown(cache.n_tokens, row["params"]["skip_first"])
        expected = [display.token_label(t) for t in cache.tokens[first:]]
    assert first == 1  # the picture leaves the first token out: so do its labels
    queries, keys = css(box, ".tg-query"), css(box, ".tg-key")
    assert [q.get_attribute("textContent") for q in queries] == expected
    assert [k.get_attribute("textContent") for k in keys] == expected
    # Each query label sits level with its row of cells.
    cell = driver.execute_script("return arguments[0].getBoundingClientRect().height", queries[0])
    centres = driver.execute_script("return arguments[0].map(q => { const r = q.getBoundingClientRect(); "
                                    "return r.top + r.height / 2; })", queries)
    assert all(abs(c - (size[2] + (i + 0.5) * cell)) <= 1 for i, c in enumerate(centres))


# ----------------------------------------------------------------------------- 4. the same colour scale


def test_the_interactive_head_opens_on_the_pictures_colour_scale(driver, server, drawn: Path) -> None:
    from selenium.webdriver.common.by import By

    prompt = prompt_hash(drawn)
    row = heatmap_row(drawn, prompt)
    assert row["params"]["scale"] == "sqrt" != display.facts()["scales"][0][0]  # the head view's own default is linear
    open_view(driver, server, {"view": "figure", "model": row["model"], "prompt": prompt, "function": "attention_heatmap",
                               "layer": 1, "head": 2})
    wait(driver, lambda d: d.find_elements(By.LINK_TEXT, "Interactive head"))[0].click()
    canvas = wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='1'][data-head='2']"))[0]
    assert css(driver, "main select[name='scale']")[0].get_attribute("value") == "sqrt"
    with cache_mod.load(drawn / row["cache_path"]) as cache:
        pattern, n = cache.pattern(1, 2), cache.n_tokens
    cells = [(q, k) for q in range(n) for k in range(q + 1)][::3]
    pixels = driver.execute_script(
        "const c = arguments[0], d = c.dataset, ctx = c.getContext('2d'), r = devicePixelRatio;"
        "return arguments[1].map(([q, k]) => Array.from(ctx.getImageData("
        "Math.floor((+d.originX + (k + 0.5) * +d.cell) * r), Math.floor((+d.originY + (q + 0.5) * +d.cell) * r), 1, 1)"
        ".data.slice(0, 3)));", canvas, cells)
    table = colormap.lut(colormap.ATTENTION_CMAP)
    bins = colormap.to_index(colormap.scaled(pattern, "sqrt"))  # the picture's own colours
    assert [tuple(p) for p in pixels] == [tuple(int(x) for x in table[bins[q, k]]) for q, k in cells]
    assert not np.array_equal(bins, colormap.to_index(pattern))  # a linear scale would have drawn other colours
