"""The viewer's JSON API: routes to the endpoints that browse the index and those that read caches.

GET only; every answer is JSON; bad parameters give a 4xx with {"error": message}.
  /api/display                         display facts, sent once: colour tables, value kinds, labels
  /api/summary                         models, figure functions, layers, heads, counts
  /api/figures?model&q&prompt&function&layer&head&scope&status&offset&limit
                                       one page of figure rows + the total that match (status:
                                       shown (default: all but skipped), ok, stale, error, skipped, all)
  /api/prompts?model&q&offset&limit    one page of cached prompts (their current caches)
  /api/figure?model&prompt&function&layer&head       one figure row, with its traceback if it failed
  /api/compare?across=models|layers&model&prompt&function&layer&head
                                       the matching figure rows of other models / layers
  /api/cache?model&prompt[&settings]   a cache's metadata, settings, tokens, the values it offers
  /api/pattern?model&prompt[&settings]&layer&head    one head's attention, [query][key] float32 values
  /api/tokens?model&prompt[&settings]&value&layer&neuron&range
                                       one value per token with its colour (token_values.VALUE_KINDS)
  /api/predictions?model&prompt[&settings]   the top-k next tokens at each position, coloured
  /api/why?model&prompt[&settings]&position  why the model predicted the token after `position`: input
                                       attribution, logit attribution per head and MLP, lens trajectory
  /api/cause?model&prompt[&settings]   testing causes: the patching metric and its two runs, patching per
                                       stream site, heads' patching and ablation, MLPs' ablation (viewer/cause.py)
  /api/cause_head?model&prompt[&settings]&layer&head   one head's logit attribution, patching (and per
                                       position), ablation and head roles
  /api/next_steps?view=neurons|phrasings|pca[&model]   whether a corpus view has something to show, and
                                       if not the commands that make it (viewer/next_steps.py)
A cache is the current one of (model, prompt) unless `settings` names another settings id.
CacheApi answers the display facts and the cache endpoints for one open Cache (a notebook widget).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lens_pipeline.draw import display
from lens_pipeline.store.cache import Cache
from lens_pipeline.viewer.browse import Browse
from lens_pipeline.viewer.caches import CacheReader, IndexCaches, OneCache
from lens_pipeline.viewer.cause import cause, cause_head
from lens_pipeline.viewer.corpus import corpus_routes
from lens_pipeline.viewer.live_index import LiveIndex
from lens_pipeline.viewer.next_steps import FlagsFor, NextSteps
from lens_pipeline.viewer.params import ApiError, Params

CACHE = ("model", "prompt", "settings")  # a cache: the current one of (model, prompt), or by settings id
Routes = dict[str, tuple[Callable[[Params], Any], tuple[str, ...]]]


def cache_routes(reader: CacheReader) -> Routes:
    """The display facts and the endpoints that read one cache."""
    return {
        "/api/display": (lambda params: display.facts(), ()),
        "/api/cache": (reader.cache_info, CACHE),
        "/api/pattern": (reader.pattern, (*CACHE, "layer", "head")),
        "/api/tokens": (reader.token_values, (*CACHE, "value", "layer", "neuron", "range")),
        "/api/predictions": (reader.predictions, CACHE),
        "/api/why": (reader.why, (*CACHE, "position")),
        "/api/cause": (lambda params: reader.source.read(params, lambda cache, row, view: cause(cache, row)), CACHE),
        "/api/cause_head": (lambda params: _cause_head(reader, params), (*CACHE, "layer", "head")),
    }


def _cause_head(reader: CacheReader, params: Params) -> Any:
    params.required("model"), params.required("prompt")  # report missing parameters in order
    layer, head = params.integer("layer"), params.integer("head")
    return reader.source.read(params, lambda cache, row, view: cause_head(cache, row, layer, head))


class Api:
    routes: Routes

    def handle(self, route: str, query: str) -> Any:
        if route not in self.routes:
            raise ApiError(404, f"no API endpoint {route}; endpoints: {', '.join(self.routes)}")
        endpoint, allowed = self.routes[route]
        return endpoint(Params(query, allowed))


class ViewerApi(Api):
    """Every endpoint is a pure function of (save path, index view, query string); see ROUTES.
    `live`: the index to follow (default: the save path's index.jsonl); `flags_for`: the activations
    options for given cache settings, for the commands an empty corpus view shows (viewer/next_steps.py)."""

    def __init__(self, save_path: Path, live: LiveIndex | None = None, flags_for: FlagsFor | None = None):
        self.root = save_path.resolve()
        self.index = live or LiveIndex(self.root)
        self.browse = browse = Browse(self.root, self.index)
        self.routes = {
            **cache_routes(CacheReader(IndexCaches(self.root, self.index))),
            "/api/summary": (browse.summary, ()),
            "/api/figures": (browse.figures, ("model", "q", "prompt", "function", "layer", "head", "scope", "status",
                                              "offset", "limit")),
            "/api/prompts": (browse.prompts, ("model", "q", "offset", "limit")),
            "/api/figure": (browse.figure, ("model", "prompt", "function", "layer", "head")),
            "/api/compare": (browse.compare, ("across", "model", "prompt", "function", "layer", "head")),
            **corpus_routes(self.root),  # neuron dashboards and prompt comparisons (lens_pipeline/viewer/corpus.py)
            "/api/next_steps": (NextSteps(self.root, self.index, flags_for).answer, ("view", "model")),
        }


class CacheApi(Api):
    """The cache endpoints for one open Cache, with no index (a notebook widget's data)."""

    def __init__(self, cache: Cache):
        self.cache = cache
        self.routes = cache_routes(CacheReader(OneCache(cache)))
