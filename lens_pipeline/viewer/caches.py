"""The endpoints that read cache files: a cache's metadata, one head's attention, per-token values,
next-token predictions. The viewer reads the current cache of a (model, prompt) unless `settings`
names another one (IndexCaches); a notebook widget reads the one Cache it was given (OneCache).
Both answer with the same functions, so the page sees the same answers from either."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from lens_pipeline.draw import colormap, display
from lens_pipeline.draw.token_values import RANGES, VALUE_KINDS, ValueUnavailable, kind_choices, per_token_values
from lens_pipeline.store.cache import Cache, CacheError
from lens_pipeline.viewer.live_index import IndexView, LiveIndex
from lens_pipeline.viewer.params import ApiError, Params, resolve_inside
from lens_pipeline.viewer.rows import cache_settings
from lens_pipeline.viewer.why import why


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


class Floats(list):
    """Nested lists of floats for JSON that keep the float32 array they came from, so a transport
    that packs arrays (lens_pipeline.viewer.transport) need not read the lists back."""

    array: np.ndarray


def finite(array: np.ndarray) -> Floats:
    """Nested lists for JSON; inf/NaN (possible in float16 activations) become null."""
    values = np.asarray(array, dtype=np.float64)  # float32/float16 -> float64 is exact
    lists = Floats(values.tolist() if np.isfinite(values).all() else _nan_to_none(values.tolist()))
    lists.array = np.asarray(array, dtype=np.float32)
    return lists


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


# --------------------------------------------------------------------------- answers


def cache_info(cache: Cache, row: dict[str, Any], view: IndexView | None) -> dict[str, Any]:
    """A cache's metadata, tokens, the values it offers; with an index view, the same prompt in
    other models and this prompt's caches made with other settings."""
    key = (cache.model, cache.prompt_hash)
    texts = view.texts if view else {}
    same_text = [{"model": k[0], "prompt_hash": k[1]} for k, text in texts.items()
                 if text == texts.get(key) and k[0] != cache.model]
    current = view.current.get(key) if view else row
    others = [dict(cache_settings(r), current=r is current) for r in (view.cache_rows.get(key, []) if view else [])
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


def pattern(cache: Cache, row: dict[str, Any], layer: int, head: int) -> dict[str, Any]:
    """One head's attention, [query][key] float32 values, with the tokens as shown."""
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


def token_values(cache: Cache, row: dict[str, Any], value: str, layer: int | None, neuron: int | None,
                 skip_first: bool) -> dict[str, Any]:
    """One value of `value` (token_values.VALUE_KINDS) per token, with its colour and text colour."""
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


def predictions(cache: Cache, row: dict[str, Any]) -> dict[str, Any]:
    """The top-k next tokens at each position with their probabilities and colours, the token that
    came next and its rank among them (null when it is not in the top k, or at the last position)."""
    missing = cache.missing(("topk_probs", "topk_strs", "lm_head"))
    if missing:
        raise ApiError(400, f"no next-token predictions: {'; '.join(missing)}")
    probs = cache.topk_probs  # [T, k] float32
    strs, ids, tokens = cache.topk_strs, cache.topk_ids, cache.token_ids
    colors = colormap.hex_colors(probs.ravel(), display.ATTENTION["cmap"], 0.0, 1.0)
    k = probs.shape[1]
    ranks: list[int | None] = []
    for i in range(cache.n_tokens):
        hits = np.flatnonzero(ids[i] == tokens[i + 1]) if i + 1 < cache.n_tokens else []
        ranks.append(int(hits[0]) if len(hits) else None)
    return {"model": cache.model, "prompt_hash": cache.prompt_hash, "settings_id": row.get("settings_id", ""),
            "title": "the model's most likely next tokens at each position", "k": k,
            "shown_tokens": [display.token_label(t) for t in cache.tokens],
            "shown_next": [display.token_label(t) for t in cache.tokens[1:]] + [None], "next_rank": ranks,
            "top_tokens": [[display.token_label(str(s)) for s in row_strs] for row_strs in strs],
            "top_probs": finite(probs),
            "colors": [colors[i * k : (i + 1) * k] for i in range(cache.n_tokens)],
            "text_colors": [[colormap.text_color(c) for c in colors[i * k : (i + 1) * k]] for i in range(cache.n_tokens)],
            "vmin": 0.0, "vmax": 1.0, "cmap": display.ATTENTION["cmap"]}


# --------------------------------------------------------------------------- where the cache comes from

Read = Callable[[Cache, dict[str, Any], "IndexView | None"], Any]


class CacheSource(Protocol):
    def read(self, params: Params, answer: Read) -> Any:
        """`answer(cache, row, view)` on the cache `params` name."""


class IndexCaches:
    """The caches the index names: the current one of (model, prompt), or the one made with `settings`."""

    def __init__(self, root: Path, live: LiveIndex):
        self.root, self.index, self.caches = root, live, CachePool()

    def read(self, params: Params, answer: Read) -> Any:
        view = self.index.view()
        row = cache_row(view, params.required("model"), params.required("prompt"), params.text("settings"))
        path = resolve_inside(self.root, str(row.get("path", "")))
        with self.caches.lock:
            cache = self.caches.get(path)
            with _corrupt_is_500(path):
                return answer(cache, row, view)


class OneCache:
    """One open Cache (a notebook's): every request reads it; `model` and `prompt`, when given, must be its."""

    def __init__(self, cache: Cache):
        self.cache = cache
        self.row = {"settings_id": cache.meta.get("settings_id", ""), "status": "ok", "created": cache.meta.get("created", "")}
        self.lock = threading.Lock()

    def read(self, params: Params, answer: Read) -> Any:
        for name, own in (("model", self.cache.model), ("prompt", self.cache.prompt_hash)):
            if params.text(name) not in ("", own):
                raise ApiError(404, f"this view shows {own!r} only, not {params.text(name)!r}")
        if params.text("settings") not in ("", self.row["settings_id"]):
            raise ApiError(404, f"this view shows the cache made with settings {self.row['settings_id']!r} only")
        with self.lock, _corrupt_is_500(self.cache.path):
            return answer(self.cache, self.row, None)


@contextlib.contextmanager
def _corrupt_is_500(path: Path) -> Iterator[None]:
    try:
        yield
    except CacheError as error:
        raise ApiError(500, f"cache file {path.name} is corrupt: {error}; rerun activations with --force") from None


class CacheReader:
    """The cache endpoints: parameters in, one of the answers above out, from a CacheSource."""

    def __init__(self, source: CacheSource):
        self.source = source

    def cache_info(self, params: Params) -> dict[str, Any]:
        return self.source.read(params, cache_info)

    def pattern(self, params: Params) -> dict[str, Any]:
        params.required("model"), params.required("prompt")  # report missing parameters in order
        layer, head = params.integer("layer"), params.integer("head")
        if layer is None or head is None:
            raise ApiError(400, "parameters 'layer' and 'head' are required")
        return self.source.read(params, lambda cache, row, view: pattern(cache, row, layer, head))

    def token_values(self, params: Params) -> dict[str, Any]:
        value = params.choice("value", VALUE_KINDS, "resid_norm")
        layer, neuron = params.integer("layer", 0), params.integer("neuron")
        skip_first = params.choice("range", RANGES, "skip_first") == "skip_first"
        return self.source.read(params, lambda cache, row, view: token_values(cache, row, value, layer, neuron, skip_first))

    def predictions(self, params: Params) -> dict[str, Any]:
        return self.source.read(params, lambda cache, row, view: predictions(cache, row))

    def why(self, params: Params) -> dict[str, Any]:
        position = params.integer("position")
        return self.source.read(params, lambda cache, row, view: why(cache, row, position))
