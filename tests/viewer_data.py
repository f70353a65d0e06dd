"""Save paths, a running server and a headless Chromium for the viewer tests (test_server.py,
test_browser.py, test_notebook.py, test_export.py).

The save paths are made by the real pipeline: the activations stage on SmolLM2 and MiniLM (a few
prompts, two of them HTML/JS injection attempts), then the figures stage; and a fast one on
tiny-llama with random weights. Each is built once per test session and shared by the modules.
The browser is Debian's `chromium` + `chromium-driver`, driven by selenium: its tests FAIL when it
is missing; set LENS_SKIP_BROWSER=1 to skip them explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from lens_pipeline.server import ViewerServer, make_server
from lens_pipeline.store import index

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Runs before any page script: a dialog would be recorded here instead of blocking the page.
RECORD_DIALOGS = "window.__dialogs = []; for (const n of ['alert', 'confirm', 'prompt']) " \
                 "window[n] = (m) => { window.__dialogs.push(n + ':' + m); };"
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"
VIEWER_PROMPTS = [
    {"id": "capital", "text": "The capital of France is Paris. The capital of Italy is"},
    {"id": "xss", "text": f"Say {XSS_SCRIPT} and {XSS_IMG} & \"quotes\" as plain text."},
    {"id": "repeat", "text": "When shall we three meet again? When shall we three meet again?"},
]
MODELS = ("SmolLM2-135M-Instruct", "all-MiniLM-L6-v2")
FIGURES = ["attention_heatmap", "attention_layer_grid", "knitting_pattern"]
FIGURE_LAYERS = "0-2"  # keeps the figures stage to a few seconds

_built: dict[str, Path] = {}


def viewer_save_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared save path (built on first use in this session)."""
    if "main" not in _built:
        from lens_pipeline.activations import run_activations
        from lens_pipeline.figures import run_figures

        root = tmp_path_factory.mktemp("viewer")
        prompts = root / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(p) + "\n" for p in VIEWER_PROMPTS), encoding="utf-8")
        save_path = root / "data"
        summary = run_activations(["smollm2", "minilm"], prompts, save_path, batch_size=4, logit_lens=True,
                                  progress=False, log=lambda message: None)
        assert summary.written == len(VIEWER_PROMPTS) * len(MODELS) and not summary.failed
        drawn = run_figures(save_path, figures=FIGURES, layers=FIGURE_LAYERS, progress=False)
        assert drawn.written and not drawn.failed, [r.get("error") for r in drawn.rows if r["status"] != "ok"][:3]
        _built["main"] = save_path
    return _built["main"]


