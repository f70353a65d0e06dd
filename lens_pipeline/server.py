"""The web viewer: a static page and a small read-only JSON API over one save path.

    python -m lens_pipeline.server --save-path attn_data [--host 127.0.0.1] [--port 8000]

The page (lens_pipeline/static: index.html, app.js, style.css; nothing from the network) browses
the figure rows of SAVE_PATH/index.jsonl and draws attention heads and token values from the
exact numbers in the cache files. The index is re-read when it changes (only the appended tail).

API (GET; every answer is JSON; bad parameters give a 4xx with {"error": message}):
  /api/summary                         models, figure functions, layers, heads, counts
  /api/figures?model&q&prompt&function&layer&head&scope&status&offset&limit
                                       one page of figure rows + the total that match
                                       (status: ok, error, skipped, all; default ok + error)
  /api/prompts?model&q&offset&limit    one page of cached prompts (cache rows)
  /api/figure?model&prompt&function&layer&head       one figure row
  /api/compare?across=models|layers&model&prompt&function&layer&head
                                       the matching figure rows of other models / layers
  /api/cache?model&prompt              a cache's metadata, tokens and neuron ids
  /api/pattern?model&prompt&layer&head one head's attention, [query][key] float32 values
  /api/tokens?model&prompt&value=resid_norm|top1_prob|logit_lens|neuron&layer&neuron
                                       one value per token
  /files/<path>                        a file under the save path (never outside it)

Safe by default: binds 127.0.0.1, answers only loopback Host names when bound there (DNS
rebinding), resolves every file path and refuses what lands outside the save path, and sends a
Content-Security-Policy that lets the page load nothing but itself.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import mimetypes
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

from lens_pipeline import __version__, index
from lens_pipeline.cache import Cache, CacheError

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_PORT = 8000
MAX_PAGE = 500
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
# Saved files are data, never a page: a sandboxed origin with no script, even if one is HTML/SVG.
FILE_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
TOKEN_VALUES = ("resid_norm", "top1_prob", "logit_lens", "neuron")
TEXT_TYPES = {".md": "text/markdown", ".txt": "text/plain", ".csv": "text/csv", ".json": "application/json",
              ".jsonl": "application/jsonl", ".js": "text/javascript", ".css": "text/css", ".html": "text/html",
              ".svg": "image/svg+xml"}


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


# --------------------------------------------------------------------------- the live index


@dataclass
class IndexView:
    """An immutable snapshot of the index as the viewer needs it (rebuilt when the file changes)."""

    version: int
    # Newest row per figure, in index order: the stages write per model, per prompt, layer by layer,
    # so that order already groups them, and keeping it makes a rebuild O(rows) with no sort.
    figures: list[dict[str, Any]]
    caches: dict[tuple[str, str], dict[str, Any]]  # (model, prompt_hash) -> newest cache row
    texts: dict[tuple[str, str], str]  # (model, prompt_hash) -> prompt text, for display and search
    bad_lines: int
    _queries: OrderedDict[Any, list[dict[str, Any]]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    summary: dict[str, Any] | None = None  # /api/summary of this version, computed on first request

    def text_of(self, row: dict[str, Any]) -> str:
        return self.texts.get((row.get("model", ""), row.get("prompt_hash", "")), "")

    def memo(self, key: Any, compute: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Filter results per query, so scrolling through pages costs a slice, not a scan."""
        with self._lock:
            if key in self._queries:
                self._queries.move_to_end(key)
                return self._queries[key]
        result = compute()
        with self._lock:
            self._queries[key] = result
            while len(self._queries) > 32:
                self._queries.popitem(last=False)
        return result


