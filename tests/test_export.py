"""The static export (python -m lens_pipeline.export), opened from file:// in headless Chromium with
the network disabled: the grid and its filters answer as the server does, a head's hover value is
the cache's, the injection prompt stays text; and the single-file export, alone in a folder."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest

from conftest import REPO, python_cmd
from lens_pipeline.export import META_CSP
from lens_pipeline.server import PAGE_CSP
from lens_pipeline.store import cache as cache_mod
from lens_pipeline.viewer import ViewerApi
from viewer_data import (  # noqa: F401  (fixture driver)
    VIEWER_PROMPTS,
    XSS_IMG,
    XSS_SCRIPT,
    browser_fixture,
    css,
    latest_rows,
    tiny_save_path,
    wait,
)

FIGURES = ["attention_heatmap", "attention_layer_grid", "knitting_pattern", "model_summary"]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny save path with a few built-in figures drawn."""
    from lens_pipeline.figures import run_figures

    save_path = tmp_path_factory.mktemp("export") / "data"
    shutil.copytree(tiny_save_path(tmp_path_factory), save_path)
    summary = run_figures(save_path, figures=FIGURES, progress=False)
    assert summary.written and not summary.failed
    return save_path


def export(*args: str) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run(python_cmd("-m", "lens_pipeline.export", *args), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    print(done.stdout.strip(), f"({time.perf_counter() - started:.1f} s with the interpreter's start)")
    return done


@pytest.fixture(scope="module")
def exported(drawn: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("static") / "site"
    done = export("--save-path", str(drawn), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"exported {len(VIEWER_PROMPTS)} prompt(s)") and " MB in " in done.stdout
    return out


def offline(driver: Any) -> None:
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})


def open_page(driver: Any, page: Path, fragment: str = "") -> None:
    driver.get("about:blank")
    driver.get(page.as_uri() + fragment)


def prompt_hash(save_path: Path, prompt_id: str) -> str:
    text = next(p["text"] for p in VIEWER_PROMPTS if p["id"] == prompt_id)
    return next(r["prompt_hash"] for r in latest_rows(save_path, "cache") if r["text"] == text[:200])


def hover_value(driver: Any, q: int, k: int) -> float:
    from screenshots import hover_cell

    hover_cell(driver, css(driver, "canvas.heatmap")[0], q, k)
    tip = wait(driver, lambda d: [t for t in css(d, "#tooltip .tip") if t.get_attribute("data-q") == str(q)
                                  and t.get_attribute("data-k") == str(k)][0])
    return float(css(tip, "[data-field='weight']")[0].get_attribute("data-value"))


