"""The figures stage itself: registry, resume, failures, parameters, workers, CLI, notebook use.
Caches come from the real activations stage on a tiny seeded random-weight Llama (fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from conftest import MIXED_PROMPTS, REPO, write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.draw.registry import REGISTRY, SkipFigure, register_figure
from lens_pipeline.figures import parse_range, run_figures
from lens_pipeline.store import index

CALLS: list[str] = []


@register_figure(scope="head", formats="png")
def fig_grey_head(cache, layer, head, gain=1.0):
    """Grey attention image (test figure)."""
    return PIL.Image.fromarray(np.clip(cache.pattern(layer, head) * 255 * gain, 0, 255).astype(np.uint8))


@register_figure(scope="prompt", formats=("json", "md"))
def fig_two_files(cache):
    """Two files from one call (test figure)."""
    if cache.n_tokens < 4:
        raise SkipFigure("too short")
    return {"json": {"tokens": cache.tokens}, "notes.md": f"# {cache.n_tokens} tokens"}


@register_figure(scope="prompt", formats="txt")
def fig_flaky(cache, fail=True):
    """Fails while fail=True (test figure)."""
    CALLS.append(cache.prompt_hash)
    if fail:
        raise RuntimeError("boom")
    return "fine"


@register_figure(scope="model", formats="json")
def fig_count(caches):
    """Number of prompts of a model (test figure)."""
    return {"prompts": len(caches)}


@pytest.fixture(scope="module")
def save_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("figures_stage")
    prompts = write_jsonl(root / "p.jsonl", MIXED_PROMPTS)
    run_activations("tiny-llama", prompts, root, random_weights=True, progress=False)
    return root


def figure_rows(save: Path, function: str) -> list[dict]:
    return [r for r in index.read_rows(save) if r.get("function") == function]


def test_head_figures_are_written_indexed_and_resumed(save_path: Path) -> None:
    first = run_figures(save_path, figures=["fig_grey_head"], layers="0", heads="0,1", progress=False)
    assert first.written == len(MIXED_PROMPTS) * 2 and first.failed == 0
    row = first.rows[0]
    data = (save_path / row["path"]).read_bytes()
    assert row["bytes"] == len(data) and row["sha256"] == index.sha256_bytes(data)
    assert row["layer"] == 0 and row["head"] in (0, 1) and row["params"] == {"gain": 1.0}
    # The image is the cached pattern: pixel = round-down of weight * 255.
    from lens_pipeline.store.cache import Cache

    cache_row = next(r for r in index.read_rows(save_path) if r["kind"] == "cache" and r["prompt_hash"] == row["prompt_hash"])
    pattern = Cache(save_path / cache_row["path"]).pattern(0, row["head"])
    assert np.array_equal(np.asarray(PIL.Image.open(save_path / row["path"])), (pattern * 255).astype(np.uint8))
    again = run_figures(save_path, figures=["fig_grey_head"], layers="0", heads="0,1", progress=False)
    assert again.written == 0 and again.skipped == first.written
    changed = run_figures(save_path, figures=["fig_grey_head"], layers="0", heads="0",
                          params={"fig_grey_head": {"gain": 2.0}}, progress=False)
    assert changed.written == len(MIXED_PROMPTS)  # other params: a different figure, redrawn


def test_failures_are_recorded_and_retried_skips_are_not(save_path: Path) -> None:
    CALLS.clear()
    failed = run_figures(save_path, figures=["fig_flaky", "fig_two_files"], progress=False)
    assert failed.failed == len(MIXED_PROMPTS)
    errors = [r for r in figure_rows(save_path, "fig_flaky") if r["status"] == "error"]
    assert len(errors) == len(MIXED_PROMPTS) and errors[0]["error"] == "RuntimeError: boom"
    skipped = [r for r in figure_rows(save_path, "fig_two_files") if r["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["reason"] == "too short"  # "Hi": BOS + 1 token
    two = next(r for r in figure_rows(save_path, "fig_two_files") if r["status"] == "ok")
    assert sorted(Path(f["path"]).name for f in two["files"]) == ["fig_two_files.json", "notes.md"]
    CALLS.clear()
    retried = run_figures(save_path, figures=["fig_flaky", "fig_two_files"], progress=False,
                          params={"fig_flaky": {"fail": False}})
    assert retried.written == len(MIXED_PROMPTS) and retried.failed == 0
    assert len(CALLS) == len(MIXED_PROMPTS)  # only the failed ones ran again; two_files was done


def test_model_scope_sees_every_prompt_and_is_resumed(save_path: Path) -> None:
    result = run_figures(save_path, figures=["fig_count"], progress=False)
    (row,) = result.rows
    assert json.loads((save_path / row["path"]).read_text()) == {"prompts": len(MIXED_PROMPTS)}
    assert run_figures(save_path, figures=["fig_count"], progress=False).written == 0


def test_workers_give_the_same_files_as_one_process(save_path: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(save_path, copy, ignore=shutil.ignore_patterns("figures", "index.jsonl"))
    shutil.copy(save_path / "index.jsonl", copy / "index.jsonl")
    one = run_figures(save_path, figures=["fig_grey_head"], layers="1", force=True, progress=False)
    two = run_figures(copy, figures=["fig_grey_head"], layers="1", force=True, workers=2, progress=False)
    assert one.written == two.written > 0
    for row in one.rows:
        assert (save_path / row["path"]).read_bytes() == (copy / row["path"]).read_bytes()


def test_parse_range_and_unknown_figure() -> None:
    assert parse_range("0-2,5") == {0, 1, 2, 5} and parse_range("") is None
    with pytest.raises(ValueError, match="bad range"):
        parse_range("a-b")
    with pytest.raises(ValueError, match="no registered figure"):
        run_figures("/nonexistent", figures=["no_such_figure_*"], progress=False)


def test_cli_list_and_missing_index(tmp_path: Path) -> None:
    listed = subprocess.run([sys.executable, "-m", "lens_pipeline.figures", "--list"], capture_output=True, text=True, cwd=REPO)
    assert listed.returncode == 0 and "attention_heatmap" in listed.stdout and "knitting_pattern" in listed.stdout
    missing = subprocess.run([sys.executable, "-m", "lens_pipeline.figures", "--save-path", str(tmp_path)],
                             capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and "run python -m lens_pipeline.activations first" in missing.stderr


def test_notebook_example_script_runs_and_finds_the_known_previous_token_head(tmp_path: Path) -> None:
    """scripts/example_custom_figure.py: decorate, run, file + index row. On SmolLM2 the strongest
    previous-token head is L16H0 (models.md measured 0.88 on other text)."""
    result = subprocess.run([sys.executable, "scripts/example_custom_figure.py", "--save-path", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote 60 figure(s)" in result.stdout
    assert "strongest previous-token head: L16H0" in result.stdout
    assert len(figure_rows(tmp_path, "previous_token_score")) == 60


def teardown_module() -> None:
    for name in ("fig_grey_head", "fig_two_files", "fig_flaky", "fig_count"):
        REGISTRY.pop(name, None)  # keep other test modules' "all figures" runs unchanged
