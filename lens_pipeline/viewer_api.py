"""The viewer's JSON API: answers for the page, read from the live index and the cache files.
Every answer is JSON; bad parameters raise ApiError with a 4xx status and a message."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, quote

import numpy as np

from lens_pipeline import __version__
from lens_pipeline.cache import Cache, CacheError
from lens_pipeline.live_index import IndexView, LiveIndex

MAX_PAGE = 500
TOKEN_VALUES = ("resid_norm", "top1_prob", "logit_lens", "neuron")


class ApiError(Exception):
    """An answer other than 200, with a message the page can show as is."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- paths


def resolve_inside(root: Path, relpath: str) -> Path:
    """`root / relpath` after resolving symlinks; ApiError(403) if that is not inside `root`.

    `relpath` is already percent-decoded. Refused outright: absolute paths, `..` and `.`
    segments, backslashes, NUL, and hidden names (temp files, locks)."""
    if not relpath or "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
        raise ApiError(403, f"refused path {relpath!r}: only relative paths inside the save path are served")
    parts = PurePosixPath(relpath).parts
    if any(part in ("..", ".") or part.startswith(".") for part in parts):
        raise ApiError(403, f"refused path {relpath!r}: '..', '.' and hidden names are not served")
    target = (root / relpath).resolve()
    if not target.is_relative_to(root):
        raise ApiError(403, f"refused path {relpath!r}: it resolves outside the save path")
    return target


def file_url(relpath: str) -> str:
    return "/files/" + quote(relpath)


# --------------------------------------------------------------------------- open caches


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


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


# --------------------------------------------------------------------------- parameters