def assert_offline_and_clean(driver: Any) -> None:
    assert driver.execute_script("return window.__dialogs") == []
    assert driver.execute_script("return document.querySelectorAll('main script, main img[src=\"x\"], [onerror]').length") == 0
    names = driver.execute_script("return performance.getEntries().map(e => e.name)")
    assert [n for n in names if "://" in n and not n.startswith("file://")] == []
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_static_export_works_from_file_offline(driver, drawn: Path, exported: Path) -> None:
    offline(driver)
    page = exported / "index.html"
    assert f'content="{META_CSP}"' in page.read_text() and META_CSP == PAGE_CSP.replace("; frame-ancestors 'none'", "")
    api = ViewerApi(drawn)

    # The grid, its filters and the text search: the totals the server gives for the same filters.
    for query in ({}, {"function": "attention_heatmap", "layer": "1", "head": "2"}, {"function": "knitting_pattern"},
                  {"q": "onerror"}, {"q": "paris", "function": "attention_layer_grid"}, {"status": "all", "layer": "0"}):
        open_page(driver, page, "#" + urlencode({"view": "grid", **query}))
        total = api.handle("/api/figures", urlencode(query))["total"]
        wait(driver, lambda d: css(d, ".count")[0].get_attribute("data-total") == str(total))
        cards = wait(driver, lambda d: (c := css(d, ".card")) and len(c) == min(total, 60) and c)
        if query.get("q") == "onerror":
            assert all(XSS_IMG in c.text or XSS_SCRIPT in c.text for c in cards)
    wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"))
    assert_offline_and_clean(driver)

    # One head from the exact cached values; the injection prompt as text.
    xss = prompt_hash(drawn, "xss")
    row = next(r for r in latest_rows(drawn, "cache") if r["prompt_hash"] == xss)
    open_page(driver, page, f"#view=head&model={row['model']}&prompt={xss}&layer=1&head=3")
    wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='1'][data-head='3']"))
    with cache_mod.load(drawn / row["path"]) as cache:
        for q, k in ((6, 2), (cache.n_tokens - 1, cache.n_tokens - 1)):
            assert hover_value(driver, q, k) == float(cache.pattern(1, 3)[q, k])
        assert XSS_IMG in css(driver, ".prompt-text")[0].text
        open_page(driver, page, f"#view=tokens&model={row['model']}&prompt={xss}&value=neuron&layer=1")
        spans = wait(driver, lambda d: (s := css(d, ".tv")) and len(s) == cache.n_tokens and s)
        neuron = int(cache.neuron_ids[1][0])
        assert [float(s.get_attribute("data-value")) for s in spans] == \
            cache.neuron_acts[1, 0].astype(np.float64).tolist(), neuron
    assert_offline_and_clean(driver)

    # Knitting: the chart, the written pattern and the files to download, all in the export.
    knit = next(r for r in latest_rows(drawn, "figure") if r["function"] == "knitting_pattern")
    open_page(driver, page, f"#view=knit&model={knit['model']}&prompt={knit['prompt_hash']}&function=knitting_pattern")
    wait(driver, lambda d: d.execute_script("const i = document.querySelector('.chart-img'); return i && i.naturalWidth > 0"))
    pattern = next(f for f in knit["files"] if f["path"].endswith("pattern.txt"))
    wait(driver, lambda d: css(d, "pre.pattern")[0].get_attribute("textContent") == (drawn / pattern["path"]).read_text())
    links = [a.get_attribute("href") for a in css(driver, ".files a")]
    assert sorted(links) == sorted((exported / "files" / f["path"]).as_uri() for f in knit["files"])
    summary = next(r for r in latest_rows(drawn, "figure") if r["function"] == "model_summary")
    open_page(driver, page, f"#view=figure&model={summary['model']}&function=model_summary")
    wait(driver, lambda d: css(d, "pre.figure-text")[0].text.strip() == (drawn / summary["path"]).read_text().strip())
    assert_offline_and_clean(driver)


def test_single_file_export_stands_alone(driver, drawn: Path, tmp_path: Path) -> None:
    xss = prompt_hash(drawn, "xss")
    written = tmp_path / "one.html"
    done = export("--save-path", str(drawn), "--out", str(written), "--single-file", "--prompts", xss[:8])
    assert done.returncode == 0, done.stderr
    alone = tmp_path / "elsewhere" / "prompt.html"  # nothing beside it
    alone.parent.mkdir()
    shutil.move(written, alone)
    offline(driver)
    open_page(driver, alone)
    figures = [r for r in latest_rows(drawn, "figure") if r["prompt_hash"] in (xss, "")]
    wait(driver, lambda d: css(d, ".count")[0].get_attribute("data-total") == str(len(figures)))
    wait(driver, lambda d: d.execute_script(
        "const i = [...document.querySelectorAll('.card img')]; return i.length && i.every(i => i.naturalWidth > 0)"))
    assert all(src.startswith("data:image/") for src in driver.execute_script(
        "return [...document.querySelectorAll('.card img')].map(i => i.src)"))
    row = next(r for r in latest_rows(drawn, "cache") if r["prompt_hash"] == xss)
    open_page(driver, alone, f"#view=head&model={row['model']}&prompt={xss}&layer=0&head=1")
    wait(driver, lambda d: css(d, "canvas.heatmap[data-layer='0'][data-head='1']"))
    with cache_mod.load(drawn / row["path"]) as cache:
        assert hover_value(driver, 9, 4) == float(cache.pattern(0, 1)[9, 4])
    assert XSS_SCRIPT in css(driver, ".prompt-text")[0].text
    assert_offline_and_clean(driver)

    # The model-scope figures, drawn from every prompt of the model, are current in the save path: the
    # export says what of their input it lacks, and calls nothing stale.
    open_page(driver, alone)
    cards = wait(driver, lambda d: (c := css(d, ".card")) and len(c) == len(figures) and c)
    assert not css(driver, ".stale-badge") and {c.get_attribute("data-status") for c in cards} == {"ok"}
    [summary] = [c for c in cards if c.get_attribute("data-function") == "model_summary"]
    others = len(VIEWER_PROMPTS) - 1
    assert css(summary, ".card-note")[0].text == (f"drawn from all {len(VIEWER_PROMPTS)} prompts of {row['model']}; "
                                                  f"{others} of them are not in this export")
    open_page(driver, alone, f"#view=figure&model={row['model']}&function=model_summary")
    assert "not in this export" in wait(driver, lambda d: css(d, ".figure-note"))[0].text
    assert not css(driver, ".stale-note")