class LiveIndex:
    """index.jsonl followed as it grows: each `view()` stats the file and parses only new lines."""

    def __init__(self, save_path: Path):
        self.path = index.index_path(save_path)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._rows: dict[index.Key, dict[str, Any]] = {}
        self._offset = 0
        self._identity: tuple[int, int] | None = None  # (device, inode): a replaced file starts over
        self._bad_lines = 0
        self._version = 0
        self._view: IndexView | None = None

    def view(self) -> IndexView:
        with self._lock:
            self._follow()
            if self._view is None or self._view.version != self._version:
                self._view = self._build()
            return self._view

    def _follow(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._identity is not None:
                self._reset()
                self._version += 1
            return
        if self._identity != (stat.st_dev, stat.st_ino) or stat.st_size < self._offset:
            if self._identity is not None:
                version = self._version
                self._reset()
                self._version = version + 1
            self._identity = (stat.st_dev, stat.st_ino)
        if stat.st_size == self._offset:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(stat.st_size - self._offset)
        end = chunk.rfind(b"\n") + 1  # a torn last line (writer mid-append) waits for the next read
        if end == 0:
            return
        self._offset += end
        # Decode once, split on "\n" only (a JSON string may hold a raw U+2028, which splitlines splits on).
        for line in chunk[:end].decode("utf-8", errors="replace").split("\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                self._bad_lines += 1
                continue
            try:
                if not isinstance(row, dict) or row.get("kind") not in ("cache", "figure"):
                    raise TypeError("not an index row")
                self._rows[index.row_key(row)] = row
            except TypeError:  # e.g. a list where a layer number belongs: skipped, not fatal
                self._bad_lines += 1
        self._version += 1

    def _build(self) -> IndexView:
        caches: dict[tuple[str, str], dict[str, Any]] = {}
        figures: list[dict[str, Any]] = []
        for row in self._rows.values():
            if row["kind"] == "cache":
                caches[(row.get("model", ""), row.get("prompt_hash", ""))] = row
            else:
                figures.append(row)
        texts = {key: str(row.get("text") or "") for key, row in caches.items()}
        return IndexView(self._version, figures, caches, texts, self._bad_lines)


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


# --------------------------------------------------------------------------- open caches


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


# --------------------------------------------------------------------------- HTTP


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: ViewerApi, log_requests: bool = False):
        self.api = api
        self.log_requests = log_requests
        self.allowed_hosts = _allowed_hosts(address[0])
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


def _allowed_hosts(host: str) -> set[str] | None:
    """Host header names to accept: loopback names when bound to loopback, anything otherwise."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return (LOOPBACK_NAMES | {host}) if loopback else None


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = f"lens_pipeline/{__version__}"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _refuse_method(self) -> None:
        self._send_json(405, {"error": f"method {self.command} not allowed: the viewer is read-only (GET)"}, True,
                        extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _respond(self, send_body: bool) -> None:
        try:
            if not self._host_allowed():
                raise ApiError(403, "refused: unexpected Host header (open the viewer at its 127.0.0.1 address)")
            parts = urlsplit(self.path)
            route = parts.path
            if route.startswith("/api/"):
                self._send_json(200, self.server.api.handle(route, parts.query), send_body)
            elif route.startswith("/files/"):
                relpath = unquote(route[len("/files/"):], errors="strict")
                self._send_file(resolve_inside(self.server.api.root, relpath), FILE_CSP, send_body)
            elif route in ("/", "/index.html"):
                self._send_file(STATIC_DIR / "index.html", PAGE_CSP, send_body)
            elif route.startswith("/static/"):
                self._send_file(resolve_inside(STATIC_DIR.resolve(), unquote(route[len("/static/"):])), PAGE_CSP, send_body)
            elif route == "/favicon.ico":
                self._send_file(STATIC_DIR / "favicon.svg", PAGE_CSP, send_body)
            else:
                raise ApiError(404, f"nothing at {route}")
        except ApiError as error:
            self._send_json(error.status, {"error": error.message, "status": error.status}, send_body)
        except UnicodeDecodeError:
            self._send_json(400, {"error": "the path is not valid percent-encoded UTF-8", "status": 400}, send_body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser moved on (scrolling past a lazy image); nothing to answer
        except Exception as error:  # one bad request must not take the viewer down
            self.log_error("internal error on %s: %r", self.path, error)
            self._send_json(500, {"error": f"internal error: {type(error).__name__}: {error}", "status": 500}, send_body)

    def _host_allowed(self) -> bool:
        allowed = self.server.allowed_hosts
        if allowed is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in allowed

    def _common_headers(self, csp: str) -> None:
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")

    def _send_json(self, status: int, payload: Any, send_body: bool, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self._common_headers(PAGE_CSP)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_file(self, path: Path, csp: str, send_body: bool) -> None:
        try:
            stat = path.stat()
        except OSError:
            raise ApiError(404, f"file {path.name} is missing (the index names it, but it is not on disk)") from None
        if not path.is_file():
            raise ApiError(404, f"{path.name} is not a file")
        etag = '"' + hashlib.sha1(f"{stat.st_mtime_ns}-{stat.st_size}".encode()).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        data = path.read_bytes() if send_body else b""
        self.send_response(200)
        self.send_header("Content-Type", _content_type(path))
        self.send_header("Content-Length", str(stat.st_size if not send_body else len(data)))
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", "no-cache")  # revalidate: figures are rewritten in place
        self._common_headers(csp)
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    def log_error(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"lens_pipeline.server: {format % args}\n")


def _content_type(path: Path) -> str:
    suffix = path.suffix.lower()
    kind = TEXT_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    text = kind.startswith("text/") or kind in ("application/json", "application/jsonl", "image/svg+xml")
    return f"{kind}; charset=utf-8" if text else kind


def make_server(save_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                log_requests: bool = False) -> ViewerServer:
    """A viewer server bound to (host, port), not yet serving; port 0 picks a free port.

    Run it with `server.serve_forever()` (e.g. on a thread) and stop it with `server.shutdown()`."""
    save_path = Path(save_path)
    if not save_path.is_dir():
        raise FileNotFoundError(f"save path {save_path} does not exist; run python -m lens_pipeline.activations first")
    api = ViewerApi(save_path)
    api.index.view()  # read the index now, so the first page request does not pay for it
    return ViewerServer((host, port), api, log_requests)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lens_pipeline.server",
        description="Browse the caches and figures of a save path in a web page (read-only; works offline).",
    )
    parser.add_argument("--save-path", default="attn_data", help="folder with index.jsonl (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes your data "
                        "to the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0 = any free port)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port number (0..65535)", file=sys.stderr)
        return 2
    try:
        server = make_server(args.save_path, args.host, args.port, args.verbose)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port} ({error.strerror or error}); "
              "pass --port 0 for any free port", file=sys.stderr)
        return 2
    summary = server.api.summary(Params("", ()))
    if server.allowed_hosts is None:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can read {args.save_path}",
              file=sys.stderr)
    if not summary["index_exists"]:
        print(f"note: {index.index_path(args.save_path)} does not exist yet; the page fills in as stages write it",
              file=sys.stderr)
    print(f"lens viewer: {summary['n_caches']} cached prompt(s), {summary['n_figures']} figure(s) from "
          f"{args.save_path} at {server.url}  (Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
