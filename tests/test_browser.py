"""The viewer in a real headless Chromium (Debian `chromium` + `chromium-driver`, driven by selenium).

These tests FAIL when Chromium is missing; set LENS_SKIP_BROWSER=1 to skip them explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.token_values import per_token_values
from lens_pipeline.store import cache as cache_mod
from viewer_data import (  # noqa: F401  (fixtures save_path, server, driver)
    MODELS,
    VIEWER_PROMPTS,
    XSS_IMG,
    XSS_SCRIPT,
    broken_copy,
    browser_fixture,
    cache_row,
    css,
    latest_rows,
    running_server,
    second_settings_copy,
    viewer_save_path_fixture,
    viewer_server_fixture,
    wait,
)


def open_view(driver: Any, server: Any, fragment: str) -> None:
    driver.get("about:blank")  # a full load each time: no state carried between views
    driver.get(server.url + fragment)


def hash_params(driver: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(driver.current_url).fragment).items()}


def choose(driver: Any, name: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(wait(driver, lambda d: css(d, f"main select[name='{name}']")[0])).select_by_value(value)
    wait(driver, lambda d: hash_params(d).get(name) == value)


def show_token(token: str) -> str:
    """What the page shows for a token: the server writes it (lens_pipeline.draw.display), the page only shows it."""
    return display.token_label(token)


def css_colour(driver: Any, element: Any, prop: str) -> str:
    """A computed CSS colour as '#rrggbb'."""
    value = driver.execute_script(f"return getComputedStyle(arguments[0]).{prop}", element)
    return "#%02x%02x%02x" % tuple(int(x) for x in value[value.index("(") + 1 : value.index(")")].split(",")[:3])


def hover_cell(driver: Any, q: int, k: int) -> Any:
    """Move the mouse onto heatmap cell (query q, key k) with the screenshot script's helper (one
    place for the canvas geometry); returns the tooltip element."""
    from screenshots import hover_cell as move_onto_cell  # scripts/ is on sys.path (conftest)

    move_onto_cell(driver, css(driver, "canvas.heatmap")[0], q, k)
    return wait(driver, lambda d: [t for t in css(d, "#tooltip .tip") if t.get_attribute("data-q") == str(q)
                                   and t.get_attribute("data-k") == str(k)][0])


def assert_no_injection(driver: Any) -> None:
    assert driver.execute_script("return window.__dialogs") == []
    assert driver.execute_script(
        "return document.querySelectorAll('main script, main img[src=\"x\"], [onerror], main b').length") == 0
    assert [s.get_attribute("src") for s in css(driver, "script")] == [driver.current_url.split("#")[0] + "static/main.js"]


# ----------------------------------------------------------------------------- browsing


def test_filters_narrow_the_grid_and_live_in_the_url(driver, server, save_path: Path) -> None:
    open_view(driver, server, "")
    wait(driver, lambda d: len(css(d, ".card")) >= 12)
    choose(driver, "model", MODELS[0])
    choose(driver, "function", "attention_heatmap")
    choose(driver, "layer", "1")
    choose(driver, "head", "2")
    expected = {r["prompt_hash"] for r in latest_rows(save_path, "figure") if r["model"] == MODELS[0]
                and r["function"] == "attention_heatmap" and r["layer"] == 1 and r["head"] == 2}
    assert len(expected) == len(VIEWER_PROMPTS)
    wait(driver, lambda d: css(d, ".count")[0].get_attribute("data-total") == str(len(expected)))
    cards = wait(driver, lambda d: (c := css(d, ".card")) and len(c) == len(expected) and c)
    assert {c.get_attribute("data-prompt") for c in cards} == expected
    assert {(c.get_attribute("data-model"), c.get_attribute("data-layer"), c.get_attribute("data-head")) for c in cards} \
        == {(MODELS[0], "1", "2")}
    # Every image is lazy and actually loads from the server.
    wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('.card img')]"
        ".every(i => i.loading === 'lazy' && i.complete && i.naturalWidth > 0)"))

    shared = driver.current_url  # the view, as a link someone else opens
    assert hash_params(driver) == {"view": "grid", "model": MODELS[0], "function": "attention_heatmap", "layer": "1", "head": "2"}
    open_view(driver, server, "#" + urlsplit(shared).fragment)
    wait(driver, lambda d: css(d, ".count")[0].get_attribute("data-total") == str(len(expected)))
    assert css(driver, "main select[name='model']")[0].get_attribute("value") == MODELS[0]
    assert css(driver, "main select[name='head']")[0].get_attribute("value") == "2"


def test_injection_prompts_render_as_text(driver, server, save_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    xss_text = next(p["text"] for p in VIEWER_PROMPTS if p["id"] == "xss")
    open_view(driver, server, "#view=grid&function=attention_layer_grid")
    search = wait(driver, lambda d: css(d, "main input[name='q']")[0])
    search.send_keys("onerror")
    wait(driver, lambda d: hash_params(d).get("q") == "onerror")
    cards = wait(driver, lambda d: (c := css(d, ".card")) and len(c) == 2 * 3 and c)  # 2 models x layers 0-2
    assert {c.get_attribute("data-model") for c in cards} == set(MODELS)
    for card in cards:
        shown = css(card, ".card-text")[0].get_attribute("textContent")
        assert shown == xss_text and XSS_SCRIPT in shown and XSS_IMG in shown
    assert css(driver, "main input[name='q']")[0].get_attribute("value") == "onerror"  # typing survives re-rendering
    assert_no_injection(driver)

    open_view(driver, server, "#view=prompts&q=script")
    texts = wait(driver, lambda d: (t := css(d, ".prompt-card .prompt-text")) and len(t) == 2 and t)
    assert all(t.text == xss_text for t in texts)  # visible, exactly as written
    row = cache_row(save_path, MODELS[0], "xss")
    open_view(driver, server, f"#view=head&model={MODELS[0]}&prompt={row['prompt_hash']}&layer=0&head=0")
    wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='0']"))
    assert css(driver, ".prompt-text")[0].text == xss_text
    chips = "".join(c.get_attribute("textContent") for c in css(driver, ".chip-token"))
    assert "<script>" in chips.replace("·", " ")
    assert_no_injection(driver)
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text


def test_single_head_shows_exact_cached_values(driver, server, save_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    row = cache_row(save_path, MODELS[0], "capital")
    open_view(driver, server, f"#view=grid&model={MODELS[0]}&function=attention_heatmap&layer=2&head=3&q=capital")
    wait(driver, lambda d: len(css(d, ".card")) == 1)
    css(driver, ".card")[0].click()
    wait(driver, lambda d: driver.find_elements(By.LINK_TEXT, "Interactive head"))[0].click()
    wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='2'][data-head='3']"))
    assert hash_params(driver)["view"] == "head"

    with cache_mod.load(save_path / row["path"]) as cache:
        pattern, tokens, n = cache.pattern(2, 3), cache.tokens, cache.n_tokens
        for q, k in [(n - 1, 0), (n - 1, n - 1), (7, 3), (4, 4)]:
            tip = hover_cell(driver, q, k)
            weight = css(tip, "[data-field='weight']")[0]
            assert float(weight.get_attribute("data-value")) == float(pattern[q, k])  # exact, not decoded from pixels
            assert abs(float(weight.text) - float(pattern[q, k])) <= 5e-6 * max(1.0, abs(float(pattern[q, k])))
            assert css(tip, "[data-field='query']")[0].get_attribute("textContent") == show_token(tokens[q])
            assert css(tip, "[data-field='key']")[0].get_attribute("textContent") == show_token(tokens[k])
        tip = hover_cell(driver, 1, 5)  # above the diagonal of a causal model
        assert float(css(tip, "[data-field='weight']")[0].get_attribute("data-value")) == 0.0 and "masked" in tip.text

        # Click a token: its row and column are highlighted, and its strongest links listed.
        css(driver, ".chip-token")[4].click()
        wait(driver, lambda d: hash_params(d).get("token") == "4")
        assert [c.get_attribute("data-index") for c in css(driver, ".chip-token.selected")] == ["4"]
        top_key = int(np.argmax(pattern[4]))
        first = css(driver, ".token-detail ol")[0].find_elements(By.TAG_NAME, "li")[0].text
        assert first.startswith(show_token(tokens[top_key])) and f"#{top_key} " in first

    # Keyboard: arrows move across heads and layers, j/k step through every head, Esc clears.
    keys = ActionChains(driver)
    for key, (layer, head) in [(Keys.ARROW_RIGHT, (2, 4)), (Keys.ARROW_DOWN, (3, 4)), (Keys.ARROW_UP, (2, 4)),
                               ("k", (2, 3)), ("j", (2, 4))]:
        keys.send_keys(key).perform()
        wait(driver, lambda d: css(d, f"canvas.heatmap[data-layer='{layer}'][data-head='{head}']"))
        assert (hash_params(driver)["layer"], hash_params(driver)["head"]) == (str(layer), str(head))
    open_view(driver, server, f"#view=head&model={MODELS[0]}&prompt={row['prompt_hash']}&layer=0&head=0&token=2")
    wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='0'][data-head='0']"))
    assert [c.get_attribute("data-index") for c in css(driver, ".chip-token.selected")] == ["2"]  # from the URL
    ActionChains(driver).send_keys("k").perform()  # wraps to the last head of the last layer
    wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='29'][data-head='8']"))
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    wait(driver, lambda d: not css(d, ".chip-token.selected"))


def test_token_values_come_from_the_cache(driver, server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[0], "repeat")
    open_view(driver, server, f"#view=tokens&model={MODELS[0]}&prompt={row['prompt_hash']}&value=resid_norm&layer=3")
    with cache_mod.load(save_path / row["path"]) as cache:
        spans = wait(driver, lambda d: (s := css(d, ".tv")) and len(s) == cache.n_tokens and s)
        assert [s.get_attribute("textContent") for s in spans] == [t or "∅" for t in cache.tokens]
        assert [s.get_attribute("textContent") for s in spans] == [display.token_inline(t) for t in cache.tokens]
        assert [float(s.get_attribute("data-value")) for s in spans] == cache.resid_norms[3].astype(np.float64).tolist()

        choose(driver, "value", "neuron")  # the layer stays; the first stored neuron of it is shown
        shown = int(wait(driver, lambda d: css(d, "main select[name='neuron']"))[0].get_attribute("value"))
        assert shown == int(cache.neuron_ids[3][0])
        spans = wait(driver, lambda d: (s := css(d, ".tv")) and len(s) == cache.n_tokens and s)
        assert [float(s.get_attribute("data-value")) for s in spans] == cache.neuron_acts[3, 0].astype(np.float64).tolist()

        choose(driver, "value", "logit_lens")
        wait(driver, lambda d: css(d, ".tv") and "logit lens" in css(d, ".legend-title")[0].text)
        from selenium.webdriver.common.action_chains import ActionChains

        span = css(driver, ".tv")[5]
        ActionChains(driver).move_to_element(span).perform()
        tip = wait(driver, lambda d: css(d, "#tooltip [data-field='value']")[0])
        lens_layer = int(hash_params(driver)["layer"])
        assert float(tip.get_attribute("data-value")) == float(cache.array("logit_lens_probs")[lens_layer, 5])
        assert show_token(str(cache.array("logit_lens_strs")[lens_layer, 5])) in css(driver, "#tooltip")[0].text


def test_overview_opens_a_head_and_predictions_are_the_cache(driver, server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[0], "capital")
    where = f"model={MODELS[0]}&prompt={row['prompt_hash']}"
    open_view(driver, server, f"#view=overview&{where}&layer=2")
    wait(driver, lambda d: len(css(d, ".overview-cell canvas.heatmap")) >= 4)
    css(driver, ".overview-cell[data-head='1'] canvas")[0].click()
    wait(driver, lambda d: [hash_params(d).get(k) for k in ("view", "layer", "head")] == ["head", "2", "1"])
    wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='2'][data-head='1']"))

    open_view(driver, server, f"#view=predictions&{where}")
    with cache_mod.load(save_path / row["path"]) as cache:
        rows = wait(driver, lambda d: (r := css(d, "table.predictions tbody tr")) and len(r) == cache.n_tokens and r)
        shown = [[float(c.get_attribute("data-prob")) for c in css(r, "td.pred")] for r in rows]
        assert shown == cache.topk_probs.astype(np.float64).tolist()
        hits = [next((int(c.get_attribute("data-rank")) - 1 for c in css(r, "td.pred.hit")), None) for r in rows]
        ids, tokens = cache.topk_ids, cache.token_ids
        assert hits == [next((j for j in range(ids.shape[1]) if i + 1 < len(tokens) and ids[i, j] == tokens[i + 1]), None)
                        for i in range(cache.n_tokens)]
    encoder = cache_row(save_path, MODELS[1], "capital")  # MiniLM: no trained LM head, so no predictions
    open_view(driver, server, f"#view=predictions&model={MODELS[1]}&prompt={encoder['prompt_hash']}")
    assert "LM head" in wait(driver, lambda d: css(d, ".error-box"))[0].text


def test_colours_on_the_page_are_the_colormap_tables(driver, server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[0], "capital")
    with cache_mod.load(save_path / row["path"]) as cache:
        # Tokens: background and text colour of each token, as lens_pipeline.draw.colormap gives them.
        open_view(driver, server, f"#view=tokens&model={MODELS[0]}&prompt={row['prompt_hash']}&value=top1_prob")
        spans = wait(driver, lambda d: (s := css(d, ".tv")) and len(s) == cache.n_tokens and s)
        expected = per_token_values(cache, "top1_prob").colors()
        assert [css_colour(driver, s, "backgroundColor") for s in spans] == expected
        assert [css_colour(driver, s, "color") for s in spans] == [colormap.text_color(c) for c in expected]
        value = float(cache.topk_probs[2, 0])  # one known value, through matplotlib's own viridis
        import matplotlib

        assert css_colour(driver, spans[2], "backgroundColor") == "#%02x%02x%02x" % tuple(
            matplotlib.colormaps["viridis"].resampled(256)(value, bytes=True)[:3])

        # The heatmap: each cell's pixel is the attention table's colour of its exact weight.
        open_view(driver, server, f"#view=head&model={MODELS[0]}&prompt={row['prompt_hash']}&layer=2&head=3")
        canvas = wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='2'][data-head='3']"))[0]
        pattern, n = cache.pattern(2, 3), cache.n_tokens
        cells = [(q, k) for q in range(n) for k in range(n)][:: 7] + [(0, 1)]
        pixels = driver.execute_script(
            "const c = arguments[0], d = c.dataset, ctx = c.getContext('2d'), r = devicePixelRatio;"
            "return arguments[1].map(([q, k]) => Array.from(ctx.getImageData("
            "Math.floor((+d.originX + (k + 0.5) * +d.cell) * r), Math.floor((+d.originY + (q + 0.5) * +d.cell) * r), 1, 1)"
            ".data.slice(0, 3)));",
            canvas, cells)
        table, bins = colormap.lut(colormap.ATTENTION_CMAP), colormap.to_index(pattern)
        for (q, k), pixel in zip(cells, pixels):
            want = colormap.MASKED_COLOR if k > q else "#%02x%02x%02x" % tuple(table[bins[q, k]])
            assert "#%02x%02x%02x" % tuple(pixel) == want, (q, k, float(pattern[q, k]))


@pytest.fixture(scope="module")
def settings_server(save_path: Path, tmp_path_factory: pytest.TempPathFactory):
    dest = tmp_path_factory.mktemp("settings_browser") / "data"
    made = second_settings_copy(save_path, dest)
    with running_server(dest) as server:
        yield made, server


def test_stale_failed_and_skipped_figures_are_shown_as_such(driver, settings_server) -> None:
    from selenium.webdriver.common.by import By

    made, server = settings_server
    old = made["old"]
    open_view(driver, server, f"#view=grid&model={old['model']}&prompt={old['prompt_hash']}")
    cards = wait(driver, lambda d: (c := css(d, ".card")) and len(c) == len(made["drawn_from_old"]) and c)
    for card in cards:
        assert card.get_attribute("data-status") == "stale"
        assert css(card, ".stale-badge")[0].text == "stale" and "another cache" in css(card, ".card-reason")[0].text
    cards[0].click()
    note = wait(driver, lambda d: css(d, ".stale-note"))[0]
    assert "Stale" in note.text and "another cache" in note.text

    failed = made["failed"]
    open_view(driver, server, f"#view=figure&model={failed['model']}&prompt={failed['prompt_hash']}&function=broken_figure")
    box = wait(driver, lambda d: css(d, ".error-box"))[0]
    assert "ValueError: boom" in box.text
    details = css(driver, "details.traceback")[0]
    trace = details.find_element(By.TAG_NAME, "pre")
    assert not trace.is_displayed()  # folded until asked for
    details.find_element(By.TAG_NAME, "summary").click()
    wait(driver, lambda d: trace.is_displayed())
    assert trace.get_attribute("textContent") == failed["traceback"]

    skipped = made["skipped"]
    open_view(driver, server, f"#view=grid&status=skipped&model={skipped['model']}")
    card = wait(driver, lambda d: [c for c in css(d, ".card") if c.get_attribute("data-function") == "needs_lens"])[0]
    assert "Skipped" in card.text and "needs the logit lens" in card.text
    open_view(driver, server, "#view=grid&status=error")
    card = wait(driver, lambda d: css(d, ".card[data-status='error']"))[0]
    assert "Figure failed" in card.text and "ValueError: boom" in card.text


def test_views_read_the_current_cache_and_show_its_settings(driver, settings_server) -> None:
    made, server = settings_server
    old, new = made["old"], made["new"]
    open_view(driver, server, f"#view=head&model={old['model']}&prompt={old['prompt_hash']}&layer=1&head=0")
    settings = wait(driver, lambda d: css(d, ".settings"))[0]
    assert settings.get_attribute("data-settings") == new["settings_id"]
    for shown in ("top-k 5", "logit lens off", "encoding q12 (max error 1.2e-04)"):
        assert shown in settings.text
    link = css(driver, ".other-settings a")[0]
    assert "top-k 10" in link.text
    link.click()
    wait(driver, lambda d: hash_params(d).get("settings") == old["settings_id"])
    wait(driver, lambda d: css(d, f".settings[data-settings='{old['settings_id']}']"))
    assert "not the current cache" in css(driver, ".settings")[0].text and "top-k 10" in css(driver, ".settings")[0].text

    open_view(driver, server, f"#view=tokens&model={old['model']}&prompt={old['prompt_hash']}&value=resid_norm&layer=2")
    spans = wait(driver, lambda d: css(d, ".tv"))
    with cache_mod.load(server.api.root / new["path"]) as cache:  # the current cache: its norms were doubled
        assert [float(s.get_attribute("data-value")) for s in spans] == cache.resid_norms[2].astype(np.float64).tolist()
    assert css(driver, ".settings")[0].get_attribute("data-settings") == new["settings_id"]
    options = {o.get_attribute("value"): o for o in css(driver, "main select[name='value'] option")}
    assert options["logit_lens"].get_attribute("disabled") is not None  # made without --logit-lens
    assert "logit lens" in css(driver, ".unavailable")[0].text


def test_knitting_view_shows_chart_pattern_and_downloads(driver, server, save_path: Path) -> None:
    knit = next(r for r in latest_rows(save_path, "figure") if r["function"] == "knitting_pattern" and r["model"] == MODELS[0])
    open_view(driver, server, f"#view=grid&function=knitting_pattern&model={MODELS[0]}")
    wait(driver, lambda d: len(css(d, ".card")) == len(VIEWER_PROMPTS))
    [card] = [c for c in css(driver, ".card") if c.get_attribute("data-prompt") == knit["prompt_hash"]]
    card.click()
    wait(driver, lambda d: hash_params(d).get("view") == "knit")
    wait(driver, lambda d: d.execute_script(
        "const i = document.querySelector('.chart-img'); return i && i.complete && i.naturalWidth > 0"))
    pattern_txt = next(f for f in knit["files"] if f["path"].endswith("pattern.txt"))
    expected_text = (save_path / pattern_txt["path"]).read_text(encoding="utf-8")
    wait(driver, lambda d: css(d, "pre.pattern")[0].get_attribute("textContent") == expected_text)
    links = css(driver, ".files a")
    base = server.url.rstrip("/")
    assert sorted(a.get_attribute("href") for a in links) == sorted(base + "/files/" + f["path"] for f in knit["files"])
    assert all(a.get_attribute("download") for a in links)
    statuses = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.querySelectorAll('.files a')].map(a => fetch(a.href).then(r => r.status))).then(done);")
    assert statuses == [200] * len(knit["files"])


def test_side_by_side_across_models_and_layers(driver, server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[0], "capital")
    open_view(driver, server, f"#view=compare&across=models&model={MODELS[0]}&prompt={row['prompt_hash']}&layer=1&head=2")
    panels = wait(driver, lambda d: (p := css(d, ".panel")) and len(p) == 2 and all(css(x, "canvas") for x in p) and p)
    assert [p.get_attribute("data-model") for p in panels] == list(MODELS)
    open_view(driver, server, f"#view=compare&across=layers&model={MODELS[0]}&prompt={row['prompt_hash']}"
                              "&function=attention_heatmap&head=2")
    panels = wait(driver, lambda d: (p := css(d, ".panel")) and len(p) == 3 and p)
    assert [p.get_attribute("data-layer") for p in panels] == ["0", "1", "2"]
    wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('.panel img')].every(i => i.complete && i.naturalWidth > 0)"))


def test_missing_and_corrupt_files_show_an_error(driver, save_path: Path, tmp_path: Path) -> None:
    broken = broken_copy(save_path, tmp_path / "broken")
    with running_server(tmp_path / "broken") as server:
        gone = broken["missing_figure"]
        open_view(driver, server, f"#view=grid&model={gone['model']}&function={gone['function']}&layer={gone['layer']}"
                                  f"&head={gone['head']}&prompt={gone['prompt_hash']}")
        wait(driver, lambda d: css(d, ".card .figure-missing") and "Image unavailable" in css(d, ".card")[0].text)
        for key, words in (("corrupt_cache", "corrupt"), ("missing_cache", "missing")):
            row = broken[key]
            open_view(driver, server, f"#view=head&model={row['model']}&prompt={row['prompt_hash']}&layer=0&head=0")
            box = wait(driver, lambda d: css(d, ".error-box"))[0]
            assert words in box.text and row["path"].rsplit("/", 1)[-1] in box.text


def test_no_request_leaves_127_0_0_1(driver, server, save_path: Path) -> None:
    driver.get_log("performance")  # drop what earlier tests left
    row = cache_row(save_path, MODELS[1], "xss")
    knit = next(r for r in latest_rows(save_path, "figure") if r["function"] == "knitting_pattern")
    for fragment, ready in [
        ("", ".card img"),
        (f"#view=head&model={MODELS[1]}&prompt={row['prompt_hash']}&layer=1&head=1", "canvas.heatmap[data-layer='1']"),
        (f"#view=tokens&model={MODELS[1]}&prompt={row['prompt_hash']}", ".tv"),
        (f"#view=knit&model={knit['model']}&prompt={knit['prompt_hash']}&function=knitting_pattern", ".chart-img"),
    ]:
        open_view(driver, server, fragment)
        wait(driver, lambda d: css(d, ready))
        entries = driver.execute_script("return performance.getEntries().map(e => e.name)")
        assert entries and all(name.startswith(server.url) for name in entries if "://" in name), entries
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    page_urls = [u for u in urls if u != "about:blank"]
    assert len(page_urls) >= 12  # the check saw real traffic
    outside = [u for u in page_urls if not u.startswith(server.url) and not u.startswith(("data:", "blob:"))]
    assert outside == []
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "127.0.0.1" not in e["message"]]