class Params:
    """Query-string parameters with one-line errors: unknown names, bad integers, out of range."""

    def __init__(self, query: str, allowed: Iterable[str]):
        raw = parse_qs(query, keep_blank_values=True)
        allowed = set(allowed)
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ApiError(400, f"unknown parameter {unknown[0]!r}; this endpoint takes {', '.join(sorted(allowed))}")
        for name, values in raw.items():
            if len(values) > 1:
                raise ApiError(400, f"parameter {name!r} given {len(values)} times; give it once")
        self._raw = {name: values[0] for name, values in raw.items()}

    def text(self, name: str, default: str = "") -> str:
        return self._raw.get(name, default)

    def required(self, name: str) -> str:
        value = self._raw.get(name, "")
        if value == "":
            raise ApiError(400, f"parameter {name!r} is required")
        return value

    def integer(self, name: str, default: int | None = None, low: int = 0, high: int | None = None) -> int | None:
        value = self._raw.get(name, "")
        if value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            raise ApiError(400, f"parameter {name!r} must be an integer, not {value!r}") from None
        if number < low or (high is not None and number > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise ApiError(400, f"parameter {name!r} = {number} is out of range ({bounds})")
        return number

    def choice(self, name: str, choices: Iterable[str], default: str) -> str:
        value = self._raw.get(name, "") or default
        if value not in choices:
            raise ApiError(400, f"parameter {name!r} must be one of {', '.join(choices)}, not {value!r}")
        return value


# --------------------------------------------------------------------------- the API


def _finite(array: np.ndarray) -> list[Any]:
    """Nested lists for JSON; inf/NaN (possible in float16 activations) become null."""
    values = np.asarray(array, dtype=np.float64)  # float32/float16 -> float64 is exact
    return values.tolist() if np.isfinite(values).all() else _nan_to_none(values.tolist())


def _nan_to_none(values: Any) -> Any:
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return values if np.isfinite(values) else None


class ViewerApi:
    """The JSON endpoints: pure functions of (save path, index view, query string)."""

    def __init__(self, save_path: Path):
        self.root = save_path.resolve()
        self.index = LiveIndex(self.root)
        self.caches = CachePool()
        self.routes: dict[str, tuple[Callable[[Params], Any], tuple[str, ...]]] = {
            "/api/summary": (self.summary, ()),
            "/api/figures": (self.figures, ("model", "q", "prompt", "function", "layer", "head", "scope", "status",
                                            "offset", "limit")),
            "/api/prompts": (self.prompts, ("model", "q", "offset", "limit")),
            "/api/figure": (self.figure, ("model", "prompt", "function", "layer", "head")),
            "/api/compare": (self.compare, ("across", "model", "prompt", "function", "layer", "head")),
            "/api/cache": (self.cache_info, ("model", "prompt")),
            "/api/pattern": (self.pattern, ("model", "prompt", "layer", "head")),
            "/api/tokens": (self.token_values, ("model", "prompt", "value", "layer", "neuron")),
        }

    def handle(self, route: str, query: str) -> Any:
        if route not in self.routes:
            raise ApiError(404, f"no API endpoint {route}; endpoints: {', '.join(self.routes)}")
        endpoint, allowed = self.routes[route]
        return endpoint(Params(query, allowed))

    # --- rows as the page sees them ------------------------------------------------
    def public_row(self, row: dict[str, Any], view: IndexView) -> dict[str, Any]:
        files = [
            {"path": f.get("path", ""), "url": file_url(f.get("path", "")), "bytes": f.get("bytes"),
             "format": f.get("format") or PurePosixPath(f.get("path", "")).suffix.lstrip(".")}
            for f in (row.get("files") or []) if isinstance(f, dict)
        ]
        path = str(row.get("path") or "")
        return {
            "model": row.get("model", ""), "prompt_hash": row.get("prompt_hash", ""),
            "function": row.get("function", ""), "scope": row.get("scope", ""),
            "layer": row.get("layer"), "head": row.get("head"), "format": row.get("format", ""),
            "path": path, "url": file_url(path) if path else "", "files": files,
            "bytes": row.get("bytes"), "status": row.get("status", "ok"), "error": row.get("error", ""),
            "params": row.get("params") or {}, "created": row.get("created", ""),
            "text": view.text_of(row)[:200],
        }

    def page(self, rows: list[dict[str, Any]], params: Params, view: IndexView,
             shape: Callable[[dict[str, Any], IndexView], dict[str, Any]]) -> dict[str, Any]:
        offset = params.integer("offset", 0)
        limit = params.integer("limit", 60, low=1, high=MAX_PAGE)
        return {"total": len(rows), "offset": offset, "limit": limit, "version": view.version,
                "rows": [shape(r, view) for r in rows[offset : offset + limit]]}

    # --- endpoints -------------------------------------------------------------------
    def summary(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        if view.summary is None:
            models: dict[str, dict[str, Any]] = {}
            functions: dict[str, dict[str, Any]] = {}
            layers, heads = set(), set()
            skipped = 0
            for (model, _), row in view.caches.items():
                entry = models.setdefault(model, {"name": model, "prompts": 0, "figures": 0, "errors": 0})
                entry["prompts"] += 1
            for row in view.figures:
                if row.get("status") == "skipped":  # counted apart, like the grid shows them apart
                    skipped += 1
                    continue
                entry = models.setdefault(row.get("model", ""), {"name": row.get("model", ""), "prompts": 0,
                                                                 "figures": 0, "errors": 0})
                entry["figures"] += 1
                entry["errors"] += row.get("status") == "error"
                function = functions.setdefault(row.get("function", ""), {"name": row.get("function", ""),
                                                                           "scope": row.get("scope", ""), "count": 0})
                function["count"] += 1
                if isinstance(row.get("layer"), int):
                    layers.add(row["layer"])
                if isinstance(row.get("head"), int):
                    heads.add(row["head"])
            view.summary = {
                "save_path": self.root.name, "tool_version": __version__, "version": view.version,
                "index_exists": self.index.path.exists(), "bad_lines": view.bad_lines,
                "models": sorted(models.values(), key=lambda m: m["name"]),
                "functions": sorted(functions.values(), key=lambda f: f["name"]),
                "layers": sorted(layers), "heads": sorted(heads),
                "n_figures": len(view.figures) - skipped, "n_skipped": skipped, "n_caches": len(view.caches),
                "n_errors": sum(m["errors"] for m in models.values()),
            }
        return view.summary

    def figures(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        model, prompt, function = params.text("model"), params.text("prompt"), params.text("function")
        scope, q = params.text("scope"), params.text("q").strip().lower()
        layer, head = params.integer("layer"), params.integer("head")
        # Default: drawn and failed figures; "skipped" rows (a figure that does not apply) on request.
        status = params.choice("status", ("shown", "ok", "error", "skipped", "all"), "shown")

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
                and (status == "all" or row.get("status", "ok") == status
                     or (status == "shown" and row.get("status", "ok") != "skipped"))
                and (hashes is None or (row.get("model", ""), row.get("prompt_hash", "")) in hashes)
            ]

        key = ("figures", view.version, model, prompt, function, scope, q, layer, head, status)
        return self.page(view.memo(key, select), params, view, self.public_row)

    def prompts(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        model, q = params.text("model"), params.text("q").strip().lower()
        rows = [row for key, row in view.caches.items()
                if (not model or key[0] == model) and (not q or q in view.texts[key].lower() or key[1].startswith(q))]

        def shape(row: dict[str, Any], view: IndexView) -> dict[str, Any]:
            return {"model": row.get("model", ""), "prompt_hash": row.get("prompt_hash", ""),
                    "text": str(row.get("text") or ""), "n_tokens": row.get("n_tokens"),
                    "status": row.get("status", "ok"), "error": row.get("error", ""),
                    "metadata": row.get("prompt_metadata") or {}}

        return self.page(rows, params, view, shape)

    def _figure_row(self, view: IndexView, model: str, prompt: str, function: str,
                    layer: int | None, head: int | None) -> dict[str, Any] | None:
        for row in view.figures:  # linear, but only for single-figure pages
            if (row.get("model") == model and row.get("prompt_hash", "") == prompt and row.get("function") == function
                    and row.get("layer") == layer and row.get("head") == head):
                return row
        return None

    def figure(self, params: Params) -> dict[str, Any]:
        view = self.index.view()
        model, function = params.required("model"), params.required("function")
        prompt, layer, head = params.text("prompt"), params.integer("layer"), params.integer("head")
        row = self._figure_row(view, model, prompt, function, layer, head)
        if row is None:
            where = f"{model} {function}" + (f" L{layer}" if layer is not None else "") + (f" H{head}" if head is not None else "")
            raise ApiError(404, f"no figure {where} for prompt {prompt or '(none)'} in the index")
        return self.public_row(row, view)

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
        return {"across": across, "total": len(rows), "rows": [self.public_row(r, view) for r in rows]}

    def _cache_path(self, view: IndexView, model: str, prompt: str) -> Path:
        row = view.caches.get((model, prompt))
        if row is None:
            raise ApiError(404, f"no cache for model {model!r} and prompt {prompt!r} in the index")
        if row.get("status") != "ok":
            raise ApiError(404, f"the cache for this prompt failed to build: {row.get('error', 'unknown error')}")
        return resolve_inside(self.root, str(row.get("path", "")))

    def _with_cache(self, params: Params, read: Callable[[Cache], Any]) -> Any:
        view = self.index.view()
        path = self._cache_path(view, params.required("model"), params.required("prompt"))
        with self.caches.lock:
            cache = self.caches.get(path)
            try:
                return read(cache)
            except CacheError as error:
                raise ApiError(500, f"cache file {path.name} is corrupt: {error}; rerun activations with --force") from None

    def cache_info(self, params: Params) -> dict[str, Any]:
        view = self.index.view()

        def read(cache: Cache) -> dict[str, Any]:
            same_text = [{"model": key[0], "prompt_hash": key[1]} for key, text in view.texts.items()
                         if text == view.texts.get((cache.model, cache.prompt_hash)) and key[0] != cache.model]
            return {
                "model": cache.model, "prompt_hash": cache.prompt_hash, "text": cache.text,
                "family": cache.family, "causal": cache.causal, "n_layers": cache.n_layers,
                "n_heads": cache.n_heads, "n_tokens": cache.n_tokens, "tokens": cache.tokens,
                "pattern_encoding": cache.meta.get("pattern_encoding"),
                "pattern_max_error": cache.meta.get("pattern_max_error"),
                "note": cache.meta.get("note", ""), "arrays": cache.names(),
                "has_logit_lens": cache.has("logit_lens_probs"),
                "neuron_ids": cache.neuron_ids.tolist() if cache.has("neuron_ids") else [],
                "same_text": same_text,
            }

        return self._with_cache(params, read)

    def pattern(self, params: Params) -> dict[str, Any]:
        params.required("model"), params.required("prompt")  # report missing parameters in order
        layer, head = params.integer("layer"), params.integer("head")
        if layer is None or head is None:
            raise ApiError(400, "parameters 'layer' and 'head' are required")

        def read(cache: Cache) -> dict[str, Any]:
            if layer >= cache.n_layers:
                raise ApiError(400, f"layer {layer} is out of range: {cache.model} has layers 0..{cache.n_layers - 1}")
            if head >= cache.n_heads:
                raise ApiError(400, f"head {head} is out of range: {cache.model} has heads 0..{cache.n_heads - 1}")
            values = cache.pattern(layer, head)
            return {
                "model": cache.model, "prompt_hash": cache.prompt_hash, "layer": layer, "head": head,
                "n_layers": cache.n_layers, "n_heads": cache.n_heads, "causal": cache.causal,
                "tokens": cache.tokens, "encoding": cache.meta.get("pattern_encoding"),
                "max_error": cache.meta.get("pattern_max_error"),
                # float32 -> Python float is exact, and JSON keeps every digit of it.
                "values": _finite(values),
            }

        return self._with_cache(params, read)

    def token_values(self, params: Params) -> dict[str, Any]:
        value = params.choice("value", TOKEN_VALUES, "resid_norm")
        layer, neuron = params.integer("layer", 0), params.integer("neuron")

        def read(cache: Cache) -> dict[str, Any]:
            labels: list[str] | None = None
            if value == "resid_norm":
                if layer > cache.n_layers:
                    raise ApiError(400, f"layer {layer} is out of range: residual norms exist for 0..{cache.n_layers} "
                                   "(0 = embeddings, L = after layer L-1)")
                values = cache.resid_norms[layer]
                title = "residual norm " + ("of the embeddings" if layer == 0 else f"after layer {layer - 1}")
            elif value == "top1_prob":
                values, labels = cache.topk_probs[:, 0], [str(s) for s in cache.topk_strs[:, 0]]
                title = "probability of the top-1 next-token prediction"
            elif value == "logit_lens":
                if not cache.has("logit_lens_probs"):
                    raise ApiError(400, "this cache has no logit lens; rerun activations with --logit-lens --force")
                if layer >= cache.n_layers:
                    raise ApiError(400, f"layer {layer} is out of range 0..{cache.n_layers - 1}")
                values = cache.array("logit_lens_probs")[layer].astype(np.float32)
                labels = [str(s) for s in cache.array("logit_lens_strs")[layer]]
                title = f"logit lens after layer {layer}: probability of its top-1 token"
            else:
                if not cache.has("neuron_ids"):
                    raise ApiError(400, "this cache stores no neurons (activations ran with --neurons 0)")
                if layer >= cache.n_layers:
                    raise ApiError(400, f"layer {layer} is out of range 0..{cache.n_layers - 1}")
                ids = cache.neuron_ids[layer].tolist()
                if neuron is None or neuron not in ids:
                    raise ApiError(400, f"parameter 'neuron' must be one of the neurons stored for layer {layer}: "
                                   f"{', '.join(map(str, ids[:8]))}{' ...' if len(ids) > 8 else ''}")
                values = cache.neuron_acts[layer, ids.index(neuron)]
                title = f"layer {layer} MLP neuron {neuron} (post-activation)"
            return {"model": cache.model, "prompt_hash": cache.prompt_hash, "value": value, "layer": layer,
                    "neuron": neuron, "title": title, "tokens": cache.tokens, "values": _finite(values),
                    "labels": labels}

        return self._with_cache(params, read)
