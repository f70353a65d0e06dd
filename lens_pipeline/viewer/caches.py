"""The endpoints that read cache files: a cache's metadata, one head's attention, per-token values.
They read the current cache of a (model, prompt) unless `settings` names another one."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lens_pipeline import colormap, display
from lens_pipeline.cache import Cache, CacheError
from lens_pipeline.live_index import IndexView, LiveIndex
from lens_pipeline.token_values import RANGES, VALUE_KINDS, ValueUnavailable, kind_choices, per_token_values
from lens_pipeline.viewer.params import ApiError, Params, resolve_inside
from lens_pipeline.viewer.rows import cache_settings


class CachePool:
    """A few open caches, reused across requests (each keeps what it has decompressed).

    One lock for all: a Cache's zstd decompressor must not be used by two threads at once, and
    the reads it guards take milliseconds."""

    def __init__(self, size: int = 8):
        self._open: OrderedDict[tuple[Path, int, int], Cache] = OrderedDict()
        self._size = size
        self.lock = threading.Lock()

    def get(self, path: Path) -> Cache:
        """Call with `lock` held."""
        try:
            stat = path.stat()
        except OSError:
            raise ApiError(404, f"cache file {path.name} is missing; rerun the activations stage to recreate it") from None
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        try:
            cache = Cache(path)
        except CacheError as error:
            raise ApiError(500, f"cache file {path.name} is corrupt: {error}; rerun activations with --force") from None
        self._open[key] = cache
        while len(self._open) > self._size:
            self._open.popitem(last=False)[1].close()
        return cache


def finite(array: np.ndarray) -> list[Any]:
    """Nested lists for JSON; inf/NaN (possible in float16 activations) become null."""
    values = np.asarray(array, dtype=np.float64)  # float32/float16 -> float64 is exact
    return values.tolist() if np.isfinite(values).all() else _nan_to_none(values.tolist())


def _nan_to_none(values: Any) -> Any:
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return values if np.isfinite(values) else None


def cache_row(view: IndexView, model: str, prompt: str, settings: str = "") -> dict[str, Any]:
    """The current cache row of (model, prompt), or the one made with `settings`; ApiError(404) if none."""
    rows = view.cache_rows.get((model, prompt))
    if not rows:
        raise ApiError(404, f"no cache for model {model!r} and prompt {prompt!r} in the index")
    if settings:
        row = next((r for r in reversed(rows) if r.get("settings_id", "") == settings), None)
        if row is None:
            raise ApiError(404, f"no cache of this prompt made with settings {settings!r}")
    else:
        row = view.current.get((model, prompt)) or rows[-1]
    if row.get("status") != "ok":
        why = row.get("error") or row.get("reason") or "unknown error"
        raise ApiError(404, f"the cache for this prompt failed to build: {why}")
    return row


class CacheReader:
    """Answers read from the cache files the index names."""

    def __init__(self, root: Path, live: LiveIndex):
        self.root, self.index, self.caches = root, live, CachePool()

    def _with_cache(self, params: Params, read: Callable[[Cache, dict[str, Any], IndexView], Any]) -> Any:
        view = self.index.view()
        row = cache_row(view, params.required("model"), params.required("prompt"), params.text("settings"))
        path = resolve_inside(self.root, str(row.get("path", "")))
        with self.caches.lock:
            cache = self.caches.get(path)
            try:
                return read(cache, row, view)
            except CacheError as error:
                raise ApiError(500, f"cache file {path.name} is corrupt: {error}; rerun activations with --force") from None

    def cache_info(self, params: Params) -> dict[str, Any]:
        def read(cache: Cache, row: dict[str, Any], view: IndexView) -> dict[str, Any]:
            key = (cache.model, cache.prompt_hash)
            same_text = [{"model": k[0], "prompt_hash": k[1]} for k, text in view.texts.items()
                         if text == view.texts.get(key) and k[0] != cache.model]
            current = view.current.get(key)
            others = [dict(cache_settings(r), current=r is current) for r in view.cache_rows.get(key, [])
                      if r is not row and r.get("status") == "ok"]
            return {
                "model": cache.model, "prompt_hash": cache.prompt_hash, "text": cache.text,
                "family": cache.family, "causal": cache.causal, "n_layers": cache.n_layers,
                "n_heads": cache.n_heads, "n_tokens": cache.n_tokens, "tokens": cache.tokens,
                "shown_tokens": [display.token_label(t) for t in cache.tokens],
                "pattern_encoding": cache.meta.get("pattern_encoding"),
                "pattern_max_error": cache.meta.get("pattern_max_error"),
                "note": cache.meta.get("note", ""), "arrays": cache.names(),
                "has_logit_lens": cache.has("logit_lens_probs"),
                "neuron_ids": cache.neuron_ids.tolist() if cache.has("neuron_ids") else [],
                "value_kinds": kind_choices(cache), "same_text": same_text,
                "is_current": row is current, "other_settings": others,
                **cache_settings(row, cache.meta),
            }

        return self._with_cache(params, read)

    def pattern(self, params: Params) -> dict[str, Any]:
        params.required("model"), params.required("prompt")  # report missing parameters in order
        layer, head = params.integer("layer"), params.integer("head")
        if layer is None or head is None:
            raise ApiError(400, "parameters 'layer' and 'head' are required")

        def read(cache: Cache, row: dict[str, Any], view: IndexView) -> dict[str, Any]:
            if layer >= cache.n_layers:
                raise ApiError(400, f"layer {layer} is out of range: {cache.model} has layers 0..{cache.n_layers - 1}")
            if head >= cache.n_heads:
                raise ApiError(400, f"head {head} is out of range: {cache.model} has heads 0..{cache.n_heads - 1}")
            return {
                "model": cache.model, "prompt_hash": cache.prompt_hash, "layer": layer, "head": head,
                "settings_id": row.get("settings_id", ""),
                "n_layers": cache.n_layers, "n_heads": cache.n_heads, "causal": cache.causal,
                "tokens": cache.tokens, "shown_tokens": [display.token_label(t) for t in cache.tokens],
                "encoding": cache.meta.get("pattern_encoding"), "max_error": cache.meta.get("pattern_max_error"),
                # float32 -> Python float is exact, and JSON keeps every digit of it.
                "values": finite(cache.pattern(layer, head)),
            }

        return self._with_cache(params, read)

    def token_values(self, params: Params) -> dict[str, Any]:
        value = params.choice("value", VALUE_KINDS, "resid_norm")
        layer, neuron = params.integer("layer", 0), params.integer("neuron")
        skip_first = params.choice("range", RANGES, "skip_first") == "skip_first"

        def read(cache: Cache, row: dict[str, Any], view: IndexView) -> dict[str, Any]:
            try:
                tv = per_token_values(cache, value, layer, neuron, skip_first)
            except ValueUnavailable as error:
                raise ApiError(400, str(error)) from None
            colors = tv.colors()
            labels = tv.labels
            return {"model": cache.model, "prompt_hash": cache.prompt_hash, "settings_id": row.get("settings_id", ""),
                    "value": value, "layer": layer, "neuron": neuron, "title": tv.title,
                    "tokens": cache.tokens, "inline": [display.token_inline(t) for t in cache.tokens],
                    "shown_tokens": [display.token_label(t) for t in cache.tokens],
                    "values": finite(tv.values), "labels": labels,
                    "shown_labels": [display.token_label(s) for s in labels] if labels is not None else None,
                    "label_name": VALUE_KINDS[value].label_name,
                    "colors": colors, "text_colors": [colormap.text_color(c) for c in colors],
                    "vmin": tv.vmin, "vmax": tv.vmax, "cmap": tv.cmap, "range_note": tv.range_note}

        return self._with_cache(params, read)