def test_prompts_are_listed_and_found_by_hash_or_text(drawn: Path, tmp_path: Path) -> None:
    caches = latest_rows(drawn, "cache")
    listed = export("--save-path", str(drawn), "--list-prompts")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == len(caches) == len(VIEWER_PROMPTS)
    for line in lines:  # hash  model  first words
        hash_, model, words = line.split("  ", 2)
        row = next(r for r in caches if r["prompt_hash"] == hash_)
        assert model == row["model"] and " ".join(row["text"].split()).startswith(words.removesuffix(" …"))

    capital = prompt_hash(drawn, "capital")
    done = export("--save-path", str(drawn), "--out", str(tmp_path / "one.html"), "--single-file", "--prompts",
                  "CAPITAL of France")  # a piece of the text, any case
    assert done.returncode == 0 and done.stdout.startswith("exported 1 prompt(s)"), done.stderr
    again = export("--save-path", str(drawn), "--out", str(tmp_path / "two.html"), "--single-file", "--prompts", capital[:6])
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "one.html").read_bytes() == (tmp_path / "two.html").read_bytes()  # the same prompt either way

    ambiguous = export("--save-path", str(drawn), "--out", str(tmp_path / "x.html"), "--single-file", "--prompts", "a")
    assert ambiguous.returncode == 2 and ambiguous.stderr.count("\n") == 1, ambiguous.stderr
    assert ambiguous.stderr.startswith(f"error: --prompts 'a' names {len(VIEWER_PROMPTS)} prompts: ")
    assert all(r["prompt_hash"] in ambiguous.stderr for r in caches)
    nothing = export("--save-path", str(drawn), "--out", str(tmp_path / "x.html"), "--prompts", "no such words")
    assert nothing.returncode == 2 and nothing.stderr.count("\n") == 1 and "--list-prompts" in nothing.stderr
    assert not (tmp_path / "x.html").exists()
    no_out = export("--save-path", str(drawn))
    assert no_out.returncode == 2 and "--out is required" in no_out.stderr


def test_export_refuses_what_it_cannot_do(drawn: Path, tmp_path: Path) -> None:
    done = export("--save-path", str(drawn), "--out", str(tmp_path / "x"), "--prompts", "zzzz")
    assert done.returncode == 2 and done.stderr.startswith("error: nothing to export") and done.stderr.count("\n") == 1
    done = export("--save-path", str(drawn), "--out", str(tmp_path / "x.html"), "--single-file")
    assert done.returncode == 2 and "--single-file exports one prompt; the selection has 3" in done.stderr
    done = export("--save-path", str(drawn), "--out", str(tmp_path / "small"), "--max-mb", "0.5")
    assert done.returncode == 0, done.stderr
    assert "left out to stay under --max-mb" in done.stdout
    size = sum(f.stat().st_size for f in (tmp_path / "small").rglob("*") if f.is_file())
    assert size <= 0.5e6
