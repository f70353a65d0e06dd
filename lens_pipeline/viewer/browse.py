"""The endpoints that browse the index: summary, figure pages, prompts, one figure, comparisons."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

from lens_pipeline.draw.display import FIGURE_STATUSES
from lens_pipeline.version import __version__
from lens_pipeline.viewer.live_index import IndexView, LiveIndex
from lens_pipeline.viewer.params import ApiError, Params
from lens_pipeline.viewer.rows import prompt_row, public_row

MAX_PAGE = 500


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


def _where(model: str, function: str, layer: int | None, head: int | None) -> str:
    return f"{model} {function}" + (f" L{layer}" if layer is not None else "") + (f" H{head}" if head is not None else "")


class Browse:
    """Answers from the index alone (no cache file is opened)."""

    def __init__(self, root: Path, live: LiveIndex):
        self.root, self.index = root, live

    def page(self, rows: list[dict[str, Any]], params: Params, view: IndexView,
             shape: Callable[[dict[str, Any], IndexView], dict[str, Any]]) -> dict[str, Any]:
        offset = params.integer("offset", 0)
        limit = params.integer("limit", 60, low=1, high=MAX_PAGE)
        return {"total": len(rows), "offset": offset, "limit": limit, "version": view.version,
                "rows": [shape(r, view) for r in rows[offset : offset + limit]]}

    def summary(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        if view.summary is None:
            view.summary = self._summary(view)
        return view.summary

    def _summary(self, view: IndexView) -> dict[str, Any]:
        tally: Counter[tuple[str, str, str, str]] = Counter()  # (model, function, scope, status) -> figures
        layers, heads = set(), set()
        status_of = view.figure_status
        for row in view.figures:
            status = status_of(row)[0]
            tally[(row.get("model", ""), row.get("function", ""), row.get("scope", ""), status)] += 1
            if status != "skipped":  # counted apart, like the grid shows them apart
                layers.add(row.get("layer"))
                heads.add(row.get("head"))
        models = {name: {"name": name, "prompts": 0, "figures": 0, "errors": 0, "stale": 0} for name, _ in view.caches}
        for name, _ in view.caches:
            models[name]["prompts"] += 1
        functions: dict[str, dict[str, Any]] = {}
        counts: Counter[str] = Counter()
        for (model, function, scope, status), n in tally.items():
            counts[status] += n
            if status == "skipped":
                continue
            entry = models.setdefault(model, {"name": model, "prompts": 0, "figures": 0, "errors": 0, "stale": 0})
            entry["figures"] += n
            entry["errors"] += n if status == "error" else 0
            entry["stale"] += n if status == "stale" else 0
            functions.setdefault(function, {"name": function, "scope": scope, "count": 0})["count"] += n
        return {
            "save_path": self.root.name, "tool_version": __version__, "version": view.version,
            "index_exists": self.index.path.exists(), "bad_lines": view.bad_lines,
            "models": sorted(models.values(), key=lambda m: m["name"]),
            "functions": sorted(functions.values(), key=lambda f: f["name"]),
            "layers": sorted(x for x in layers if isinstance(x, int)), "heads": sorted(x for x in heads if isinstance(x, int)),
            "n_figures": len(view.figures) - counts["skipped"], "n_skipped": counts["skipped"],
            "n_stale": counts["stale"], "n_errors": counts["error"], "n_caches": len(view.caches),
        }

    def figures(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        return self.page(self.matching(params, view), params, view, public_row)

    def matching(self, params: Params, view: IndexView) -> list[dict[str, Any]]:
        """The figure rows of `view` that /api/figures answers for `params`, in index order."""
        model, prompt, function = params.text("model"), params.text("prompt"), params.text("function")
        scope, q = params.text("scope"), params.text("q").strip().lower()
        layer, head = params.integer("layer"), params.integer("head")
        # Default ("shown"): every figure but the skipped ones (a figure that does not apply here).
        status = params.choice("status", FIGURE_STATUSES, "shown")

        def wanted(row: dict[str, Any]) -> bool:
            shown = view.figure_status(row)[0]
            return status == "all" or shown == status or (status == "shown" and shown != "skipped")

        def select() -> list[dict[str, Any]]:
            hashes = None
            if q:  # the prompt search runs over the (few) prompts, then figures match by hash
                hashes = {key for key, text in view.texts.items() if q in text.lower() or key[1].startswith(q)}
            return [
                row for row in view.figures
                if (not model or row.get("model") == model)
                and (not prompt or row.get("prompt_hash") == prompt)
                and (not function or row.get("function") == function)
                and (not scope or row.get("scope") == scope)
                and (layer is None or row.get("layer") == layer)
                and (head is None or row.get("head") == head)
                and wanted(row)
                and (hashes is None or (row.get("model", ""), row.get("prompt_hash", "")) in hashes)
            ]

        key = ("figures", view.version, model, prompt, function, scope, q, layer, head, status)
        return view.memo(key, select)

    def prompts(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        return self.page(self.matching_prompts(params, view), params, view, prompt_row)

    def matching_prompts(self, params: Params, view: IndexView) -> list[dict[str, Any]]:
        """The cache rows of `view` that /api/prompts answers for `params`, in index order."""
        model, q = params.text("model"), params.text("q").strip().lower()
        return [row for key, row in view.caches.items()
                if (not model or key[0] == model) and (not q or q in view.texts[key].lower() or key[1].startswith(q))]

    def figure(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        model, function = params.required("model"), params.required("function")
        prompt, layer, head = params.text("prompt"), params.integer("layer"), params.integer("head")
        for row in reversed(view.figures):  # linear, but only for single-figure pages
            if (row.get("model") == model and row.get("prompt_hash", "") == prompt and row.get("function") == function
                    and row.get("layer") == layer and row.get("head") == head):
                return public_row(row, view, full=True)
        raise ApiError(404, f"no figure {_where(model, function, layer, head)} for prompt {prompt or '(none)'} in the index")

    def compare(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        across = params.choice("across", ("models", "layers"), "models")
        model, function = params.required("model"), params.required("function")
        prompt, layer, head = params.text("prompt"), params.integer("layer"), params.integer("head")
        if across == "models":
            text = view.texts.get((model, prompt))
            if prompt and text is None:
                raise ApiError(404, f"prompt {prompt} of {model} is not in the index")
            # The same prompt has a different hash per model (the hash covers the model): match by text.
            same = {key for key, t in view.texts.items() if t == text} if prompt else None
            rows = [r for r in view.figures if r.get("function") == function and r.get("layer") == layer
                    and r.get("head") == head
                    and ((r.get("model", ""), r.get("prompt_hash", "")) in same if same is not None
                         else not r.get("prompt_hash"))]
        else:
            rows = [r for r in view.figures if r.get("model") == model and r.get("prompt_hash", "") == prompt
                    and r.get("function") == function and r.get("head") == head and r.get("layer") is not None]
            rows.sort(key=lambda r: _int_or(r.get("layer"), -1))
        return {"across": across, "total": len(rows), "rows": [public_row(r, view) for r in rows]}
