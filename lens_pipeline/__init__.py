"""lens_pipeline: prompts -> model -> cache -> figures -> index -> viewer.

Stages, one package each, ground up (each imports only the ones below it: [tool.importlinter] in
pyproject.toml, kept by tests/test_structure.py): store (cache, index; beside it knitting and
distributed.py), capture (prompts, models, extract, explain), corpus (across a model's prompts),
draw (registry, built-in figures, display facts), figures, viewer (API, page), notebook (widgets,
open()). The commands on top: activations, server, export (and figures, corpus, knitting.survey,
each inside its own package).

This module is the package's front: `lens_pipeline.open`, and `show`, `register_figure` and
`run_figures` imported on first use, so `import lens_pipeline` stays light."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lens_pipeline.version import __version__ as __version__  # lens_pipeline.__version__

if TYPE_CHECKING:
    from lens_pipeline.notebook.savepath import SavePath


def open(save_path: str | os.PathLike[str]) -> "SavePath":  # noqa: A001  (lens_pipeline.open, like zipfile's)
    """A save path's current caches (filter by model, text, metadata) and figures; see lens_pipeline.notebook.savepath."""
    from lens_pipeline.notebook.savepath import open_save_path  # imported on use: the package stays light to import

    return open_save_path(save_path)


def __getattr__(name: str) -> object:
    """`from lens_pipeline import show, register_figure, run_figures`: each imported on first use
    (the notebook widgets import anywidget, the figures stage matplotlib and the built-in figures)."""
    if name == "show":
        from lens_pipeline.notebook import show

        return show
    if name == "register_figure":
        from lens_pipeline.draw.registry import register_figure

        return register_figure
    if name == "run_figures":
        from lens_pipeline.figures import run_figures

        return run_figures
    raise AttributeError(f"module 'lens_pipeline' has no attribute {name!r}")
