"""Index rows as the page sees them: how a figure is shown (its view, and which of its files is
the picture, the chart, the written pattern), its status as shown, and how a cache was made.
The page never guesses any of this from file names."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import PurePosixPath
from typing import Any, Callable

from lens_pipeline.draw import display
from lens_pipeline.draw.registry import REGISTRY, VIEWS, FigureSpec, default_view
from lens_pipeline.store.cache import ExtractSettings
from lens_pipeline.viewer.live_index import IndexView
from lens_pipeline.viewer.params import file_url

# The knitting figure writes one svg (the chart) and the written pattern as txt (read first: plain
# text suits screen readers) and md.
KNITTING_PARTS = {"chart": ("svg",), "pattern": ("txt", "md")}


@functools.cache
def _builtins_registered() -> None:
    import lens_pipeline.draw.builtins  # noqa: F401  (registers the built-in figures)


def _spec(function: str) -> FigureSpec | None:
    _builtins_registered()
    return REGISTRY.get(function)


def file_entries(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file of a figure row: path, url, bytes, format (from the name for rows that lack it)."""
    files = [f for f in (row.get("files") or []) if isinstance(f, dict)]
    if not files and row.get("path"):
        files = [{"path": row["path"], "bytes": row.get("bytes"), "format": row.get("format")}]
    return [{"path": str(f.get("path", "")), "url": file_url(str(f.get("path", ""))), "bytes": f.get("bytes"),
             "format": f.get("format") or PurePosixPath(str(f.get("path", ""))).suffix.lstrip(".")} for f in files]


def figure_view(row: dict[str, Any], files: list[dict[str, Any]]) -> str:
    """The row's recorded view; for rows written before views were recorded, the registered
    figure's, else what its formats suggest (registry.default_view)."""
    if row.get("view") in VIEWS:
        return row["view"]
    spec = _spec(str(row.get("function", "")))
    if spec is not None:
        return spec.view
    return default_view(tuple(f["format"] for f in files) or (str(row.get("format") or "txt"),))


def file_roles(view: str, files: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """image: the picture a thumbnail shows; main: the file the view shows; pattern: (knitting) the
    written pattern."""
    def first(formats: tuple[str, ...]) -> dict[str, Any] | None:
        return next((f for fmt in formats for f in files if f["format"] == fmt), None)

    if view == "knitting":
        chart = first(KNITTING_PARTS["chart"])
        return {"image": chart, "main": chart, "pattern": first(KNITTING_PARTS["pattern"])}
    image = next((f for f in files if default_view((f["format"],)) == "image"), None)
    shown_as = "html" if view == "interactive" else view  # an interactive figure is an HTML page that runs scripts
    main = image if view == "image" else next((f for f in files if default_view((f["format"],)) == shown_as), None)
    return {"image": image, "main": main, "pattern": None}


def _heatmap_cells(n_tokens: int, params: dict[str, Any]) -> tuple[int, int]:
    from lens_pipeline.draw.builtins.attention import first_shown, pixel_scale

    first = first_shown(n_tokens, bool(params["skip_first"]))
    return first, pixel_scale(n_tokens - first, int(params["side"]))


# Figures whose picture is one head's token x token cells from the image's top-left corner (queries
# down, keys across) -> (first token shown, pixels per cell) by the figure's own rules (attention.py).
TOKEN_GRIDS: dict[str, Callable[[int, dict[str, Any]], tuple[int, int]]] = {"attention_heatmap": _heatmap_cells}


def token_grid(row: dict[str, Any], view: IndexView) -> dict[str, Any] | None:
    """Where a one-head picture's token cells lie, so the page can write the tokens along its axes:
    the tokens first..first+count-1 of the cache it was drawn from (settings_id), `cell` image pixels each."""
    cells = TOKEN_GRIDS.get(str(row.get("function")))
    if cells is None or row.get("status") not in ("ok", "stale") or (spec := _spec(str(row["function"]))) is None:
        return None
    key = (row.get("model", ""), row.get("prompt_hash", ""))
    drawn_from = next((r for r in view.cache_rows.get(key, []) if r.get("path") == row.get("cache_path")),
                      view.caches.get(key))
    n_tokens = (drawn_from or {}).get("n_tokens")
    if not isinstance(n_tokens, int):
        return None
    try:
        first, cell = cells(n_tokens, {**spec.params, **(row.get("params") or {})})
    except (KeyError, TypeError, ValueError):
        return None
    current = view.current.get(key)
    return {"first": first, "count": n_tokens - first, "cell": cell,
            "settings_id": "" if drawn_from is current else str(drawn_from.get("settings_id", ""))}


def public_row(row: dict[str, Any], view: IndexView, full: bool = False) -> dict[str, Any]:
    """A figure row for the page; `full` adds the traceback of a failed figure and, for a picture of
    one head's tokens, where they lie on it (token_grid)."""
    files = file_entries(row)
    shown = figure_view(row, files)
    status, reason = view.figure_status(row)
    path = str(row.get("path") or "")
    public = {
        "model": row.get("model", ""), "prompt_hash": row.get("prompt_hash", ""),
        "function": row.get("function", ""), "scope": row.get("scope", ""),
        "layer": row.get("layer"), "head": row.get("head"), "format": row.get("format", ""),
        "path": path, "url": file_url(path) if path else "", "files": files,
        "bytes": row.get("bytes"), "status": status, "reason": reason, "error": row.get("error", ""),
        "params": row.get("params") or {}, "created": row.get("created", ""),
        "text": view.text_of(row)[:200], "view": shown, **file_roles(shown, files),
        "note": view.notes.get(id(row), ""),  # e.g. in an export: what of its input the export lacks
    }
    if full:
        public["traceback"] = str(row.get("traceback") or "")
        public["cache_path"] = row.get("cache_path") or ""
        public["token_grid"] = token_grid(row, view)
    return public


def recorded_settings(params: dict[str, Any]) -> ExtractSettings:
    """The ExtractSettings a cache was made with, from its recorded settings; fields this version
    does not know are left out, and settings it cannot read are the defaults."""
    known = {f.name for f in dataclasses.fields(ExtractSettings)}
    try:
        return ExtractSettings(**{name: value for name, value in params.items() if name in known})
    except (TypeError, ValueError):
        return ExtractSettings()


def cache_settings(row: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """How a cache was made: its settings id, the settings (from its meta when open), and them as
    [label, value] pairs; `explains`: it holds an explanation of a prediction (the `why` view); `tests_causes`:
    patching or ablation (the `cause` view)."""
    params = (meta or {}).get("settings") or row.get("params") or {}
    recorded = recorded_settings(params)
    return {"settings_id": row.get("settings_id", ""), "settings": params, "explains": recorded.explains,
            "tests_causes": recorded.causal,
            "settings_text": display.settings_summary(params, meta), "created": row.get("created", "")}


def prompt_row(row: dict[str, Any], view: IndexView) -> dict[str, Any]:
    """A cached (model, prompt) for the prompt list: its current cache (else its newest row)."""
    key = (row.get("model", ""), row.get("prompt_hash", ""))
    return {"model": key[0], "prompt_hash": key[1], "text": str(row.get("text") or ""),
            "n_tokens": row.get("n_tokens"), "status": row.get("status", "ok"),
            "error": row.get("error", "") or row.get("reason", ""), "metadata": row.get("prompt_metadata") or {},
            "n_settings": len(view.cache_rows.get(key, [])), **cache_settings(row)}
