"""The viewer's HTTP API over real save paths: exact values, filters, paging, safety, live index."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench_server import synthetic_index  # scripts/ is on sys.path (conftest): one synthetic index for bench and tests
from PIL import Image

from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.builtins import tokens as token_figures
from lens_pipeline.draw.token_values import VALUE_KINDS, per_token_values
from lens_pipeline.server import STATIC_DIR
from lens_pipeline.store import cache as cache_mod
from lens_pipeline.store import index
from viewer_data import (  # noqa: F401  (fixtures save_path, server)
    MODELS,
    XSS_IMG,
    XSS_SCRIPT,
    broken_copy,
    cache_row,
    latest_rows,
    running_server,
    second_settings_copy,
    viewer_save_path_fixture,
    viewer_server_fixture,
)

REPO = Path(__file__).resolve().parents[1]


def get(server: Any, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A raw request: the path goes on the wire exactly as given (no client-side normalising)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", (headers or {}).pop("Host", f"127.0.0.1:{port}"))
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get_json(server: Any, path: str) -> tuple[int, Any]:
    status, headers, body = get(server, path)
    assert headers["content-type"].startswith("application/json"), (path, headers)
    return status, json.loads(body)


def ok_json(server: Any, path: str) -> Any:
    status, payload = get_json(server, path)
    assert status == 200, (path, payload)
    return payload


# ----------------------------------------------------------------------------- exact values


def test_pattern_is_the_exact_cached_float32(server, save_path: Path) -> None:
    for model in MODELS:
        row = cache_row(save_path, model, "xss")
        with cache_mod.load(save_path / row["path"]) as cache:
            for layer, head in [(0, 0), (2, 3), (cache.n_layers - 1, cache.n_heads - 1)]:
                payload = ok_json(server, f"/api/pattern?model={model}&prompt={row['prompt_hash']}&layer={layer}&head={head}")
                expected = cache.pattern(layer, head)
                got = np.array(payload["values"], dtype=np.float64)
                assert got.shape == expected.shape == (cache.n_tokens, cache.n_tokens)
                # Exact: every float32 survives JSON unchanged (compare in float64, no tolerance).
                assert np.array_equal(got, expected.astype(np.float64))
                assert np.array_equal(got.astype(np.float32), expected)
                assert payload["tokens"] == cache.tokens
                assert payload["causal"] == cache.causal


def test_cache_info_and_token_values(server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[0], "capital")
    query = f"model={MODELS[0]}&prompt={row['prompt_hash']}"
    info = ok_json(server, f"/api/cache?{query}")
    with cache_mod.load(save_path / row["path"]) as cache:
        assert info["tokens"] == cache.tokens and info["n_layers"] == cache.n_layers == 30
        assert info["has_logit_lens"] and info["neuron_ids"] == cache.neuron_ids.tolist()
        # The same prompt cached by the other model, for side-by-side views.
        other = cache_row(save_path, MODELS[1], "capital")["prompt_hash"]
        assert info["same_text"] == [{"model": MODELS[1], "prompt_hash": other}]

        norms = ok_json(server, f"/api/tokens?{query}&value=resid_norm&layer=4")
        assert norms["values"] == cache.resid_norms[4].astype(np.float64).tolist()
        top1 = ok_json(server, f"/api/tokens?{query}&value=top1_prob")
        assert top1["values"] == cache.topk_probs[:, 0].astype(np.float64).tolist()
        assert top1["labels"] == [str(s) for s in cache.topk_strs[:, 0]]
        lens = ok_json(server, f"/api/tokens?{query}&value=logit_lens&layer=29")
        assert lens["values"] == cache.array("logit_lens_probs")[29].astype(np.float64).tolist()
        neuron = int(cache.neuron_ids[7][3])
        acts = ok_json(server, f"/api/tokens?{query}&value=neuron&layer=7&neuron={neuron}")
        assert acts["values"] == cache.neuron_acts[7, 3].astype(np.float64).tolist()


def test_predictions_and_a_notebooks_one_cache_api_answer_as_the_viewer(server, save_path: Path) -> None:
    from lens_pipeline.viewer import CacheApi

    row = cache_row(save_path, MODELS[0], "capital")
    query = f"model={MODELS[0]}&prompt={row['prompt_hash']}"
    with cache_mod.load(save_path / row["path"]) as cache:
        predictions = ok_json(server, f"/api/predictions?{query}")
        assert predictions["top_probs"] == cache.topk_probs.astype(np.float64).tolist()
        assert predictions["top_tokens"][2] == [display.token_label(str(s)) for s in cache.topk_strs[2]]
        assert predictions["colors"][2] == colormap.hex_colors(cache.topk_probs[2], colormap.ATTENTION_CMAP, 0.0, 1.0)
        ids, tokens = cache.topk_ids, cache.token_ids
        assert predictions["next_rank"][:-1] == [next((j for j in range(ids.shape[1]) if ids[i, j] == tokens[i + 1]), None)
                                                 for i in range(cache.n_tokens - 1)]
        assert predictions["next_rank"][-1] is None and predictions["shown_next"][-1] is None
        # A notebook widget's API over the one open cache: the same answers, with no index.
        one = CacheApi(cache)
        neuron = f"value=neuron&layer=1&neuron={cache.neuron_ids[1][0]}"
        for path, asked in (("/api/pattern", f"{query}&layer=2&head=3"), ("/api/tokens", f"{query}&{neuron}"),
                            ("/api/predictions", query)):
            assert one.handle(path, asked) == ok_json(server, f"{path}?{asked}"), path
        info, served = json.loads(json.dumps(one.handle("/api/cache", query))), ok_json(server, f"/api/cache?{query}")
        assert {k: v for k, v in info.items() if k not in ("same_text", "created")} == \
            {k: v for k, v in served.items() if k not in ("same_text", "created")}
    encoder = cache_row(save_path, MODELS[1], "capital")
    status, body = get_json(server, f"/api/predictions?model={MODELS[1]}&prompt={encoder['prompt_hash']}")
    assert status == 400 and "LM head" in body["error"]


# ----------------------------------------------------------------------------- display facts, defined in Python


def test_display_facts_are_the_python_tables(server) -> None:
    facts = ok_json(server, "/api/display")
    for name in (colormap.ATTENTION_CMAP, colormap.SIGNED_CMAP):
        assert facts["colormaps"][name] == colormap.lut(name).tolist()  # all 256 entries, exactly
    assert facts["attention"]["cmap"] == colormap.ATTENTION_CMAP
    assert "#%02x%02x%02x" % tuple(facts["masked"]) == colormap.MASKED_COLOR
    assert [k["name"] for k in facts["value_kinds"]] == list(VALUE_KINDS)
    assert {k["name"]: k["cmap"] for k in facts["value_kinds"]} == {k.name: k.cmap for k in VALUE_KINDS.values()}
    assert [name for name, _ in facts["figure_statuses"]] == list(display.FIGURE_STATUSES)


def test_scripts_hold_no_colour_tables_formulas_or_file_names() -> None:
    scripts = {path.name: path.read_text(encoding="utf-8") for path in STATIC_DIR.glob("*.js")}
    assert {"app.js", "util.js", "data.js", "heatmap.js", "grid.js", "head.js", "tokens.js", "compare.js", "knit.js",
            "figure.js", "figures.js", "prompts.js"} <= set(scripts)
    for name, text in scripts.items():
        assert not re.search(r"#[0-9a-fA-F]{3,8}\b", text), name  # no hex colours: tables come from /api/display
        assert not re.search(r"\[\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*\]", text), name  # no RGB stops
        assert not re.search(r"rgba?\(\s*\d", text), name
        assert not re.search(r"0\.299|0\.587|0\.2126|0\.7152|0\.179", text), name  # no text-contrast formula
        assert not any(symbol in text for symbol in (*display.WHITESPACE.values(), display.BLANK, display.EMPTY)), name
        assert not re.search(r"chart\.svg|pattern\.(txt|md)|endsWith\(|\\\.\((png|svg)", text), name  # no file-name sniffing
        assert "viridis" not in text.lower() and "blues" not in text.lower(), name
    html = (STATIC_DIR / "index.html").read_text()
    assert '<script type="module" src="/static/main.js"></script>' in html


def test_token_values_are_one_function_for_figure_and_viewer(server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[0], "capital")
    query = f"model={MODELS[0]}&prompt={row['prompt_hash']}"
    with cache_mod.load(save_path / row["path"]) as cache:
        top1 = ok_json(server, f"/api/tokens?{query}&value=top1_prob")
        expected = per_token_values(cache, "top1_prob")
        assert top1["colors"] == expected.colors() and top1["cmap"] == VALUE_KINDS["top1_prob"].cmap
        assert top1["text_colors"] == [colormap.text_color(c) for c in top1["colors"]]
        # A known value, checked against matplotlib itself: top-1 probability on viridis, 0..1.
        import matplotlib

        rgb = matplotlib.colormaps["viridis"].resampled(256)(float(cache.topk_probs[3, 0]), bytes=True)[:3]
        assert top1["colors"][3] == "#%02x%02x%02x" % tuple(rgb)
        # The token_values figure colours its top-1 row with exactly these colours (no viridis/blues split).
        page = token_figures.token_values(cache)["html"]
        figure_colors = re.findall(r'<span class="t" style="background:(#[0-9a-f]{6})', page)[: cache.n_tokens]
        assert figure_colors == top1["colors"]

        norms = ok_json(server, f"/api/tokens?{query}&value=resid_norm&layer=4&range=all")
        whole = per_token_values(cache, "resid_norm", 4)
        assert norms["colors"] == whole.colors() and (norms["vmin"], norms["vmax"]) == (whole.vmin, whole.vmax)
        skipped = ok_json(server, f"/api/tokens?{query}&value=resid_norm&layer=4")  # default: first token left out of the range
        rest = cache.resid_norms[4, 1:]
        assert (skipped["vmin"], skipped["vmax"]) == (float(rest.min()), float(rest.max()))
        assert skipped["inline"] == [display.token_inline(t) for t in cache.tokens]
        assert skipped["shown_tokens"] == [display.token_label(t) for t in cache.tokens]


def test_a_value_kind_registered_in_python_reaches_the_page(server, save_path: Path) -> None:
    from lens_pipeline.draw.token_values import Reading, ValueKind, register_value_kind

    kind = register_value_kind(ValueKind(
        "position", "token position", "index", colormap.ATTENTION_CMAP, ("tokens",),
        lambda cache, layer, neuron: Reading(np.arange(cache.n_tokens, dtype=np.float32), "position in the prompt", "position")))
    try:
        row = cache_row(save_path, MODELS[1], "repeat")
        query = f"model={MODELS[1]}&prompt={row['prompt_hash']}"
        assert "position" in [k["name"] for k in ok_json(server, "/api/display")["value_kinds"]]
        assert {k["name"]: k["reason"] for k in ok_json(server, f"/api/cache?{query}")["value_kinds"]}["position"] == ""
        got = ok_json(server, f"/api/tokens?{query}&value=position&range=all")
        assert got["values"] == list(range(len(got["tokens"]))) and got["title"] == "position in the prompt"
        assert got["colors"][0] == "#%02x%02x%02x" % tuple(colormap.lut(kind.cmap)[0])
    finally:
        VALUE_KINDS.pop("position")


def test_encoder_without_lm_head_offers_no_next_token_values(server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[1], "capital")
    query = f"model={MODELS[1]}&prompt={row['prompt_hash']}"
    kinds = {k["name"]: k for k in ok_json(server, f"/api/cache?{query}")["value_kinds"]}
    assert kinds["resid_norm"]["reason"] == "" and kinds["neuron"]["reason"] == ""
    for name in ("top1_prob", "logit_lens"):
        assert "LM head" in kinds[name]["reason"]
        status, payload = get_json(server, f"/api/tokens?{query}&value={name}&layer=0")
        assert status == 400 and "LM head" in payload["error"]
    with cache_mod.load(save_path / row["path"]) as cache:
        assert [r.kind for r in token_figures.token_rows(cache)][:2] == ["resid_norm", "neuron"]
        assert "Left out: top-1 next-token probability" in token_figures.token_values(cache)["html"]


def test_figure_rows_say_how_they_are_shown(server, save_path: Path) -> None:
    knit = next(r for r in latest_rows(save_path, "figure") if r["function"] == "knitting_pattern")
    row = ok_json(server, f"/api/figure?model={knit['model']}&prompt={knit['prompt_hash']}&function=knitting_pattern")
    assert row["view"] == "knitting" == knit["view"]
    assert row["main"]["format"] == "svg" and row["main"]["path"].endswith("chart.svg") and row["image"] == row["main"]
    assert row["pattern"]["path"].endswith("pattern.txt")
    heat = ok_json(server, "/api/figures?function=attention_heatmap&limit=1")["rows"][0]
    assert heat["view"] == "image" and heat["image"] == heat["main"] == heat["files"][0] and heat["main"]["format"] == "png"


def test_old_rows_without_a_view_get_one(tmp_path: Path) -> None:
    from lens_pipeline.viewer.live_index import LiveIndex
    from lens_pipeline.viewer.rows import public_row

    view = LiveIndex(tmp_path).view()
    files = [{"path": f"f/x.{fmt}", "format": fmt} for fmt in ("svg", "md", "txt")]
    knit = public_row({"kind": "figure", "function": "knitting_pattern", "files": files}, view)
    assert knit["view"] == "knitting" and knit["main"]["path"] == "f/x.svg" and knit["pattern"]["path"] == "f/x.txt"
    notes = public_row({"kind": "figure", "function": "not_registered", "files": [{"path": "f/a.md", "bytes": 3}]}, view)
    assert notes["view"] == "markdown" and notes["main"]["path"] == "f/a.md" and notes["image"] is None
    mixed = public_row({"kind": "figure", "function": "not_registered", "files": [{"path": "f/a.json"}, {"path": "f/a.png"}]},
                       view)
    assert mixed["view"] == "image" and mixed["main"]["path"] == "f/a.png"


# ----------------------------------------------------------------------------- current caches and stale figures


@pytest.fixture(scope="module")
def settings_copy(save_path: Path, tmp_path_factory: pytest.TempPathFactory):
    dest = tmp_path_factory.mktemp("settings") / "data"
    made = second_settings_copy(save_path, dest)
    with running_server(dest) as server:
        yield dest, made, server


def test_the_current_cache_is_read_and_its_settings_shown(settings_copy) -> None:
    dest, made, server = settings_copy
    old, new = made["old"], made["new"]
    query = f"model={old['model']}&prompt={old['prompt_hash']}"
    info = ok_json(server, f"/api/cache?{query}")
    assert info["settings_id"] == new["settings_id"] != old["settings_id"] and info["is_current"]
    assert ["top-k", "5"] in info["settings_text"] and ["logit lens", "off"] in info["settings_text"]
    assert ["encoding", "q12 (max error 1.2e-04)"] in info["settings_text"]
    assert [o["settings_id"] for o in info["other_settings"]] == [old["settings_id"]]
    assert not info["has_logit_lens"] and {k["name"]: k["reason"] != "" for k in info["value_kinds"]}["logit_lens"]
    with cache_mod.load(dest / new["path"]) as cache:
        norms = ok_json(server, f"/api/tokens?{query}&value=resid_norm&layer=2")
        assert norms["values"] == cache.resid_norms[2].astype(np.float64).tolist() and norms["settings_id"] == new["settings_id"]
        assert ok_json(server, f"/api/pattern?{query}&layer=1&head=0")["settings_id"] == new["settings_id"]
    with cache_mod.load(dest / old["path"]) as cache:  # the other cache, on request
        norms = ok_json(server, f"/api/tokens?{query}&settings={old['settings_id']}&value=resid_norm&layer=2")
        assert norms["values"] == cache.resid_norms[2].astype(np.float64).tolist()
        assert not ok_json(server, f"/api/cache?{query}&settings={old['settings_id']}")["is_current"]
    status, payload = get_json(server, f"/api/cache?{query}&settings=deadbeef")
    assert status == 404 and "deadbeef" in payload["error"]
    listed = [r for r in ok_json(server, f"/api/prompts?model={old['model']}&limit=500")["rows"]
              if r["prompt_hash"] == old["prompt_hash"]]
    assert len(listed) == 1 and listed[0]["settings_id"] == new["settings_id"] and listed[0]["n_settings"] == 2


def test_figures_of_a_replaced_or_missing_cache_are_stale(settings_copy) -> None:
    dest, made, server = settings_copy
    old = made["old"]
    rows = ok_json(server, f"/api/figures?model={old['model']}&prompt={old['prompt_hash']}&limit=500")["rows"]
    assert len(rows) == len(made["drawn_from_old"]) > 0
    assert all(r["status"] == "stale" and "another cache" in r["reason"] for r in rows)
    stale = ok_json(server, "/api/figures?status=stale&limit=500")
    marked = [r for r in stale["rows"] if r["function"] == "old_figure"]
    assert marked and marked[0]["reason"] == made["marked"]["reason"]  # recorded stale by the figures stage
    orphan = [r for r in stale["rows"] if r["model"] == "gone-model"]
    assert orphan and "no current cache" in orphan[0]["reason"]  # model scope, its model has no cache left
    assert stale["total"] == len(rows) + 2 == ok_json(server, "/api/summary")["n_stale"]
    assert ok_json(server, f"/api/figures?status=ok&model={old['model']}&prompt={old['prompt_hash']}")["total"] == 0

    failed = ok_json(server, f"/api/figure?model={MODELS[1]}&prompt={made['failed']['prompt_hash']}&function=broken_figure")
    assert failed["status"] == "error" and failed["error"] == "ValueError: boom"
    assert failed["traceback"] == made["failed"]["traceback"]
    listed = ok_json(server, "/api/figures?status=error")["rows"]
    assert [r["function"] for r in listed] == ["broken_figure"] and "traceback" not in listed[0]  # pages stay small
    skipped = ok_json(server, "/api/figures?status=skipped&function=needs_lens")["rows"]
    assert skipped[0]["reason"] == "needs the logit lens"

    # The old cache recorded again (a row that differs, so the index keeps it): it is current again,
    # and the figures drawn from it are no longer stale.
    index.append_rows(dest, [dict(old, warnings=["recorded again"])])
    assert ok_json(server, f"/api/cache?model={old['model']}&prompt={old['prompt_hash']}")["settings_id"] == old["settings_id"]
    again = ok_json(server, f"/api/figures?model={old['model']}&prompt={old['prompt_hash']}&limit=500")["rows"]
    assert {r["status"] for r in again} == {"ok"}
    # A cache removed (pruned) with no other left: its figures are stale, "gone".
    index.append_rows(dest, [dict(made["new"], status="removed", reason="pruned"), dict(old, status="removed", reason="pruned")])
    gone = ok_json(server, f"/api/figures?model={old['model']}&prompt={old['prompt_hash']}&limit=500")["rows"]
    assert {r["status"] for r in gone} == {"stale"} and all("gone" in r["reason"] for r in gone)


# ----------------------------------------------------------------------------- browsing


def test_figure_filters_match_the_index(server, save_path: Path) -> None:
    figures = latest_rows(save_path, "figure")
    total = ok_json(server, "/api/figures?limit=1")["total"]
    assert total == len(figures)
    expected = [r for r in figures if r["model"] == MODELS[1] and r["function"] == "attention_heatmap"
                and r["layer"] == 1 and r["head"] == 7]
    page = ok_json(server, f"/api/figures?model={MODELS[1]}&function=attention_heatmap&layer=1&head=7")
    assert page["total"] == len(expected) == 3  # one per prompt
    assert {r["prompt_hash"] for r in page["rows"]} == {r["prompt_hash"] for r in expected}
    assert all(r["url"] == "/files/" + r["path"] for r in page["rows"])

    # Prompt search runs over the prompt text: the injection prompt, for both models, as text.
    found = ok_json(server, "/api/figures?q=ONERROR&function=attention_layer_grid&limit=500")
    assert {r["model"] for r in found["rows"]} == set(MODELS) and found["total"] == 2 * 3
    assert all(XSS_SCRIPT in r["text"] and XSS_IMG in r["text"] for r in found["rows"])
    prompts = ok_json(server, "/api/prompts?q=script")
    assert prompts["total"] == 2 and all(XSS_SCRIPT in r["text"] for r in prompts["rows"])


def test_paging_covers_every_row_once(server, save_path: Path) -> None:
    total = ok_json(server, "/api/figures?limit=1")["total"]
    seen = []
    for offset in range(0, total, 97):
        page = ok_json(server, f"/api/figures?offset={offset}&limit=97")
        assert page["total"] == total and page["offset"] == offset
        seen += [(r["model"], r["prompt_hash"], r["function"], r["layer"], r["head"]) for r in page["rows"]]
    assert len(seen) == len(set(seen)) == total
    assert ok_json(server, f"/api/figures?offset={total + 5}")["rows"] == []


def test_compare_across_models_and_layers(server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[0], "repeat")
    across = ok_json(server, f"/api/compare?across=models&model={MODELS[0]}&prompt={row['prompt_hash']}"
                             "&function=attention_heatmap&layer=2&head=1")
    assert [r["model"] for r in across["rows"]] == list(MODELS)
    assert {r["text"] for r in across["rows"]} == {row["text"]}
    layers = ok_json(server, f"/api/compare?across=layers&model={MODELS[0]}&prompt={row['prompt_hash']}"
                             "&function=attention_heatmap&head=4")
    assert [r["layer"] for r in layers["rows"]] == [0, 1, 2] and {r["head"] for r in layers["rows"]} == {4}


def test_knitting_row_lists_every_file(server, save_path: Path) -> None:
    knit = next(r for r in latest_rows(save_path, "figure") if r["function"] == "knitting_pattern")
    row = ok_json(server, f"/api/figure?model={knit['model']}&prompt={knit['prompt_hash']}&function=knitting_pattern")
    names = {f["path"].rsplit("/", 1)[-1] for f in row["files"]}
    assert {"chart.svg", "pattern.md", "pattern.txt", "grid.json", "grid.csv", "meta.json"} <= names
    for entry in row["files"]:
        status, headers, body = get(server, entry["url"])
        assert status == 200 and body == (save_path / entry["path"]).read_bytes()
        assert "sandbox" in headers["content-security-policy"]
    status, headers, _ = get(server, next(f["url"] for f in row["files"] if f["path"].endswith(".svg")))
    assert headers["content-type"].startswith("image/svg+xml")


# ----------------------------------------------------------------------------- safety


@pytest.fixture(scope="module")
def fenced(tmp_path_factory: pytest.TempPathFactory):
    """A save path next to a secret file, with symlinks pointing out of it and one within it."""
    root = tmp_path_factory.mktemp("fence")
    (root / "secret.txt").write_text("TOP-SECRET")
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_text("TOP-SECRET")
    data = root / "data"
    (data / "figures").mkdir(parents=True)
    (data / "figures" / "ok.txt").write_text("fine")
    (data / "figures" / "escape.txt").symlink_to(root / "secret.txt")
    (data / "figures" / "escape_dir").symlink_to(root / "outside", target_is_directory=True)
    (data / "figures" / "alias.txt").symlink_to(data / "figures" / "ok.txt")
    (data / ".hidden.tmp").write_text("TOP-SECRET")
    index.append_rows(data, [index.make_row("cache", model="m", prompt_hash="p", path="../secret.txt", text="t")])
    with running_server(data) as server:
        yield server


@pytest.mark.parametrize("path", [
    "/files/../secret.txt",
    "/files/figures/../../secret.txt",
    "/files/%2e%2e/secret.txt",
    "/files/%2E%2E%2Fsecret.txt",
    "/files/figures%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "/files/..%5csecret.txt",
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/files/figures/escape.txt",
    "/files/figures/escape_dir/secret.txt",
    "/files/.hidden.tmp",
    "/files/figures/ok.txt%00.png",
    "/static/../server.py",
    "/static/%2e%2e/server.py",
    "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
])
def test_paths_outside_the_save_path_are_refused(fenced, path: str) -> None:
    status, headers, body = get(fenced, path)
    assert status == 403, (path, status, body)
    assert b"TOP-SECRET" not in body and b"import" not in body
    assert "refused" in json.loads(body)["error"]


def test_paths_inside_the_save_path_are_served(fenced) -> None:
    assert get(fenced, "/files/figures/ok.txt")[2] == b"fine"
    assert get(fenced, "/files/figures/alias.txt")[2] == b"fine"  # a symlink that stays inside
    assert get(fenced, "/files/figures/%6fk.txt")[2] == b"fine"  # percent-encoding of ordinary letters
    status, _, body = get(fenced, "/files/%252e%252e/secret.txt")  # double-encoded: a literal name, not found
    assert status == 404 and b"TOP-SECRET" not in body


def test_index_paths_are_fenced_too(fenced) -> None:
    # A cache row whose path leaves the save path (a hand-edited or hostile index) is refused.
    status, payload = get_json(fenced, "/api/pattern?model=m&prompt=p&layer=0&head=0")
    assert status == 403 and "refused" in payload["error"]


@pytest.mark.parametrize("path, status, words", [
    ("/api/figures?limit=0", 400, "limit"),
    ("/api/figures?limit=abc", 400, "integer"),
    ("/api/figures?limit=100000", 400, "out of range"),
    ("/api/figures?offset=-1", 400, "offset"),
    ("/api/figures?layer=one", 400, "integer"),
    ("/api/figures?status=maybe", 400, "status"),
    ("/api/figures?colour=red", 400, "unknown parameter"),
    ("/api/figures?layer=1&layer=2", 400, "once"),
    ("/api/pattern?model=SmolLM2-135M-Instruct", 400, "prompt"),
    ("/api/pattern?model=nope&prompt=abc&layer=0&head=0", 404, "no cache"),
    ("/api/tokens?model=nope&prompt=abc&value=bogus", 400, "value"),
    ("/api/figure?model=nope&function=attention_heatmap", 404, "no figure"),
    ("/api/compare?across=prompts&model=m&function=f", 400, "across"),
    ("/api/nothing", 404, "endpoint"),
    ("/nothing-here", 404, "nothing"),
])
def test_bad_parameters_give_4xx_json(server, path: str, status: int, words: str) -> None:
    got, payload = get_json(server, path)
    assert got == status and words in payload["error"], payload


def test_out_of_range_head_and_unstored_neuron(server, save_path: Path) -> None:
    row = cache_row(save_path, MODELS[1], "capital")
    query = f"model={MODELS[1]}&prompt={row['prompt_hash']}"
    status, payload = get_json(server, f"/api/pattern?{query}&layer=6&head=0")
    assert status == 400 and "0..5" in payload["error"]
    status, payload = get_json(server, f"/api/pattern?{query}&layer=0&head=12")
    assert status == 400 and "0..11" in payload["error"]
    status, payload = get_json(server, f"/api/tokens?{query}&value=neuron&layer=0&neuron=999999")
    assert status == 400 and "neuron" in payload["error"]


def test_security_headers_and_methods(server) -> None:
    for path in ("/", "/static/app.js", "/api/summary"):
        status, headers, _ = get(server, path)
        assert status == 200
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = get(server, "/api/summary", method="POST")
    assert status == 405 and "read-only" in json.loads(body)["error"]
    # DNS rebinding: a page on another name that resolves to 127.0.0.1 gets nothing.
    status, _, body = get(server, "/api/summary", headers={"Host": "evil.example:80"})
    assert status == 403 and "Host" in json.loads(body)["error"]
    assert get(server, "/api/summary", headers={"Host": f"localhost:{server.server_address[1]}"})[0] == 200


def test_page_loads_nothing_from_the_network() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I) or path.suffix == ".svg", path
        # Data reaches the page only as text: no HTML-parsing sinks at all.
        assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write\(|\beval\(", text), path
    html = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"#]+)"', html) == ["/static/favicon.svg", "/static/style.css", "/static/main.js"]


# ----------------------------------------------------------------------------- failures shown, not hidden


def test_missing_and_corrupt_files_give_clear_errors(save_path: Path, tmp_path: Path) -> None:
    broken = broken_copy(save_path, tmp_path / "broken")
    with running_server(tmp_path / "broken") as server:
        corrupt = broken["corrupt_cache"]
        query = f"model={corrupt['model']}&prompt={corrupt['prompt_hash']}"
        status, payload = get_json(server, f"/api/pattern?{query}&layer=0&head=0")
        assert status == 500 and "corrupt" in payload["error"]
        missing = broken["missing_cache"]
        status, payload = get_json(server, f"/api/cache?model={missing['model']}&prompt={missing['prompt_hash']}")
        assert status == 404 and "missing" in payload["error"]
        status, payload = get_json(server, "/files/" + broken["missing_figure"]["path"])
        assert status == 404 and "missing" in payload["error"]


# ----------------------------------------------------------------------------- scale and live updates


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (68, 1, 84)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_100k_figure_index_pages_from_the_server(tmp_path: Path) -> None:
    figures = synthetic_index(tmp_path, 100_000, _png())
    with running_server(tmp_path) as server:
        first = ok_json(server, "/api/figures?limit=60")
        assert first["total"] == 100_000 and len(first["rows"]) == 60
        assert [(r["model"], r["prompt_hash"], r["layer"], r["head"]) for r in first["rows"]] == \
            [(r["model"], r["prompt_hash"], r["layer"], r["head"]) for r in figures[:60]]
        last = ok_json(server, "/api/figures?offset=99990&limit=60")
        assert len(last["rows"]) == 10 and last["rows"][-1]["head"] == 39 and last["rows"][-1]["layer"] == 24
        filtered = ok_json(server, "/api/figures?model=model-b&layer=3&head=7&limit=5")
        assert filtered["total"] == 50 and all(r["layer"] == 3 and r["head"] == 7 for r in filtered["rows"])
        searched = ok_json(server, "/api/figures?q=synthetic+prompt+17+of+model-a&limit=1")
        assert searched["total"] == 25 * 40
        summary = ok_json(server, "/api/summary")
        assert summary["n_figures"] == 100_000 and summary["layers"] == list(range(25))
        status, _, body = get(server, first["rows"][0]["url"])
        assert status == 200 and body == _png()


def test_index_is_followed_while_serving(tmp_path: Path) -> None:
    synthetic_index(tmp_path, 10, _png())
    with running_server(tmp_path) as server:
        assert ok_json(server, "/api/figures")["total"] == 10
        new = dict(ok_json(server, "/api/figures?limit=1")["rows"][0], layer=99, head=0)
        keep = ("model", "prompt_hash", "function", "scope", "layer", "head", "path", "format")
        row = index.make_row("figure", **{k: new[k] for k in keep},
                             files=[{"path": new["path"], "bytes": 1, "format": "png"}])
        line = json.dumps(row) + "\n"
        with open(index.index_path(tmp_path), "a", encoding="utf-8") as handle:
            handle.write(line[:40])  # a writer caught mid-line: not a row yet, and no error
        assert ok_json(server, "/api/figures")["total"] == 10
        with open(index.index_path(tmp_path), "a", encoding="utf-8") as handle:
            handle.write(line[40:])
        page = ok_json(server, "/api/figures?layer=99")
        assert page["total"] == 1 and ok_json(server, "/api/summary")["n_figures"] == 11
        # A superseding row (same output, now failed) replaces the old one instead of adding one.
        index.append_rows(tmp_path, [dict(row, status="error", error="boom")])
        assert ok_json(server, "/api/figures?status=error")["rows"][0]["error"] == "boom"
        assert ok_json(server, "/api/figures")["total"] == 11
        # A figure that does not apply ("skipped") is left out unless asked for.
        index.append_rows(tmp_path, [dict(row, layer=98, status="skipped", error="needs --logit-lens")])
        assert ok_json(server, "/api/figures")["total"] == 11
        assert ok_json(server, "/api/figures?status=skipped")["rows"][0]["error"] == "needs --logit-lens"
        assert ok_json(server, "/api/figures?status=all")["total"] == 12
        # Garbage lines are counted and skipped, never fatal.
        with open(index.index_path(tmp_path), "a", encoding="utf-8") as handle:
            handle.write('not json\n[1, 2]\n{"kind": "figure", "model": "m", "layer": [1]}\n{"kind": "other"}\n')
        summary = ok_json(server, "/api/summary")
        assert summary["bad_lines"] == 4 and summary["n_figures"] == 11 and summary["n_skipped"] == 1
        # A rebuilt (replaced, shorter) index is read again from the start.
        path = index.index_path(tmp_path)
        replacement = path.with_name("new.jsonl")
        replacement.write_text(path.read_text().splitlines(keepends=True)[0])
        os.replace(replacement, path)
        assert ok_json(server, "/api/summary")["n_caches"] == 1 and ok_json(server, "/api/figures")["total"] == 0


# ----------------------------------------------------------------------------- the command line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_cli_serves_and_explains_errors(save_path: Path, tmp_path: Path) -> None:
    missing = subprocess.run([sys.executable, "-m", "lens_pipeline.server", "--save-path", str(tmp_path / "nope")],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr

    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "lens_pipeline.server", "--save-path", str(save_path),
                                "--port", str(port)], stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = process.stderr.readline()
        assert f"http://127.0.0.1:{port}/" in line and "figure(s)" in line
        busy = subprocess.run([sys.executable, "-m", "lens_pipeline.server", "--save-path", str(save_path),
                               "--port", str(port)], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert busy.returncode == 2 and "--port 0" in busy.stderr and "Traceback" not in busy.stderr
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200 and b"/static/main.js" in response.read()
    finally:
        process.terminate()
        process.wait(timeout=10)
