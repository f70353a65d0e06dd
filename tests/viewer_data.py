"""Save paths and a running server for the viewer tests (test_server.py, test_browser.py).

The save path is made by the real pipeline: the activations stage on SmolLM2 and MiniLM (a few
prompts, two of them HTML/JS injection attempts), then the figures stage. It is built once per
test session and shared by both test modules.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from lens_pipeline import index
from lens_pipeline.server import ViewerServer, make_server

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


def synthetic_index(save_path: Path, n_figures: int, png: bytes) -> list[dict[str, Any]]:
    """An index of `n_figures` figure rows (exactly the figures stage's row shape) over a few
    cache rows, every figure pointing at one real PNG. Returns the figure rows written."""
    models = ("model-a", "model-b")
    n_prompts, n_layers, n_heads = 50, 25, 40  # 2 x 50 x 25 x 40 = 100,000
    (save_path / "figures").mkdir(parents=True, exist_ok=True)
    (save_path / "figures" / "one.png").write_bytes(png)
    file_entry = {"path": "figures/one.png", "bytes": len(png), "sha256": index.sha256_bytes(png), "format": "png"}
    caches = [index.make_row("cache", model=m, prompt_hash=f"{m[-1]}{p:015d}", text=f"synthetic prompt {p} of {m}",
                             n_tokens=8, path=f"caches/{m}/{p}.zip") for m in models for p in range(n_prompts)]
    figures = []
    for i in range(n_figures):
        m, rest = divmod(i, n_prompts * n_layers * n_heads)
        p, rest = divmod(rest, n_layers * n_heads)
        layer, head = divmod(rest, n_heads)
        figures.append(index.make_row(
            "figure", model=models[m % 2], prompt_hash=f"{models[m % 2][-1]}{p:015d}", function="attention_heatmap",
            scope="head", layer=layer, head=head, path=file_entry["path"], format="png", files=[file_entry],
            bytes=file_entry["bytes"], sha256=file_entry["sha256"], params={"cmap": "viridis"}, error=""))
    index.append_rows(save_path, caches)
    index.append_rows(save_path, figures)
    return figures


# The `save_path` and `server` fixtures of the modules that test the viewer: each module that
# imports these gets its own save path and its own running server.
@pytest.fixture(scope="module", name="save_path")
def viewer_save_path_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return viewer_save_path(tmp_path_factory)


@pytest.fixture(scope="module", name="server")
def viewer_server_fixture(save_path: Path) -> Iterator[ViewerServer]:
    with running_server(save_path) as running:
        yield running
