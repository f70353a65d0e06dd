"""Every figure `python -m lens_pipeline.figures --list` shows is drawn once from the command line,
on SmolLM2 caches made by the documented commands: the corpus path of docs (activations with a
shared neuron basis, then `python -m lens_pipeline.corpus`, then the figures stage).

Figures marked "(only when named with --figures)" in --list are drawn here because `--figures '*'`
names them all.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, python_cmd, write_jsonl
from lens_pipeline.store import index

pytestmark = pytest.mark.slow

PROMPTS = [
    {"id": "fr1", "group": "capital", "text": "The capital of France is"},
    {"id": "fr2", "group": "capital", "text": "The capital city of France is"},
    {"id": "cat", "pair": "dog", "text": "The cat sat on the mat, and then it slept."},
    {"id": "dog", "pair": "cat", "text": "The dog sat on the mat, and then it barked."},
    {"text": "Friends, Romans, countrymen, lend me your ears.", "target": " I"},
    {"text": "Brevity is the soul of wit.", "target_positions": "all"},  # attribution_matrix needs several targets
]
# The causal figures need a prompt pair patched and ablated (docs/causal.md): short, so the heads x positions sweep stays quick.
CAUSAL_PROMPTS = [{"id": "ioi", "text": "Mary met John. John thanked", "corrupt": "Mary met John. Mary thanked",
                   "contrast": [" Mary", " John"]}]
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(python_cmd(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def listed_figures() -> list[str]:
    """The figure names as --list prints them (each entry's first word)."""
    out = run("-m", "lens_pipeline.figures", "--list").stdout
    return [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("every_figure")
    prompts = write_jsonl(folder / "prompts.jsonl", PROMPTS)
    save = folder / "save"
    run("-m", "lens_pipeline.activations", "--model", "smollm2", "--prompts", str(prompts), "--save-path", str(save),
        "--neuron-basis", "variance", "--neurons", "4", "--logit-lens", "--attribution", "all", "--ig-steps", "8",
        "--logit-attribution", "--lens-trajectory", "--embedding-views", "--quiet")
    causal = write_jsonl(folder / "causal.jsonl", CAUSAL_PROMPTS)
    run("-m", "lens_pipeline.activations", "--model", "smollm2", "--prompts", str(causal), "--save-path", str(save),
        "--neuron-basis", "variance", "--neurons", "4", "--patch", "resid_pre,heads,heads_pos", "--ablate", "heads,mlp",
        "--attribution-patching", "--quiet")
    run("-m", "lens_pipeline.corpus", "--save-path", str(save), "--pca", "--top-k", "3", "--window", "2")
    figures = run("-m", "lens_pipeline.figures", "--save-path", str(save), "--figures", "*", "--layers", "0",
                  "--heads", "0", "--param", "knitting_pattern.width=10", "--param", "knitting_pattern.height=10",
                  "--workers", "2", "--quiet")
    return save, figures


def test_every_listed_figure_is_drawn_from_the_cli(drawn: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    save, figures = drawn
    assert re.search(r"done: \d+ figure\(s\) written .* 0 failed", figures.stderr), figures.stderr
    rows = [row for row in index.latest(index.read_rows(save)).values() if row["kind"] == "figure"]
    by_status: dict[str, set[str]] = {}
    for row in rows:
        by_status.setdefault(row["status"], set()).add(row["function"])
    names = listed_figures()
    assert len(names) > 30, names
    not_drawn = [name for name in names if name not in by_status.get("ok", set())]
    skipped = {row["function"]: row.get("reason") for row in rows if row["status"] == "skipped"}
    assert not not_drawn, {name: skipped.get(name, "no ok row") for name in not_drawn}
    assert "error" not in by_status, [row["error"] for row in rows if row["status"] == "error"][:3]


def test_the_corpus_figures_write_a_page_per_layer(drawn: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """neuron_dashboards returns one matplotlib figure per layer: each a PNG file of its row."""
    save, _ = drawn
    (row,) = [r for r in index.latest(index.read_rows(save)).values()
              if r["kind"] == "figure" and r["function"] == "neuron_dashboards"]
    paths = [entry["path"] for entry in row["files"]]
    assert [Path(p).name for p in paths] == [f"L{layer:02d}.png" for layer in range(30)]
    for path in paths:
        assert (save / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (comparison,) = [r for r in index.latest(index.read_rows(save)).values()
                     if r["kind"] == "figure" and r["function"] == "phrasing_comparison"]
    assert sorted(Path(entry["path"]).name for entry in comparison["files"]) == ["capital.png", "pair_cat_dog.png"]