def tiny_save_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small save path made fast (built on first use in this session; copy it before changing it):
    tiny-llama with seeded random weights (2 layers x 4 heads) on VIEWER_PROMPTS with the logit lens,
    and no figures yet."""
    if "tiny" not in _built:
        from lens_pipeline.activations import run_activations

        root = tmp_path_factory.mktemp("tiny")
        prompts = root / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(p) + "\n" for p in VIEWER_PROMPTS), encoding="utf-8")
        summary = run_activations("tiny-llama", prompts, root / "data", random_weights=True, logit_lens=True,
                                  progress=False, log=lambda message: None)
        assert summary.written == len(VIEWER_PROMPTS) and not summary.failed
        _built["tiny"] = root / "data"
    return _built["tiny"]


def latest_rows(save_path: Path, kind: str) -> list[dict[str, Any]]:
    return [row for row in index.latest(index.read_rows(save_path)).values() if row["kind"] == kind]


def cache_row(save_path: Path, model: str, prompt_id: str) -> dict[str, Any]:
    text = next(p["text"] for p in VIEWER_PROMPTS if p["id"] == prompt_id)
    return next(row for row in latest_rows(save_path, "cache") if row["model"] == model and row["text"] == text[:200])


def broken_copy(save_path: Path, dest: Path) -> dict[str, Any]:
    """A copy of the save path with one figure file deleted and one cache file truncated."""
    shutil.copytree(save_path, dest)
    figure = next(r for r in latest_rows(dest, "figure") if r["function"] == "attention_heatmap" and r["status"] == "ok")
    (dest / figure["path"]).unlink()
    corrupt = cache_row(dest, MODELS[0], "capital")
    path = dest / corrupt["path"]
    path.write_bytes(path.read_bytes()[:500])
    missing = cache_row(dest, MODELS[0], "repeat")
    (dest / missing["path"]).unlink()
    return {"missing_figure": figure, "corrupt_cache": corrupt, "missing_cache": missing}


def second_settings_copy(save_path: Path, dest: Path) -> dict[str, Any]:
    """A copy of the save path where the capital prompt of MODELS[0] also has a cache made with
    other settings (top-k 5, no logit lens; its residual norms doubled so its values differ),
    recorded after the first: that one is now current, and the figures drawn from the first are stale.
    Also recorded: a failed figure (with traceback), a skipped one, one marked stale by the figures
    stage, and a model-scope figure of a model with no cache left."""
    from lens_pipeline.store.cache import CacheContents, ExtractSettings, load, serialize

    shutil.copytree(save_path, dest)
    old = cache_row(dest, MODELS[0], "capital")
    with load(dest / old["path"]) as cache:
        arrays = {name: cache.array(name) for name in cache.names() if not name.startswith("logit_lens")}
        meta = {k: v for k, v in cache.meta.items() if k not in ("arrays", "schema_version")}
    settings = ExtractSettings(**dict(meta["settings"], hooks=(), top_k=5, logit_lens=False))
    arrays.update({name: arrays[name][:, :5] for name in ("topk_ids", "topk_probs", "topk_strs")})
    arrays["resid_norms"] = arrays["resid_norms"] * 2
    meta.update(settings=settings.as_dict(), settings_id=settings.settings_id)
    data = serialize(CacheContents(meta, arrays))
    path = old["path"].replace(old["settings_id"], settings.settings_id)
    assert path != old["path"]
    (dest / path).write_bytes(data)
    new = dict(old, settings_id=settings.settings_id, params=settings.as_dict(), path=path, bytes=len(data),
               sha256=index.sha256_bytes(data), created=index.now_iso())
    png = next(r for r in latest_rows(dest, "figure") if r["format"] == "png")
    common = dict(model=MODELS[1], prompt_hash=cache_row(dest, MODELS[1], "capital")["prompt_hash"], scope="prompt",
                  layer=None, head=None, params={}, view="image")
    failed = index.make_row("figure", function="broken_figure", status="error", error="ValueError: boom",
                            traceback="Traceback (most recent call last):\n  File \"f.py\", line 1, in f\nValueError: boom",
                            **common)
    skipped = index.make_row("figure", function="needs_lens", status="skipped", reason="needs the logit lens", **common)
    marked = index.make_row("figure", function="old_figure", status="stale", reason="drawn from another cache (test)",
                            path=png["path"], format="png", files=png["files"], **common)
    orphan = index.make_row("figure", function="model_summary_copy", model="gone-model", prompt_hash="", scope="model",
                            layer=None, head=None, params={}, view="image", path=png["path"], format="png", files=png["files"],
                            cache_sha256="0" * 64)
    index.append_rows(dest, [new, failed, skipped, marked, orphan])
    drawn = [r for r in latest_rows(dest, "figure") if r["model"] == MODELS[0] and r["prompt_hash"] == old["prompt_hash"]]
    return {"old": old, "new": new, "drawn_from_old": drawn, "failed": failed, "skipped": skipped, "marked": marked,
            "orphan": orphan}


@contextlib.contextmanager
def running_server(save_path: Path) -> Iterator[ViewerServer]:
    """The viewer on a free port of 127.0.0.1, served from a background thread."""
    server = make_server(save_path, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# The `save_path` and `server` fixtures of the modules that test the viewer: each module that
# imports these gets its own save path and its own running server.
@pytest.fixture(scope="module", name="save_path")
def viewer_save_path_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return viewer_save_path(tmp_path_factory)


@pytest.fixture(scope="module", name="server")
def viewer_server_fixture(save_path: Path) -> Iterator[ViewerServer]:
    with running_server(save_path) as running:
        yield running


# ----------------------------------------------------------------------------- the browser


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    message = f"browser tests need {', '.join(missing)} (apt install chromium chromium-driver; pip install selenium)"
    if os.environ.get("LENS_SKIP_BROWSER") == "1":
        pytest.skip(f"LENS_SKIP_BROWSER=1: {message}")
    pytest.fail(message + "; set LENS_SKIP_BROWSER=1 to skip these tests on purpose", pytrace=False)


# The `driver` fixture of the modules that use a browser: headless Chromium recording its
# requests, console messages and dialogs (window.__dialogs).
@pytest.fixture(scope="module", name="driver")
def browser_fixture() -> Iterator[Any]:
    _require_browser()
    from screenshots import chromium  # scripts/ is on sys.path (conftest): one set of browser flags

    with tempfile.TemporaryDirectory() as profile:
        browser = chromium(1400, 1000, profile, log_network=True)
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_DIALOGS})
        try:
            yield browser
        finally:
            browser.quit()


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 20) -> Any:
    """Until `condition` holds; an element not there yet (IndexError) or replaced by a re-render counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(IndexError, StaleElementReferenceException)).until(condition)


def css(root: Any, selector: str) -> list[Any]:
    """Elements under a driver, an element or a shadow root."""
    from selenium.webdriver.common.by import By

    return root.find_elements(By.CSS_SELECTOR, selector)
