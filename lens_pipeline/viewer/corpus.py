"""The viewer's corpus endpoints: neuron dashboards and prompt comparisons, as plain JSON with colours.

  /api/neurons?model                    models with dashboards; for one model, its basis per layer
  /api/neuron?model&layer&neuron        one neuron's dashboard: top contexts (tokens, values, colours),
                                        histogram, active fraction, direct effect on the output
  /api/prompt_groups?model              the prompt groups and pairs of a model's current caches
  /api/compare_prompts?model&group|prompts   a phrasing comparison (lens_pipeline/corpus/compare.py)
  /api/corpus_pca?model                 the token PCA over the whole prompt set (corpus/<model>/pca.json)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lens_pipeline.draw import colormap, display
from lens_pipeline.viewer.params import ApiError, Params

SERIES = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]  # one per prompt (tab10)


PCA_OTHER = "#cbd5e1"  # every token not highlighted


def _coloured(values: list[float], limit: float) -> dict[str, Any]:
    shown = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    colors = colormap.hex_colors(shown, colormap.SIGNED_CMAP, -limit, limit)
    return {"colors": colors, "text_colors": [colormap.text_color(c) for c in colors]}


class CorpusEndpoints:
    """Answers the corpus routes from a save path's corpus/ folder (reloaded when rebuilt)."""

    def __init__(self, save_path: Path):
        from lens_pipeline.corpus.compare import Comparisons
        from lens_pipeline.corpus.neurons import Dashboards

        self.save_path = save_path
        self.dashboards = Dashboards(save_path)
        self.comparisons = Comparisons(save_path)

    def neurons(self, params: Params) -> dict[str, Any]:
        model = params.text("model")
        models = self.dashboards.models()
        if not model:
            return {"models": models}
        try:
            return {"models": models, **self.dashboards.basis(model)}
        except KeyError as error:
            raise ApiError(404, str(error.args[0])) from None

    def neuron(self, params: Params) -> dict[str, Any]:
        model = params.required("model")
        layer, neuron = params.integer("layer", 0), params.integer("neuron", 0)
        try:
            answer = self.dashboards.neuron(model, layer, neuron)
        except KeyError as error:
            raise ApiError(404, str(error.args[0])) from None
        limit = max((abs(c["value"]) for c in answer["contexts"]), default=1.0) or 1.0
        for context in answer["contexts"]:
            context.update(_coloured(context["acts"], limit))
            context["inline"] = [display.token_inline(t) for t in context["tokens"]]
            context["shown_tokens"] = [display.token_label(t) for t in context["tokens"]]
        answer["vmin"], answer["vmax"], answer["cmap"] = -limit, limit, colormap.SIGNED_CMAP
        edges = answer["hist_edges"]
        answer["hist_labels"] = ([f"< {edges[0]:g}"] + [f"{a:g} .. {b:g}" for a, b in zip(edges, edges[1:])]
                                 + [f">= {edges[-1]:g}"])
        return answer

    def pca(self, params: Params) -> dict[str, Any]:
        from lens_pipeline.corpus.neurons import corpus_dir

        model = params.required("model")
        try:
            answer = json.loads((corpus_dir(self.save_path, model) / "pca.json").read_text())
        except OSError:
            raise ApiError(404, f"no corpus PCA for {model}: run python -m lens_pipeline.corpus --pca") from None
        answer["colors"] = {"other": PCA_OTHER, "highlight": SERIES[3]}
        return answer

    def groups(self, params: Params) -> dict[str, Any]:
        return self.comparisons.groups(params.required("model"))

    def compare(self, params: Params) -> dict[str, Any]:
        model = params.required("model")
        group, prompts = params.text("group"), [p for p in params.text("prompts").split(",") if p]
        if not group and len(prompts) < 2:
            raise ApiError(400, "give group=NAME or prompts=HASH,HASH (two or more)")
        try:
            answer = self.comparisons.compare(model, group=group or None, prompts=prompts or None)
        except KeyError as error:
            raise ApiError(404, str(error.args[0])) from None
        answer["series_colors"] = [SERIES[i % len(SERIES)] for i in range(len(answer["prompts"]))]
        for stat in answer["heads"].values():  # each prompt's difference from the first, on one symmetric scale
            diff = np.asarray(stat["difference"], dtype=np.float32)
            limit = float(np.abs(diff).max()) or 1.0
            stat["limit"] = limit
            stat["difference_colors"] = [[colormap.hex_colors(row, colormap.SIGNED_CMAP, -limit, limit) for row in grid]
                                         for grid in diff]
        answer["cmap"] = colormap.SIGNED_CMAP
        return answer


def corpus_routes(save_path: Path) -> dict[str, tuple[Callable[[Params], Any], tuple[str, ...]]]:
    """The routes ViewerApi adds for the corpus views."""
    endpoints = CorpusEndpoints(save_path)
    return {
        "/api/neurons": (endpoints.neurons, ("model",)),
        "/api/neuron": (endpoints.neuron, ("model", "layer", "neuron")),
        "/api/prompt_groups": (endpoints.groups, ("model",)),
        "/api/corpus_pca": (endpoints.pca, ("model",)),
        "/api/compare_prompts": (endpoints.compare, ("model", "group", "prompts")),
    }
