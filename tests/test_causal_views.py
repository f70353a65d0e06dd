"""Testing causes, drawn and shown: the figures of activation patching, ablation and attribution
patching from the command line, the viewer's `cause` API against the cache's own arrays, the cause
view in headless Chromium (reached from the why view), the static export holding it, and
`show.cause`.

Caches of an IOI pair (a corrupted text) and a causal-tracing pair (noise on the subject), made by
the activations command with every patching site, both ablations, attribution patching and the
direct logit attribution, on tiny-llama with seeded random weights (every heads × positions sweep
of SmolLM2 takes minutes); the model's head roles come with them, one head's induction score
raised in the file so that a head has a role to be named by.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, python_cmd, write_jsonl
from lens_pipeline.draw import canvas, colormap
from lens_pipeline.draw.builtins import causal
from lens_pipeline.notebook import show
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache
from lens_pipeline.store.head_roles import head_label, roles_beside
from lens_pipeline.viewer import ViewerApi
from lens_pipeline.viewer.params import ApiError
from viewer_data import browser_fixture, css, running_server, wait  # noqa: F401  (fixture driver)

pytestmark = pytest.mark.slow

IOI = {"id": "ioi", "text": "When Mary and John went to the store, John gave a drink to",
       "corrupt": "When Mary and John went to the store, Mary gave a drink to", "contrast": [" Mary", " John"]}
INDUCTION = {"id": "tracing", "text": "The Eiffel Tower is in the city of", "target": " Paris",
             "corrupt": {"noise": [1, 4], "scale": 3.0, "seed": 0}}
PLAIN = {"id": "plain", "text": "The capital of France is"}  # no corruption: the figures skip it
FIGURES = ["patching_sites", "patching_heads", "patching_heads_positions", "ablation_heads", "ablation_mlp",
           "attribution_patching_scatter"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1")
MODEL = ("--model", "tiny-llama", "--random-weights")
ROLE_HEAD = (1, 2)  # given an induction score of 0.83 in the head roles file
ROLE_LABEL = "L1H2 · induction 0.83"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(python_cmd(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def save_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("causal_views")
    prompts = write_jsonl(root / "causal.jsonl", [IOI, INDUCTION])
    save = root / "save"
    run("-m", "lens_pipeline.activations", *MODEL, "--prompts", str(prompts), "--save-path", str(save),
        "--patch", "resid_pre,attn_out,mlp_out,heads,heads_pos", "--ablate", "heads,mlp", "--attribution-patching",
        "--logit-attribution", "--quiet")
    plain = write_jsonl(root / "plain.jsonl", [PLAIN])
    run("-m", "lens_pipeline.activations", *MODEL, "--prompts", str(plain), "--save-path", str(save), "--quiet")
    (roles_file,) = (save / "caches").glob("*/head_roles.json")
    roles = json.loads(roles_file.read_text(encoding="utf-8"))
    roles["scores"]["induction"][ROLE_HEAD[0]][ROLE_HEAD[1]] = 0.83
    roles_file.write_text(json.dumps(roles), encoding="utf-8")
    return save


def cache_row(save_path: Path, prompt: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in index.latest(index.read_rows(save_path)).values()
                if r["kind"] == "cache" and r["text"] == prompt["text"])


def open_cache(save_path: Path, prompt: dict[str, Any]) -> Cache:
    return Cache(save_path / cache_row(save_path, prompt)["path"])


def ask(save_path: Path, route: str, prompt: dict[str, Any], **params: Any) -> dict[str, Any]:
    row = cache_row(save_path, prompt)
    query = "&".join(f"{k}={v}" for k, v in {"model": row["model"], "prompt": row["prompt_hash"], **params}.items())
    return ViewerApi(save_path).handle(f"/api/{route}", query)


def f64(array: np.ndarray) -> list[Any]:
    return np.asarray(array, dtype=np.float64).tolist()


# --------------------------------------------------------------------------- the figures


def test_the_figures_from_the_cli_draw_the_cache_arrays(save_path: Path) -> None:
    run("-m", "lens_pipeline.figures", "--save-path", str(save_path), "--figures", ",".join(FIGURES), "--quiet")
    rows = [r for r in index.latest(index.read_rows(save_path)).values() if r["kind"] == "figure"]
    ioi, plain = cache_row(save_path, IOI), cache_row(save_path, PLAIN)
    for name in FIGURES:
        for prompt in (IOI, INDUCTION):
            key = cache_row(save_path, prompt)["prompt_hash"]
            (row,) = [r for r in rows if r["function"] == name and r["prompt_hash"] == key]
            assert row["status"] == "ok", (name, prompt["id"], row.get("reason") or row.get("error"))
            image = Image.open(save_path / row["path"])
            assert image.mode == "P" and image.width <= canvas.MAX_WIDTH
        (skipped,) = [r for r in rows if r["function"] == name and r["prompt_hash"] == plain["prompt_hash"]]
        assert skipped["status"] == "skipped" and ("--patch" in skipped["reason"] or "--ablate" in skipped["reason"]), skipped
    assert ioi["prompt_hash"] != plain["prompt_hash"]

    cache = open_cache(save_path, IOI)
    # The heads grid: each cell the diverging colour of patch_heads, on (-s, s) with s >= 1 (1 = clean).
    values = cache.array("patch_heads")
    picture = causal.patching_heads_canvas(cache)
    grid = picture.grids[0]
    assert (grid.rows, grid.cols) == values.shape
    scale = causal.patch_scale(values)
    rgb = np.asarray(picture.finish().convert("RGB")).astype(int)
    expected = colormap.lut(colormap.SIGNED_CMAP)[colormap.to_index(values, -scale, scale)].astype(int)
    for layer, head in [(0, 0), *causal.top_heads(values, 3), (cache.n_layers - 1, cache.n_heads - 1)]:
        x, y = grid.center(layer, head)
        assert np.abs(rgb[y + 1, x + 1] - expected[layer, head]).max() <= 12  # a palette PNG: within a level
    # One panel per stream site, layers x positions; every label at least FONT_PX.
    sites = causal.patching_sites_canvas(cache)
    assert [(g.rows, g.cols) for g in sites.grids] == [(cache.n_layers, cache.n_tokens)] * 3
    assert min(sites.sizes) >= canvas.FONT_PX
    # The scatter's r is the capture's recorded correlation.
    recorded = cache.meta["cause"]["attribution_patching_correlation"]
    for site in causal.scatter_sites(cache):
        r = causal.pearson(cache.array(f"patch_{site}"), cache.array(f"attrpatch_{site}"))
        assert r == pytest.approx(recorded[site], abs=1e-3), site


def test_the_figures_say_what_was_patched_into_what(save_path: Path) -> None:
    cache = open_cache(save_path, IOI)
    facts = causal.causal_of(cache)
    assert facts is not None and facts.metric == "logit_diff" and "Mary" in facts.metric_label
    changed = causal.changed_positions(cache, facts)
    assert [cache.tokens[i] for i in changed] == [" John"] and [facts.corrupt_tokens[i] for i in changed] == [" Mary"]
    assert "John” → “" in causal.corruption_text(cache, facts) and "(position 10)" in causal.corruption_text(cache, facts)
    noised = open_cache(save_path, INDUCTION)
    noise = causal.causal_of(noised)
    assert causal.changed_positions(noised, noise) == [1, 2, 3] and noise.has_corrupt
    assert "noise" in causal.corruption_text(noised, noise) and "positions 1–3" in causal.corruption_text(noised, noise)


# --------------------------------------------------------------------------- the API


def test_the_api_answers_are_the_cache_arrays(save_path: Path) -> None:
    cache = open_cache(save_path, IOI)
    answer = ask(save_path, "cause", IOI)
    meta = cache.meta["cause"]
    assert (answer["clean"], answer["corrupt"], answer["target_position"]) == (meta["clean"], meta["corrupt"],
                                                                                meta["target_position"])
    assert [s["site"] for s in answer["sites"]] == ["resid_pre", "attn_out", "mlp_out"]
    for site in answer["sites"]:
        values = cache.array(site["array"])
        assert site["values"] == f64(values)
        scale = causal.patch_scale(np.concatenate([cache.array(f"patch_{s}").ravel() for s in causal.STREAM_SITES]))
        assert site["colors"] == colormap.hex_colors(values.ravel(), colormap.SIGNED_CMAP, -scale, scale)
    assert answer["heads"]["patch"]["values"] == f64(cache.array("patch_heads"))
    assert answer["heads"]["ablate"]["values"] == f64(cache.array("ablate_heads"))
    assert answer["mlp"]["values"] == f64(cache.array("ablate_mlp"))
    roles = roles_beside(cache.path)
    assert roles is not None, "the activations stage writes the model's head roles"
    assert answer["heads"]["labels"][ROLE_HEAD[0] * cache.n_heads + ROLE_HEAD[1]] == ROLE_LABEL
    assert answer["heads"]["labels"][0] == "L0H0"

    layer, head = answer["heads"]["top"][0]["layer"], answer["heads"]["top"][0]["head"]
    card = ask(save_path, "cause_head", IOI, layer=layer, head=head)
    assert card["label"] == head_label(roles, layer, head)
    assert card["patch"]["value"] == float(cache.array("patch_heads")[layer, head])
    assert card["ablate"]["value"] == float(cache.array("ablate_heads")[layer, head])
    assert card["attrpatch"]["value"] == float(cache.array("attrpatch_heads")[layer, head])
    assert card["patch_positions"]["values"] == f64(cache.array("patch_heads_pos")[layer, head])
    g = cache.array("target_positions").tolist().index(meta["target_position"])
    assert card["dla"]["value"] == float(cache.array("logit_attr_heads")[g, layer, head])
    assert {r["name"]: r["value"] for r in card["roles"]} == {
        name: roles["scores"][name][layer][head] for name in roles["scores"] if roles["scores"][name] is not None}
    # The why view names heads the same way and says the cache tests causes.
    why = ask(save_path, "why", IOI)
    assert why["tests_causes"] is True
    assert why["logit"]["labels"] == answer["heads"]["labels"]
    assert [t["label"] for t in why["logit"]["top_heads"]] == [head_label(roles, t["layer"], t["head"])
                                                                for t in why["logit"]["top_heads"]]
    assert ask(save_path, "cause_head", IOI, layer=ROLE_HEAD[0], head=ROLE_HEAD[1])["label"] == ROLE_LABEL

    with pytest.raises(ApiError, match="tests no causes"):
        ask(save_path, "cause", PLAIN)
    with pytest.raises(ApiError, match="out of range"):
        ask(save_path, "cause_head", IOI, layer=cache.n_layers, head=0)


# --------------------------------------------------------------------------- the page


def test_the_cause_view_shows_the_heads_numbers_reached_from_why(driver: Any, save_path: Path) -> None:
    cache = open_cache(save_path, IOI)
    row = cache_row(save_path, IOI)
    g = cache.array("target_positions").tolist().index(cache.meta["cause"]["target_position"])
    with running_server(save_path) as server:
        driver.get("about:blank")
        driver.get(f"{server.url}#view=why&model={row['model']}&prompt={row['prompt_hash']}")
        cells = wait(driver, lambda d: (c := css(d, ".why-grid a.why-cell")) and len(c) == cache.n_layers * cache.n_heads and c)
        layer, head = ROLE_HEAD
        cells[layer * cache.n_heads + head].click()  # a DLA cell opens that head's causes
        card = wait(driver, lambda d: css(d, f".cause-head[data-layer='{layer}'][data-head='{head}']"))[0]

        def field(name: str) -> float:
            return float(css(card, f"tr[data-field='{name}'] .cause-value")[0].get_attribute("data-value"))

        assert field("dla") == float(cache.array("logit_attr_heads")[g, layer, head])
        assert field("patch") == float(cache.array("patch_heads")[layer, head])
        assert field("ablate") == float(cache.array("ablate_heads")[layer, head])
        assert css(card, "h2")[0].text == ROLE_LABEL
        assert float(css(card, "tr[data-role='induction'] .cause-value")[0].get_attribute("data-value")) == 0.83
        per_position = [float(s.get_attribute("data-value")) for s in css(card, ".cause-positions .tv")]
        assert per_position == f64(cache.array("patch_heads_pos")[layer, head])
        # The site heatmaps: every cell the cache's value.
        resid = [float(c.get_attribute("data-value")) for c in css(driver, ".cause-site[data-site='resid_pre'] .cause-cell")]
        assert resid == f64(cache.array("patch_resid_pre").ravel())
        # Another head from the patching grid.
        css(driver, "[data-grid='patch_heads'] a.cause-cell[data-layer='0'][data-head='1']")[0].click()
        wait(driver, lambda d: css(d, ".cause-head[data-layer='0'][data-head='1']"))
        assert driver.execute_script("return window.__dialogs") == []
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_the_export_holds_the_cause_view(driver: Any, save_path: Path, tmp_path: Path) -> None:
    cache = open_cache(save_path, IOI)
    row = cache_row(save_path, IOI)
    out = tmp_path / "site"
    done = run("-m", "lens_pipeline.export", "--save-path", str(save_path), "--out", str(out),
               "--prompts", row["prompt_hash"][:8], "--figures", "patching_*")
    assert done.stdout.startswith("exported 1 prompt(s)")
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    try:
        layer, head = cache.n_layers - 1, cache.n_heads - 1
        driver.get("about:blank")
        driver.get((out / "index.html").as_uri() + f"#view=cause&model={row['model']}&prompt={row['prompt_hash']}"
                   f"&layer={layer}&head={head}")
        card = wait(driver, lambda d: css(d, f".cause-head[data-layer='{layer}'][data-head='{head}']"))[0]
        value = css(card, "tr[data-field='patch'] .cause-value")[0].get_attribute("data-value")
        assert float(value) == float(np.float32(cache.array("patch_heads")[layer, head]))
        # The why view is there too, and its cells lead back here.
        driver.get("about:blank")
        driver.get((out / "index.html").as_uri() + f"#view=why&model={row['model']}&prompt={row['prompt_hash']}")
        wait(driver, lambda d: css(d, ".why-grid a.why-cell"))[0].click()
        wait(driver, lambda d: css(d, ".cause-head[data-layer='0'][data-head='0']"))
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                               {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})


# --------------------------------------------------------------------------- the notebook


def test_show_cause_returns_a_widget_with_the_heads_answers(save_path: Path) -> None:
    cache = open_cache(save_path, IOI)
    widget = show.cause(cache, 1, 3)
    assert widget.params["view"] == "cause" and (widget.params["layer"], widget.params["head"]) == (1, 3)
    cards = {key: a["body"] for key, a in widget.answers.items() if key.startswith('["cause_head"')}
    assert len(cards) == cache.n_layers * cache.n_heads  # every head's card travels with the notebook
    first = next(body for key, body in cards.items() if '["head","3"]' in key and '["layer","1"]' in key)
    assert first["patch"]["value"] == float(cache.array("patch_heads")[1, 3])
    packed = first["patch_positions"]["values"]
    assert np.frombuffer(base64.b64decode(packed["f32"]), "<f4").tolist() == cache.array("patch_heads_pos")[1, 3].tolist()
    assert show.cause(cache).params["view"] == "cause"
    with pytest.raises(ValueError, match="tests no causes"):
        show.cause(open_cache(save_path, PLAIN))
    with pytest.raises(ValueError, match="out of range"):
        show.cause(cache, cache.n_layers, 0)
