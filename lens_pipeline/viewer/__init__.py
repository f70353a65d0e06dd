"""The web viewer's server side: a read-only JSON API over one save path (lens_pipeline.server
serves it with the static page). Modules: params (query parameters, paths inside the save path),
rows (index rows as the page sees them), browse (index endpoints), caches (cache-file endpoints),
api (the routes)."""

from lens_pipeline.viewer.api import ViewerApi
from lens_pipeline.viewer.params import ApiError, Params, resolve_inside

__all__ = ["ApiError", "Params", "ViewerApi", "resolve_inside"]
