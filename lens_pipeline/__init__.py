"""lens_pipeline: prompts -> model -> cache -> figures -> index -> viewer.

Stages, one package each: capture (prompts, models, extract, explain), store (cache, index),
draw (registry, built-in figures, display facts), viewer (API, page), notebook (widgets, open()),
knitting. The commands are modules here: activations, figures, server, export."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lens_pipeline.notebook.savepath import SavePath

__version__ = "0.1.0"


def open(save_path: str | os.PathLike[str]) -> "SavePath":  # noqa: A001  (lens_pipeline.open, like zipfile's)
    """A save path's current caches (filter by model, text, metadata) and figures; see lens_pipeline.notebook.savepath."""
    from lens_pipeline.notebook.savepath import open_save_path  # imported on use: the package stays light to import

    return open_save_path(save_path)


def __getattr__(name: str) -> object:
    """`from lens_pipeline import show`: the notebook widgets, imported on first use (anywidget is not light)."""
    if name == "show":
        from lens_pipeline.notebook import show

        return show
    raise AttributeError(f"module 'lens_pipeline' has no attribute {name!r}")
