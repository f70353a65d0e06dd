"""The README states what the code defines: a test fails when a figure, a model source or a cache
array is added without being documented, or when the README's cache table drifts from the code."""

from __future__ import annotations

from pathlib import Path

from lens_pipeline.capture import models
from lens_pipeline.draw.registry import REGISTRY
from lens_pipeline.figures import load_builtins
from lens_pipeline.store.cache import arrays_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_cache_table_is_the_code_table() -> None:
    assert arrays_markdown() in README


def test_every_builtin_figure_is_in_the_readme() -> None:
    load_builtins()
    builtins = [name for name, spec in REGISTRY.items() if spec.func.__module__.startswith("lens_pipeline.")]
    missing = [name for name in builtins if f"`{name}`" not in README]
    assert not missing, f"figures missing from the README's figure table: {missing}"


def test_every_model_source_is_in_the_readme() -> None:
    missing = [name for name in models.MODEL_SOURCES if f"`{name}`" not in README]
    assert not missing, f"model sources missing from the README: {missing}"
