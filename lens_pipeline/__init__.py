"""lens_pipeline: prompts -> model -> cache -> figures -> index -> viewer."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lens_pipeline.savepath import SavePath

__version__ = "0.1.0"


def open(save_path: str | os.PathLike[str]) -> "SavePath":  # noqa: A001  (lens_pipeline.open, like zipfile's)
    """A save path's current caches (filter by model, text, metadata) and figures; see lens_pipeline.savepath."""
    from lens_pipeline.savepath import open_save_path  # imported on use: the package stays light to import

    return open_save_path(save_path)
