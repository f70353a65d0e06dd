"""The web viewer's server side: a read-only JSON API over one save path (lens_pipeline.server
serves it with the static page). Modules: params (query parameters, paths inside the save path),
rows (index rows as the page sees them), browse (index endpoints), caches (cache-file endpoints),
why (one prediction explained), cause (patching, ablation and head roles of a prompt and a head),
next_steps (the commands an empty corpus view shows), api (the routes), transport (answers kept in
tables: packing, keys), bundle (the page's ES modules as one script, for a notebook widget and a
static export)."""

from lens_pipeline.viewer.api import CacheApi, ViewerApi
from lens_pipeline.viewer.params import ApiError, Params, resolve_inside

__all__ = ["ApiError", "CacheApi", "Params", "ViewerApi", "resolve_inside"]
